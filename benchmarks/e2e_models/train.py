"""One training script for both autotuners and for the benchmark's re-measurement.

* **Our dsat** starts it as a Determined trial (``det.get_cluster_info()`` has a trial):
  the ds_config comes from the hyperparameters (``get_ds_config_from_hparams``) and the
  first searcher operation trains inside ``dsat_reporting_context``, which reports what
  DeepSpeed measured when DeepSpeed's autotuning section makes it exit.
* **DeepSpeed's autotuner** starts it through the ``deepspeed`` launcher with
  ``--deepspeed_config`` (a path, or the base64 text DeepSpeed 0.19.8's scheduler passes)
  and ``--local_rank``: the engine profiles its steps, writes its metrics and exits.
* **The re-measurement** starts it with ``--deepspeed_config`` naming a winner's ds_config
  (no autotuning section) and ``--timed-steps``: after ``--warmup-steps`` optimizer steps
  it times ``--timed-steps`` more and writes them to ``--timing-out`` as JSON.

The model is ``--model`` with ``--dims`` (see ``models.py``) in every mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the trial's working directory holds only links

import deepspeed  # noqa: E402
import determined as det  # noqa: E402
import torch  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

import determined_dsat  # noqa: E402
from benchmarks.e2e_models.models import build_model, make_batch, parse_dims  # noqa: E402

# DeepSpeed's autotuning engine exits after its end profile step; this only bounds a
# script whose ds_config unexpectedly lets it run on.
MAX_PROFILE_STEPS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=("gpt", "mlp"))
    parser.add_argument("--dims", required=True, type=parse_dims, help="NAME=INT,...")
    parser.add_argument("--deepspeed_config", help="ds_config path or base64 (plain mode)")
    parser.add_argument("--local_rank", type=int, default=0, help="set by deepspeed's launcher")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--timed-steps", type=int, default=0, help="0: not a timed run")
    parser.add_argument("--timing-out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_engine(args: argparse.Namespace, ds_config: Any) -> Any:
    """The DeepSpeed engine of the model, initialised from ``ds_config`` (dict, path or
    base64 text)."""
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.dims)
    engine, _optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config
    )
    return engine


def train_steps(engine: Any, args: argparse.Namespace, first_step: int, steps: int) -> float:
    """``steps`` optimizer steps (``gradient_accumulation_steps`` micro-batches each) from
    step ``first_step`` on; returns the last micro-batch's loss."""
    gas = engine.gradient_accumulation_steps()
    mbs = engine.train_micro_batch_size_per_gpu()
    device = torch.device(get_accelerator().device_name(engine.local_rank))
    rank = int(os.environ.get("RANK", "0"))
    loss = torch.zeros(())
    for step in range(first_step, first_step + steps):
        for micro in range(gas):
            inputs, targets = make_batch(
                args.model, args.dims, mbs, step * gas + micro, rank, device
            )
            loss = engine(inputs, targets)
            engine.backward(loss)
            engine.step()
    return float(loss.detach().float().item())


def timed_run(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then time each of ``--timed-steps`` optimizer steps (seconds)."""
    train_steps(engine, args, 0, args.warmup_steps)
    accelerator = get_accelerator()
    durations: list[float] = []
    for step in range(args.warmup_steps, args.warmup_steps + args.timed_steps):
        accelerator.synchronize()
        start = time.perf_counter()
        train_steps(engine, args, step, 1)
        accelerator.synchronize()
        durations.append(time.perf_counter() - start)
    batch = int(engine.train_batch_size())
    return {
        "train_batch_size": batch,
        "micro_batch_size": int(engine.train_micro_batch_size_per_gpu()),
        "gradient_accumulation_steps": int(engine.gradient_accumulation_steps()),
        "zero_stage": int(engine.zero_optimization_stage()),
        "warmup_steps": args.warmup_steps,
        "step_seconds": durations,
        "samples_per_second": batch * len(durations) / sum(durations),
    }


def plain_main(args: argparse.Namespace) -> None:
    """Started by DeepSpeed's launcher (autotuning experiment) or by the benchmark (timed)."""
    if not args.deepspeed_config:
        raise SystemExit("train.py: --deepspeed_config is required outside a Determined trial")
    deepspeed.init_distributed()
    engine = make_engine(args, args.deepspeed_config)
    if args.timed_steps <= 0:
        # An autotuning experiment: DeepSpeed exits by itself after its profile steps.
        train_steps(engine, args, 0, MAX_PROFILE_STEPS)
        raise SystemExit("train.py: DeepSpeed did not end its autotuning experiment")
    result = timed_run(engine, args)
    if engine.global_rank == 0 and args.timing_out is not None:
        args.timing_out.write_text(json.dumps(result, indent=2))


def trial_main(args: argparse.Namespace, hparams: Mapping[str, Any]) -> None:
    """Started by our dsat as a Determined trial (local backend or a cluster)."""
    ds_config = determined_dsat.get_ds_config_from_hparams(hparams)
    deepspeed.init_distributed()
    distributed = det.core.DistributedContext.from_deepspeed()
    with det.core.init(distributed=distributed) as core_context:
        engine = make_engine(args, ds_config)
        steps_done = 0
        for index, op in enumerate(core_context.searcher.operations()):
            reporting = (
                determined_dsat.dsat_reporting_context(core_context, op)
                if index == 0
                else contextlib.nullcontext()
            )
            with reporting:
                loss = train_steps(engine, args, steps_done, op.length - steps_done)
            steps_done = op.length
            if core_context.distributed.rank == 0:
                op.report_completed(loss)


def main() -> None:
    args = parse_args()
    info = det.get_cluster_info()
    if info is not None and info.trial is not None:
        trial_main(args, info.trial.hparams)
    else:
        plain_main(args)


if __name__ == "__main__":
    main()
