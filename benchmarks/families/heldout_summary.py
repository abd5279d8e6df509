"""A table of held-out landscapes: optimum, largest micro-batch vs. a forward-only estimate.

Run ``python -m benchmarks.families.heldout_summary [count]``. The forward-only estimate is
what a search reading the profile would compute: ``(0.9 * gpu_mem - states) /
activation_mem_per_gpu`` with the textbook model states (16-bit params and grads, 12 bytes
of fp32 optimizer state per trainable parameter, partitioned as the stage says).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import attrs
import numpy as np

from benchmarks.families.heldout import HeldoutFamily, HeldoutLandscape
from determined_dsat.space.knobs import ZERO_KNOBS

STAGES = (1, 2, 3)


def textbook_states(landscape: HeldoutLandscape, stage: int) -> float:
    """Model-state bytes per GPU as the profile's numbers suggest (no buffers, no context)."""
    profile = landscape.profile_metrics()
    params, trainable = profile["num_params"], profile["trainable_num_params"]
    n, b = landscape.slots, landscape.model.weight_bytes
    return (
        b * params / (n if stage >= 3 else 1)
        + b * trainable / (n if stage >= 2 else 1)
        + 12 * trainable / (n if stage >= 1 else 1)
    )


def forward_only_estimate(landscape: HeldoutLandscape, stage: int) -> float:
    """The micro-batch a forward-only memory estimate allows at ``stage`` (may be < 1)."""
    profile = landscape.profile_metrics()
    free = 0.9 * profile["gpu_mem"] - textbook_states(landscape, stage)
    return free / profile["activation_mem_per_gpu"]


@attrs.frozen
class Row:
    key: str
    kind: str
    params_b: float
    gpu: str
    slots: int
    ratio: float
    fits: tuple[int, ...]  # largest micro-batch per stage, default knobs
    estimates: tuple[float, ...]  # forward-only estimate per stage
    best_stage: int
    best_mbs: int
    best_fit: int  # largest micro-batch of the optimum's knobs
    duration_s: float  # of the optimum's trial
    oom_duration_s: float  # of a trial one micro-batch past the optimum's fit
    seconds: float  # to compute the optimum


def row_of(landscape: HeldoutLandscape) -> Row:
    fits = tuple(landscape.max_fit({"stage": s}) for s in (0, *STAGES))
    estimates = tuple(forward_only_estimate(landscape, s) for s in (0, *STAGES))
    start = time.perf_counter()
    best = landscape.best_config(ZERO_KNOBS, STAGES)
    seconds = time.perf_counter() - start
    assert best is not None  # drawn landscapes fit at some stage
    fit = landscape.max_fit(best.zero)
    over = {**best.ds_config(), "train_micro_batch_size_per_gpu": fit + 1}
    return Row(
        key=landscape.key,
        kind=landscape.model.kind,
        params_b=landscape.model.total_params / 1e9,
        gpu=landscape.cluster.gpu.name,
        slots=landscape.slots,
        ratio=landscape.activation_ratio,
        fits=fits,
        estimates=estimates,
        best_stage=best.stage,
        best_mbs=best.mbs,
        best_fit=fit,
        duration_s=landscape.expected_duration_s(best.ds_config()),
        oom_duration_s=landscape.oom_duration_s(over),
        seconds=seconds,
    )


def print_rows(rows: Sequence[Row]) -> None:
    print(
        "key         kind        params  gpu        N  ratio  fit s0/s1/s2/s3   est s0/s1/s2/s3"
        "        best(stage,mbs/fit)  dur_s  oom_s  opt_s"
    )
    for r in rows:
        fits = "/".join(str(f) for f in r.fits)
        est = "/".join(f"{e:.0f}" if e >= 1 else "-" for e in r.estimates)
        print(
            f"{r.key:11} {r.kind:10} {r.params_b:6.2f}B {r.gpu:10} {r.slots:2} {r.ratio:5.2f}  "
            f"{fits:16} {est:22} s{r.best_stage} {r.best_mbs:4}/{r.best_fit:<5}"
            f"        {r.duration_s:6.0f} {r.oom_duration_s:6.0f} {r.seconds:5.2f}"
        )


def print_distribution(rows: Sequence[Row]) -> None:
    ratios = [r.estimates[s] / r.fits[s] for r in rows for s in range(4) if r.fits[s] >= 1]
    print(
        f"\nforward-only estimate / true max fit (stage with fit, default knobs): "
        f"median {np.median(ratios):.2f}, quartiles {np.percentile(ratios, 25):.2f}-"
        f"{np.percentile(ratios, 75):.2f}, max {max(ratios):.2f}, n={len(ratios)}"
    )
    print(
        f"activation ratio true/profiled: median {np.median([r.ratio for r in rows]):.2f}, "
        f"range {min(r.ratio for r in rows):.2f}-{max(r.ratio for r in rows):.2f}"
    )
    below = sum(r.best_mbs < r.best_fit for r in rows)
    print(f"optimum's mbs below its largest fit: {below}/{len(rows)}")
    stages = [r.best_stage for r in rows]
    print("optimum stage: " + ", ".join(f"s{s}: {stages.count(s)}" for s in STAGES))
    no_s1 = sum(r.fits[1] < 1 for r in rows)
    print(f"nothing fits at stage 1 (default knobs): {no_s1}/{len(rows)}")
    durations = [r.duration_s for r in rows]
    print(
        f"optimum trial duration: median {np.median(durations):.0f} s, "
        f"range {min(durations):.0f}-{max(durations):.0f} s; "
        f"OOM trials median {np.median([r.oom_duration_s for r in rows]):.0f} s"
    )
    print(f"optimum computed in at most {max(r.seconds for r in rows):.2f} s")


def main(argv: Sequence[str]) -> None:
    count = int(argv[0]) if argv else 30
    rows = [row_of(landscape) for landscape in HeldoutFamily().landscapes(count)]
    print_rows(rows)
    print_distribution(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
