"""The search-efficiency targets, checked on a benchmark's runs: PASS/FAIL lines.

On the held-out family (we never tune on it), at 1, 4 and 16 trials at once:

* ``model``'s final pick is >= 99 % of the optimum on >= 90 % of runs (landscape x seed);
* ``model``'s median trials to 99 % is <= 6 at 1 at once, <= 10 at 4, <= 20 at 16;
* ``model``'s median OOM trials is <= 4;
* our ``binary``, ``random`` and ``asha`` are at least as good as upstream's on every median
  of the same runs: final pick, trials to 95 % and 99 %, OOM trials, simulated hours to
  95 % and 99 % (trials run and total hours are not compared: both use the budget);
* ``model``'s median simulated hours to 95 % is at most half of DeepSpeed's full autotuner's
  (``fast: false`` with its default tuner, grid search: ``native.py``), which must reach
  95 % for the ratio to mean anything.

Usage (``PATH``: a results directory or its ``runs.json``)::

    python -m benchmarks.targets PATH [--family heldout]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence

import attrs

from benchmarks.harness import METHODS
from benchmarks.runs import Entry, Run
from benchmarks.scoring import PICK_LEVEL, GroupKey, MethodSummary, summarize_runs

TARGET_FAMILY = "heldout"
CONCURRENCY = (1, 4, 16)
MODEL: Entry = ("ours", "model")
NATIVE_FULL: Entry = ("deepspeed", "grid")
PICK_SHARE = 0.90
TRIALS_TO_99 = {1: 6.0, 4: 10.0, 16: 20.0}
OOM_LIMIT = 4.0
WALL_RATIO = 0.5
RUNS_FILE = "runs.json"


@attrs.frozen
class Check:
    """One target: ``value`` against ``limit`` (None: the runs to check it are missing)."""

    family: str
    concurrency: int
    name: str
    value: float | None
    limit: float | None
    smaller_is_better: bool
    percent: bool = False
    needs_finite: bool = False  # a value that is never reached fails even against "never"

    @property
    def passed(self) -> bool:
        if self.value is None or self.limit is None:
            return False
        if self.needs_finite and math.isinf(self.value):
            return False
        if self.smaller_is_better:
            return self.value <= self.limit
        return self.value >= self.limit

    def _show(self, x: float) -> str:
        if math.isinf(x):
            return "never"
        return f"{x:.1%}" if self.percent else f"{x:.4g}"

    def line(self) -> str:
        where = f"{self.family} x{self.concurrency}"
        if self.value is None or self.limit is None:
            return f"MISSING {where}: {self.name} (no runs for it)"
        verdict = "PASS" if self.passed else "FAIL"
        op = "<=" if self.smaller_is_better else ">="
        return (
            f"{verdict} {where}: {self.name}: {self._show(self.value)} "
            f"(needs {op} {self._show(self.limit)})"
        )


Summaries = Mapping[GroupKey, MethodSummary]


def _get(summaries: Summaries, family: str, c: int, entry: Entry) -> MethodSummary | None:
    return summaries.get((family, "", c, *entry))


def _model_checks(family: str, c: int, model: MethodSummary | None) -> list[Check]:
    def value(get: str) -> float | None:
        if model is None:
            return None
        return {
            "share": model.pick_share,
            "t99": model.trials_to[0.99].median,
            "oom": model.oom.median,
        }[get]

    return [
        Check(family, c, f"model final pick >= {PICK_LEVEL:.0%} of optimum, share of runs",
              value("share"), PICK_SHARE, False, percent=True),
        Check(family, c, "model median trials to 99%", value("t99"), TRIALS_TO_99.get(c), True),
        Check(family, c, "model median OOM trials", value("oom"), OOM_LIMIT, True),
    ]  # fmt: skip


MEDIANS: list[tuple[str, bool, bool]] = [
    ("final pick", False, True),
    ("trials to 95%", True, False),
    ("trials to 99%", True, False),
    ("OOM trials", True, False),
    ("hours to 95%", True, False),
    ("hours to 99%", True, False),
]
"""Medians ours must match upstream on: name, smaller is better, shown as a percentage."""


def median_of(summary: MethodSummary, name: str) -> float:
    """One of :data:`MEDIANS` of a summary."""
    return {
        "final pick": summary.pick.median,
        "trials to 95%": summary.trials_to[0.95].median,
        "trials to 99%": summary.trials_to[0.99].median,
        "OOM trials": summary.oom.median,
        "hours to 95%": summary.hours_to[0.95].median,
        "hours to 99%": summary.hours_to[0.99].median,
    }[name]


def _versus_upstream(family: str, c: int, summaries: Summaries) -> list[Check]:
    out: list[Check] = []
    for method in METHODS:
        ours = _get(summaries, family, c, ("ours", method))
        theirs = _get(summaries, family, c, ("upstream", method))
        for name, smaller, percent in MEDIANS:
            out.append(
                Check(
                    family,
                    c,
                    f"ours {method} median {name} vs upstream's",
                    None if ours is None else median_of(ours, name),
                    None if theirs is None else median_of(theirs, name),
                    smaller,
                    percent=percent,
                )
            )
    return out


def _wall_check(family: str, c: int, summaries: Summaries) -> Check:
    model = _get(summaries, family, c, MODEL)
    full = _get(summaries, family, c, NATIVE_FULL)
    native_h = None if full is None else full.hours_to[0.95].median
    return Check(
        family,
        c,
        f"model median hours to 95% vs {WALL_RATIO:g} x DeepSpeed's full autotuner's "
        f"({'never' if native_h is None or math.isinf(native_h) else f'{native_h:.3g}'} h)",
        None if model is None else model.hours_to[0.95].median,
        None if native_h is None or math.isinf(native_h) else WALL_RATIO * native_h,
        True,
        needs_finite=True,
    )


def evaluate(
    summaries: Summaries, family: str = TARGET_FAMILY, concurrency: Sequence[int] = CONCURRENCY
) -> list[Check]:
    """Every target on ``family``'s own draw (no sweep) at each concurrency."""
    out: list[Check] = []
    for c in concurrency:
        out += _model_checks(family, c, _get(summaries, family, c, MODEL))
        out += _versus_upstream(family, c, summaries)
        out.append(_wall_check(family, c, summaries))
    return out


def load_runs(path: pathlib.Path) -> list[Run]:
    """The runs of a results directory (or of its ``runs.json``)."""
    file = path / RUNS_FILE if path.is_dir() else path
    return [Run.from_json(row) for row in json.loads(file.read_text())["runs"]]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the search-efficiency targets.")
    p.add_argument("path", type=pathlib.Path, help=f"a results directory or its {RUNS_FILE}")
    p.add_argument("--family", default=TARGET_FAMILY)
    opts = p.parse_args(argv)
    checks = evaluate(summarize_runs(load_runs(opts.path)), opts.family)
    for check in checks:
        print(check.line())
    passed = sum(c.passed for c in checks)
    print(f"{passed} of {len(checks)} targets pass")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
