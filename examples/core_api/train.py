"""Train the small GPT of model.py with DeepSpeed under the Determined Core API.

Run by ``python3 -m determined.launch.deepspeed python3 train.py`` on a Determined
cluster, or by ``python3 -m determined_dsat ...`` which starts the same script as
DeepSpeed Autotune's trials. The script is the same either way:

* The ds_config is ``hyperparameters.deepspeed_config`` with the trial's
  ``overwrite_deepspeed_args`` merged in (``get_ds_config_from_hparams``).
* The first searcher operation's training loop runs inside
  ``dsat_reporting_context``. When the ds_config has an ``autotuning`` section,
  DeepSpeed profiles a few steps, writes its measurements to a JSON file and calls
  ``exit()``; the context reports the file's contents to the search and lets the
  exit proceed. Without that section it does nothing and this is a normal run.
* One "batch" of the searcher's ``max_length`` is one optimizer step, i.e.
  ``gradient_accumulation_steps`` micro-batches on every rank.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import deepspeed
import determined as det
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from model import GPT, GPTConfig, RandomTokenDataset

import determined_dsat

CHECKPOINT_TAG = "deepspeed"
TRAIN_SEED, VALIDATION_SEED = 1, 2
TRAIN_SAMPLES = 1_000_000  # sample ids wrap around after this many


def micro_batches(
    dataset: RandomTokenDataset,
    micro_batch_size: int,
    start_micro_step: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches from micro-step ``start_micro_step`` on.

    Micro-step ``m`` of rank ``r`` holds samples ``(m * world_size + r) * micro_batch_size``
    onwards, so a resumed run continues exactly where the checkpoint left off.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    step = start_micro_step
    while True:
        first = (step * world_size + rank) * micro_batch_size
        inputs, targets = dataset.batch(range(first, first + micro_batch_size))
        yield inputs.to(device), targets.to(device)
        step += 1


def mean_over_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def train(
    core_context: det.core.Context,
    engine: deepspeed.DeepSpeedEngine,
    op: det.core.SearcherOperation,
    steps_completed: int,
    dataset: RandomTokenDataset,
    device: torch.device,
    report_every: int,
) -> tuple[int, bool]:
    """Train until ``op.length`` optimizer steps are done; returns (steps, preempted)."""
    is_chief = core_context.distributed.rank == 0
    gas = engine.gradient_accumulation_steps()
    batches = micro_batches(
        dataset, engine.train_micro_batch_size_per_gpu(), steps_completed * gas, device
    )
    engine.train()
    losses: list[torch.Tensor] = []
    while steps_completed < op.length:
        for _ in range(gas):
            inputs, targets = next(batches)
            loss = engine(inputs, targets)
            engine.backward(loss)
            engine.step()  # DeepSpeed updates the weights at the accumulation boundary
            losses.append(loss.detach())
        steps_completed += 1
        if steps_completed % report_every == 0 or steps_completed == op.length:
            if is_chief:
                mean_loss = torch.stack(losses).float().mean().item()
                core_context.train.report_training_metrics(
                    steps_completed=steps_completed, metrics={"loss": mean_loss}
                )
                op.report_progress(steps_completed)
            losses.clear()
            if core_context.preempt.should_preempt():
                return steps_completed, True
    return steps_completed, False


def validate(
    engine: deepspeed.DeepSpeedEngine,
    dataset: RandomTokenDataset,
    num_batches: int,
    device: torch.device,
) -> float:
    """Mean loss over ``num_batches`` micro-batches per rank, averaged over all ranks."""
    engine.eval()
    total = 0.0
    with torch.no_grad():
        batches = micro_batches(dataset, engine.train_micro_batch_size_per_gpu(), 0, device)
        for _ in range(num_batches):
            inputs, targets = next(batches)
            total += float(engine(inputs, targets).item())
    engine.train()
    return mean_over_ranks(total / num_batches, device)


def save(core_context: det.core.Context, engine: deepspeed.DeepSpeedEngine, steps: int) -> None:
    """Every rank saves its shard of the DeepSpeed checkpoint into one Determined checkpoint."""
    metadata = {"steps_completed": steps}
    with core_context.checkpoint.store_path(metadata, shard=True) as (path, _storage_id):
        engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, client_state=metadata)


def restore(
    core_context: det.core.Context, engine: deepspeed.DeepSpeedEngine, storage_id: str
) -> int:
    """Load a checkpoint saved by ``save``; returns the steps it had completed."""
    with core_context.checkpoint.restore_path(storage_id) as path:
        _, client_state = engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG)
    return int((client_state or {}).get("steps_completed", 0))


def main(core_context: det.core.Context, hparams: Mapping[str, Any], latest: str | None) -> None:
    ds_config = determined_dsat.get_ds_config_from_hparams(hparams)
    torch.manual_seed(int(hparams.get("seed", 0)))
    config = GPTConfig.from_hparams(hparams)
    model = GPT(config)
    num_params = model.num_params()  # count before ZeRO-3 partitions the parameters
    engine, _optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config
    )
    # DeepSpeed's accelerator says where the model lives: cuda:N on GPUs, cpu with
    # DS_ACCELERATOR=cpu. bf16/fp16 casting is done by the engine from the ds_config.
    device = torch.device(get_accelerator().device_name(engine.local_rank))
    logging.info(
        "model: %.2fM parameters on %s, bf16=%s, ZeRO stage %d, micro-batch %d x %d accumulation",
        num_params / 1e6,
        device,
        engine.bfloat16_enabled(),
        engine.zero_optimization_stage(),
        engine.train_micro_batch_size_per_gpu(),
        engine.gradient_accumulation_steps(),
    )

    steps_completed = 0
    if latest is not None:
        steps_completed = restore(core_context, engine, latest)
        logging.info("resumed from checkpoint %s at step %d", latest, steps_completed)

    train_data = RandomTokenDataset(config.vocab_size, config.seq_len, TRAIN_SAMPLES, TRAIN_SEED)
    val_data = RandomTokenDataset(config.vocab_size, config.seq_len, 1 << 16, VALIDATION_SEED)
    report_every = int(hparams.get("report_every", 10))
    val_batches = int(hparams.get("validation_batches", 4))
    is_chief = core_context.distributed.rank == 0

    for index, op in enumerate(core_context.searcher.operations()):
        # DeepSpeed Autotune's trials end inside the first operation; the context
        # reports what DeepSpeed measured. In a normal run it is a no-op.
        reporting = (
            determined_dsat.dsat_reporting_context(core_context, op)
            if index == 0
            else contextlib.nullcontext()
        )
        with reporting:
            steps_completed, preempted = train(
                core_context, engine, op, steps_completed, train_data, device, report_every
            )
        if preempted:
            save(core_context, engine, steps_completed)
            logging.info("preempted at step %d; checkpoint saved", steps_completed)
            return
        val_loss = validate(engine, val_data, val_batches, device)
        if is_chief:
            core_context.train.report_validation_metrics(
                steps_completed=steps_completed, metrics={"val_loss": val_loss}
            )
            op.report_completed(val_loss)
        save(core_context, engine, steps_completed)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    if info is None or info.trial is None:
        raise SystemExit(
            "train.py runs as a Determined trial: start it with `det experiment create "
            "deepspeed.yaml .` or `python3 -m determined_dsat binary deepspeed.yaml .`"
        )
    deepspeed.init_distributed()
    distributed = det.core.DistributedContext.from_deepspeed()
    with det.core.init(distributed=distributed) as core_context:
        main(core_context, info.trial.hparams, info.latest_checkpoint)
