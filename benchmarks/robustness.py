"""Robustness: ours and upstream's searches when the profile lies more, or the noise grows.

On the held-out family, each sweep redraws the same landscapes with one property fixed
(``Family.draw(..., activation_error=x)`` or ``noise=y``):

* ``activation_error`` 0.5, 1, 2, 3: the true per-sample activation memory over what the
  profile reports (below 1 the profile over-states it, above 1 it under-states it);
* ``noise`` 0.01, 0.03, 0.05: the relative standard deviation of one measurement.

Ours (at the ``dsat`` CLI's defaults) and upstream's methods run at 16 and 1 trials at
once, scored as in ``search_efficiency.py``. Results go to ``benchmarks/results/<name>/``
(``robustness.md``, ``robustness.json``, ``runs.json``). Usage::

    python -m benchmarks.robustness [--family heldout] [--landscapes 20] [--seeds 3]
        [--concurrency 16 1] [--workers 2] [--name robustness]
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from benchmarks.efficiency import FIRST_SEED, Plan, entries, sweep_label
from benchmarks.efficiency_report import (
    SCORING_NOTE,
    Provenance,
    git_commit,
    write_results,
)
from benchmarks.families.catalog import FAMILIES
from benchmarks.harness import markdown_table, package_digest, quiet
from benchmarks.scoring import PICK_LEVEL, GroupKey, MethodSummary, summarize_runs
from benchmarks.search_efficiency import RESULTS, execute, hash_seed

ACTIVATION_ERRORS = (0.5, 1.0, 2.0, 3.0)
NOISES = (0.01, 0.03, 0.05)

MEASURES: list[tuple[str, Callable[[MethodSummary], str]]] = [
    (f"final pick >= {PICK_LEVEL:.0%} (share of runs)", lambda s: f"{s.pick_share:.0%}"),
    ("final pick / optimum (median)", lambda s: f"{s.pick.median:.1%}"),
    ("trials to 99% (median)", lambda s: s.trials_to[0.99].show().split(" ")[0]),
    ("OOM trials (median)", lambda s: s.oom.show().split(" ")[0]),
    ("hours to 95% (median)", lambda s: s.hours_to[0.95].show(2).split(" ")[0]),
]


def sweeps(activation_errors: Sequence[float], noises: Sequence[float]) -> list[dict[str, float]]:
    """One sweep setting per value: ``{"activation_error": 0.5}``, ..., ``{"noise": 0.01}``."""
    return [{"activation_error": x} for x in activation_errors] + [{"noise": y} for y in noises]


def pivot(
    summaries: Mapping[GroupKey, MethodSummary],
    family: str,
    labels: Sequence[str],
    concurrency: int,
) -> list[str]:
    """Per measure, a table: one row per entry, one column per sweep setting."""
    lines: list[str] = []
    entry_keys = list(dict.fromkeys(k[3:] for k in summaries if k[2] == concurrency))
    for name, show in MEASURES:
        rows = []
        for impl, method in entry_keys:
            cells = []
            for label in labels:
                s = summaries.get((family, label, concurrency, impl, method))
                cells.append("—" if s is None else show(s))
            rows.append([f"{impl} {method}", *cells])
        lines += [f"**{name}**", "", *markdown_table(["search", *labels], rows), ""]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--family", default="heldout", choices=list(FAMILIES))
    p.add_argument("--landscapes", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3, help=f"random seeds from {FIRST_SEED}")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 1])
    p.add_argument("--activation-errors", type=float, nargs="*", default=list(ACTIVATION_ERRORS))
    p.add_argument("--noises", type=float, nargs="*", default=list(NOISES))
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--name", default="robustness", help="results/<name>/")
    p.add_argument("--out", type=pathlib.Path, help="results directory (overrides --name)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    quiet()
    settings = sweeps(opts.activation_errors, opts.noises)
    seeds = list(range(FIRST_SEED, FIRST_SEED + opts.seeds))
    which = entries(False, ("ours", "upstream"))
    plans = [
        Plan(
            opts.family, i, opts.landscapes, which, opts.concurrency, seeds, opts.max_trials, sweep
        )  # fmt: skip
        for sweep in settings
        for i in range(opts.landscapes)
    ]
    start = time.perf_counter()
    infos, runs = execute(plans, opts.workers)
    summaries = summarize_runs(runs)
    labels = [sweep_label(s) for s in settings]
    command = "python -m benchmarks.robustness " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    provenance = Provenance(command, git_commit(), package_digest(),
                            time.perf_counter() - start, hash_seed(False))  # fmt: skip
    lines = [
        f"# Robustness on the `{opts.family}` family: activation error and noise",
        "",
        *provenance.lines(),
        "",
        f"{opts.landscapes} landscapes, each redrawn per setting, seeds {FIRST_SEED}.."
        f"{FIRST_SEED + opts.seeds - 1}, --max-trials {opts.max_trials}; ours at the `dsat` "
        "CLI's defaults, upstream's at theirs. *activation_error*: true per-sample "
        "activation memory over the profile's; *noise*: relative sd of one measurement.",
        "",
        SCORING_NOTE,
        "",
    ]
    for c in opts.concurrency:
        lines += [f"## {c} trial{'s' if c > 1 else ''} at once", ""]
        lines += pivot(summaries, opts.family, labels, c)
    text = "\n".join(lines)
    write_results(
        opts.out or RESULTS / opts.name,
        "robustness",
        text,
        provenance=provenance,
        opts=opts,
        infos=infos,
        summaries=summaries,
        runs=runs,
        extra={"sweeps": labels},
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
