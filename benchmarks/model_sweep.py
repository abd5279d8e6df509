"""``model`` with several ``--min-improvement`` thresholds on a family's landscapes.

The trade-off the threshold sets: a lower one runs more trials (GPU-hours) and gets closer
to the optimum. One seed per landscape; ``model`` is set up as the ``dsat`` CLI sets it up,
with ``--min-improvement`` added. Same optimum and scoring as ``search_efficiency.py``.
Usage::

    python -m benchmarks.model_sweep [--family heldout] [--landscapes 30]
        [--max-concurrent-trials 4] [--thresholds 0.02 0.01 0.005 0.002 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from benchmarks.efficiency import FIRST_SEED, SpaceOptima, search_tables
from benchmarks.families.api import BenchmarkLandscape
from benchmarks.families.catalog import FAMILIES, family
from benchmarks.harness import (
    build_ours,
    drive,
    markdown_table,
    our_executor,
    package_digest,
    quiet,
    write_model_dir,
)
from benchmarks.recording import true_value
from benchmarks.runs import Run
from benchmarks.scoring import RunScore, score_run
from determined_dsat.methods.model_based import ModelOptions

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


def run(
    threshold: float, landscape: BenchmarkLandscape, optimum: float, opts: argparse.Namespace
) -> RunScore:
    """One ``model`` search with ``--min-improvement threshold``, scored."""
    with tempfile.TemporaryDirectory(prefix="dsat-sweep-") as tmp:
        model = write_model_dir(pathlib.Path(tmp), landscape.slots)
        search = build_ours(
            "model",
            model,
            max_trials=opts.max_trials,
            max_concurrent_trials=opts.max_concurrent_trials,
            seed=FIRST_SEED,
            extra=["--min-improvement", str(threshold)],
        )
        result = drive(search, our_executor(search, landscape, FIRST_SEED))
        pick = search.best_ds_config()
    record = Run.of(
        entry=("ours", "model"),
        family=opts.family,
        landscape=landscape.key,
        seed=FIRST_SEED,
        concurrency=opts.max_concurrent_trials,
        ended=result.ended,
        trials=result.trials,
        pick_value=0.0 if pick is None else true_value(landscape, pick),
        optimum=optimum,
    )
    return score_run(record)


def _never(value: int | None, opts: argparse.Namespace) -> float:
    return float(opts.max_trials + 1 if value is None else value)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--family", default="heldout", choices=list(FAMILIES))
    p.add_argument("--landscapes", type=int, default=30)
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--max-concurrent-trials", type=int, default=4)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.002, 0.0])
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    opts = p.parse_args(argv)
    quiet()
    upstream, native_table = search_tables()
    landscapes = [
        (ls, SpaceOptima.of(ls, upstream, native_table).optimum)
        for ls in family(opts.family).draw(opts.landscapes)
    ]
    rows = []
    default = ModelOptions().min_improvement
    for threshold in opts.thresholds:
        scores = [run(threshold, ls, opt, opts) for ls, opt in landscapes]
        t95 = np.array([_never(s.trials_to[0.95], opts) for s in scores])
        t99 = np.array([_never(s.trials_to[0.99], opts) for s in scores])
        pick = np.array([s.pick for s in scores])
        oom = np.array([s.oom for s in scores], dtype=float)
        trials = np.array([s.trials for s in scores], dtype=float)
        rows.append(
            [
                f"{threshold:g}" + (" (default)" if threshold == default else ""),
                f"{np.median(t95):g}",
                f"{np.median(t99):g} [{np.percentile(t99, 75):g}]",
                f"{np.mean(t99 <= opts.max_trials):.0%}",
                f"{np.median(pick):.2%} [{np.percentile(pick, 25):.2%}]",
                f"{np.mean(pick >= 0.99 - 1e-9):.0%}",
                f"{np.median(oom):g} / {np.mean(oom):.1f}",
                f"{np.median(trials):g} / {np.mean(trials):.1f}",
            ]
        )
        print(f"threshold {threshold:g} done", file=sys.stderr)
    header = [
        "--min-improvement",
        "trials to 95% (median)",
        "trials to 99% (median [75th pct]; never: max trials + 1)",
        "reach 99%",
        "final pick/opt (median [25th pct])",
        "pick >= 99%",
        "OOM trials (median / mean)",
        "trials run (median / mean)",
    ]
    text = "\n".join(
        [
            "# `model`: the --min-improvement trade-off",
            "",
            f"The first {opts.landscapes} landscapes of the `{opts.family}` family, one run "
            f"each (seed {FIRST_SEED}), `dsat` CLI defaults, --max-trials {opts.max_trials}, "
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
