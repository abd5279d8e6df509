"""A Core API DeepSpeed script in the shape upstream dsat users wrote (our own code).

What makes it "upstream-shaped", and what dsat must cope with:

* hyperparameters read as attributes (``hparams.model_name``), as with ``attrdict``;
* DeepSpeed builds the data loader itself (``deepspeed.initialize(training_data=...)``)
  from a ds_config that sets only ``train_batch_size``: DeepSpeed derives the
  micro-batch (``train_batch_size / world_size``) and accumulation 1;
* ``dsat_reporting_context`` wraps every training step, inside the data loop;
* inputs moved with ``.to(model_engine.local_rank)`` on GPUs (a CUDA index, which a
  CPU-only torch refuses) and ``.to(model_engine.device)`` otherwise;
* optimizer steps counted with ``is_gradient_accumulation_boundary()`` after
  ``model_engine.step()``, and half-precision inputs when the engine says fp16 (or bf16).
"""

from __future__ import annotations

import logging
from typing import Any

import attrdict
import deepspeed
import determined as det
import numpy as np
import torch
from tiny_resnet import RandomImages, build_model
from torch import nn

from determined_dsat import dsat_reporting_context, get_ds_config_from_hparams


def to_engine_device(engine: Any, tensor: torch.Tensor) -> torch.Tensor:
    if torch.cuda.is_available():
        return tensor.to(engine.local_rank)
    return tensor.to(engine.device)


def main(
    core_context: det.core.Context, hparams: attrdict.AttrDict, latest_checkpoint: str | None
) -> None:
    is_chief = core_context.distributed.rank == 0
    ds_config = get_ds_config_from_hparams(hparams)
    deepspeed.init_distributed()
    model = build_model(hparams.model_name)
    parameters = [p for p in model.parameters() if p.requires_grad]
    model_engine, _, trainloader, _ = deepspeed.initialize(
        model=model, model_parameters=parameters, training_data=RandomImages(), config=ds_config
    )
    logging.info(
        "engine: micro-batch %d x %d accumulation on %d rank(s), fp16=%s bf16=%s",
        model_engine.train_micro_batch_size_per_gpu(),
        model_engine.gradient_accumulation_steps(),
        model_engine.world_size,
        model_engine.fp16_enabled(),
        model_engine.bfloat16_enabled(),
    )
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            model_engine.load_checkpoint(path)
    fp16, bf16 = model_engine.fp16_enabled(), model_engine.bfloat16_enabled()
    criterion = nn.CrossEntropyLoss()

    steps_completed = 0
    losses: list[float] = []
    mean_loss = float("nan")
    for op in core_context.searcher.operations():
        while steps_completed < op.length:
            for inputs, labels in trainloader:
                with dsat_reporting_context(core_context, op):
                    inputs = to_engine_device(model_engine, inputs)
                    labels = to_engine_device(model_engine, labels)
                    if fp16:
                        inputs = inputs.half()
                    elif bf16:
                        inputs = inputs.bfloat16()
                    loss = criterion(model_engine(inputs).float(), labels)
                    losses.append(loss.item())
                    model_engine.backward(loss)
                    model_engine.step()
                if not model_engine.is_gradient_accumulation_boundary():
                    continue
                steps_completed += 1
                if steps_completed % hparams.metric_reporting_rate == 0:
                    gathered = core_context.distributed.gather(float(np.mean(losses)))
                    losses = []
                    if is_chief:
                        assert gathered is not None
                        mean_loss = float(np.mean(gathered))
                        core_context.train.report_training_metrics(
                            steps_completed=steps_completed, metrics={"loss": mean_loss}
                        )
                if steps_completed % hparams.checkpoint_rate == 0:
                    metadata = {"steps_completed": steps_completed}
                    with core_context.checkpoint.store_path(metadata, shard=True) as (path, _):
                        model_engine.save_checkpoint(path)
                    if core_context.preempt.should_preempt():
                        return
                if steps_completed == op.length:
                    if is_chief:
                        op.report_completed(mean_loss)
                    return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    assert info is not None and info.trial is not None, "run this script as a Determined trial"
    hparams = attrdict.AttrDict(info.trial.hparams)
    distributed = det.core.DistributedContext.from_deepspeed()
    with det.core.init(distributed=distributed) as core_context:
        main(core_context, hparams, info.latest_checkpoint)
