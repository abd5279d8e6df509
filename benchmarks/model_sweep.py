"""``model`` with several ``--min-improvement`` thresholds on the search-efficiency landscapes.

The trade-off the threshold sets: a lower one runs more trials (GPU-hours) and gets closer
to the optimum. ``model`` makes no random choices, so one seed per landscape is its whole
distribution. Same landscapes (the first N where something fits), limits and scoring as
``search_efficiency.py``. Usage::

    python -m benchmarks.model_sweep [--landscapes 30] [--max-concurrent-trials 4]
        [--thresholds 0.02 0.01 0.005 0.002 0] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from benchmarks.efficiency import SpaceOptima
from benchmarks.harness import (
    ALL_STAGES,
    RecordingExecutor,
    build_ours,
    drive,
    markdown_table,
    package_digest,
    quiet,
    write_model_dir,
)
from benchmarks.upstream import upstream_table
from determined_dsat.methods.model_based import ModelOptions
from determined_dsat.testing.synthetic import Landscape

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


def run(
    threshold: float, landscape: Landscape, optimum: float, opts: argparse.Namespace
) -> dict[str, float]:
    """One ``model`` search; its trials to 95 % / 99 %, OOMs, trials run and best fraction."""
    options = ModelOptions(min_improvement=threshold)
    with tempfile.TemporaryDirectory(prefix="dsat-sweep-") as tmp:
        model = write_model_dir(pathlib.Path(tmp), landscape.slots)
        search = build_ours(
            "model",
            model,
            max_trials=opts.max_trials,
            max_concurrent_trials=opts.max_concurrent_trials,
            seed=42,
            options=options,
        )
        trials = drive(search, RecordingExecutor(landscape)).trials
    values = [t.value / optimum for t in trials]
    never = opts.max_trials + 1
    return {
        "t95": next((i + 1 for i, v in enumerate(values) if v >= 0.95), never),
        "t99": next((i + 1 for i, v in enumerate(values) if v >= 0.99), never),
        "oom": sum(t.outcome == "oom" for t in trials),
        "trials": len(trials),
        "best": max(values, default=0.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--landscapes", type=int, default=30)
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--max-concurrent-trials", type=int, default=4)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.002, 0.0])
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    opts = p.parse_args(argv)
    quiet()
    upstream = upstream_table(ALL_STAGES)
    landscapes: list[tuple[Landscape, float]] = []
    seed = 0
    while len(landscapes) < opts.landscapes:
        landscape = Landscape.draw(seed)
        optimum = SpaceOptima.of(landscape, upstream, ALL_STAGES).optimum
        if optimum > 0:
            landscapes.append((landscape, optimum))
        seed += 1
    rows = []
    default = ModelOptions().min_improvement
    for threshold in opts.thresholds:
        results = [run(threshold, ls, opt, opts) for ls, opt in landscapes]
        col = {k: np.array([r[k] for r in results], dtype=float) for k in results[0]}
        reach = float(np.mean(col["t99"] <= opts.max_trials))
        rows.append(
            [
                f"{threshold:g}" + (" (default)" if threshold == default else ""),
                f"{np.median(col['t95']):g}",
                f"{np.median(col['t99']):g} [{np.percentile(col['t99'], 75):g}]",
                f"{reach:.0%}",
                f"{np.median(col['best']):.2%} [{np.percentile(col['best'], 25):.2%}]",
                f"{np.median(col['oom']):g} / {np.mean(col['oom']):.1f}",
                f"{np.median(col['trials']):g} / {np.mean(col['trials']):.1f}",
            ]
        )
        print(f"threshold {threshold:g} done", file=sys.stderr)
    header = [
        "--min-improvement",
        "trials to 95% (median)",
        "trials to 99% (median [75th pct])",
        "reach 99%",
        "best/opt at the end (median [25th pct])",
        "OOM trials (median / mean)",
        "trials run (median / mean)",
    ]
    text = "\n".join(
        [
            "# `model`: the --min-improvement trade-off",
            "",
            f"The first {opts.landscapes} landscapes where something fits (seeds 0..{seed - 1}), "
            f"one run each (`model` is deterministic), --max-trials {opts.max_trials}, "
            f"--max-concurrent-trials {opts.max_concurrent_trials}; determined_dsat sources "
            f"{package_digest()}.",
            "",
            *markdown_table(header, rows),
            "",
        ]
    )
    print(text)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "model_min_improvement.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
