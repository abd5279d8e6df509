"""``dsat_reporting_context``: report a trial's DeepSpeed autotuning results to the search.

DeepSpeed's autotuning hooks write ``model_info.json`` (profiling trial) or
``autotuning_metric.json`` (search trial) and then call ``exit()``. The context
catches that exit, reports the file's contents as the trial's validation metrics
and completes the searcher operation, then lets the exit proceed. An
out-of-memory error inside the context is reported as ``{"dsat_outcome": "oom"}``,
so the search can tell an OOM from a crash even on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator
from typing import Any

from determined_dsat.space.ds_config import METRIC_PATH, MODEL_INFO_PATH
from determined_dsat.trials.records import OUTCOME_KEY


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _device_memory_bytes() -> int:
    """Device memory of this rank in bytes.

    On a GPU, the device's total memory. On a CPU, this rank's share of host RAM (its
    cores out of all cores: concurrent trials share the RAM), capped by the process's
    address-space limit, which the local runner sets for ``--trial-memory-limit``.
    """
    import os
    import resource

    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = ram * len(os.sched_getaffinity(0)) // max(1, os.cpu_count() or 1)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return int(share if soft == resource.RLIM_INFINITY else min(share, soft))


def _results(workdir: pathlib.Path) -> dict[str, Any] | None:
    info, metrics = workdir / MODEL_INFO_PATH, workdir / METRIC_PATH
    if info.exists():
        data = dict(json.loads(info.read_text()))
        data.setdefault("gpu_mem", _device_memory_bytes())
        return data
    if metrics.exists():
        return dict(json.loads(metrics.read_text()))
    return None


def report_results(
    core_context: Any, op: Any, steps_completed: int, metrics: dict[str, Any]
) -> None:
    """Report ``metrics`` from the chief and complete ``op``."""
    if core_context.distributed.rank == 0:
        core_context.train.report_validation_metrics(
            steps_completed=steps_completed, metrics=metrics
        )
        op.report_completed(metrics)


@contextlib.contextmanager
def dsat_reporting_context(
    core_context: Any, op: Any, steps_completed: int | None = None
) -> Iterator[None]:
    """Wrap the training loop of a Core API script run by DeepSpeed Autotune.

    ``op`` is the first operation of ``core_context.searcher.operations()``;
    ``steps_completed`` defaults to its length (batches).
    """
    steps = op.length if steps_completed is None else steps_completed
    workdir = pathlib.Path(".")
    try:
        yield
    except SystemExit:
        # Only the chief reads: other ranks may exit while it is still writing the file
        # (seen as a JSONDecodeError on rank 1 with DeepSpeed 0.19.8, ZeRO-3, 2 ranks).
        if core_context.distributed.rank == 0:
            results = _results(workdir)
            if results is not None:
                report_results(core_context, op, steps, results)
        raise
    except BaseException as exc:
        if _is_oom(exc) and core_context.distributed.rank == 0:
            report_results(core_context, op, steps, {OUTCOME_KEY: "oom", "error": str(exc)[:500]})
        raise
