"""Scoring benchmark runs: what the user gets, how soon, and at what cost.

Per run (:func:`score_run`), against the landscape's optimum (every value here is a
fraction of it):

* **final pick**: the noise-free value of the ds_config the search recommends at its end;
* **trials to 95 % / 99 %**: the 1-based count of trials, in completion order and every
  trial counted (profile, baseline, confirmations), until the best noise-free value among
  the trials so far reaches the level; None when it never does;
* **hours to 95 % / 99 %**: the simulated clock, in hours, at the completion of the first
  trial that reaches the level; None when none does;
* OOM trials, trials run, and the simulated hours of the whole search.

Per method (:func:`summarize`): quartiles of each, the share of runs whose final pick is
within 1 % of the optimum, and how often each level is reached. A run that never reaches a
level counts as infinitely late, so a median that is not reached reads "never".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from benchmarks.runs import Run

LEVELS = (0.95, 0.99)
PICK_LEVEL = 0.99
"""A final pick within 1 % of the optimum counts as a good pick."""
_TOLERANCE = 1e-9  # fractions are rounded to 6 digits in the records
SECONDS_PER_HOUR = 3600.0


def first_reaching(fractions: Sequence[float], level: float) -> int | None:
    """0-based index of the first trial whose value reaches ``level``, None if none does.

    The best value so far first reaches a level at the first trial that reaches it."""
    return next((i for i, v in enumerate(fractions) if v >= level - _TOLERANCE), None)


def trials_to(fractions: Sequence[float], level: float) -> int | None:
    """Trials run (1-based, in completion order) until one reaches ``level``."""
    index = first_reaching(fractions, level)
    return None if index is None else index + 1


def hours_to(fractions: Sequence[float], finish_s: Sequence[float], level: float) -> float | None:
    """Simulated hours until the first trial reaching ``level`` completed."""
    index = first_reaching(fractions, level)
    return None if index is None else finish_s[index] / SECONDS_PER_HOUR


@attrs.frozen
class RunScore:
    """One run's scores (fractions of the optimum; None: the level was never reached)."""

    pick: float
    best: float  # the best noise-free value any trial had
    trials_to: Mapping[float, int | None]
    hours_to: Mapping[float, float | None]
    oom: int
    trials: int
    hours: float  # simulated hours of the whole search


def score_run(run: Run) -> RunScore:
    """Score one run (see the module docstring)."""
    return RunScore(
        pick=run.pick,
        best=max(run.fraction, default=0.0),
        trials_to={lv: trials_to(run.fraction, lv) for lv in LEVELS},
        hours_to={lv: hours_to(run.fraction, run.finish_s, lv) for lv in LEVELS},
        oom=run.oom_trials,
        trials=run.num_trials,
        hours=max(run.finish_s, default=0.0) / SECONDS_PER_HOUR,
    )


def _late(value: float | None) -> float:
    return math.inf if value is None else float(value)


@attrs.frozen
class Quantiles:
    """25th percentile, median and 75th percentile; ``inf`` where "never" is reached."""

    q25: float
    median: float
    q75: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Quantiles:
        """Linear-interpolated quartiles; a quartile that falls among the infinite values
        (or between the largest finite one and them) is infinite."""
        if not values:
            return cls(math.nan, math.nan, math.nan)
        array = np.asarray(values, dtype=float)
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            return cls(math.inf, math.inf, math.inf)
        top = float(finite.max())
        sentinel = abs(top) * 2.0 + 1.0
        q = np.percentile(np.where(np.isfinite(array), array, sentinel), [25, 50, 75])
        q25, median, q75 = (math.inf if v > top else float(v) for v in q)
        return cls(q25, median, q75)

    def show(self, digits: int = 0, percent: bool = False) -> str:
        """``median [q25–q75]``, as percentages if asked; "never" for an infinite one."""

        def one(v: float) -> str:
            if math.isinf(v):
                return "never"
            if percent:
                return f"{v * 100:.{digits}f}%"
            if digits == 0 and v != round(v):  # a median between two counts: 2.5
                return f"{v:.1f}"
            return f"{v:.{digits}f}"

        return f"{one(self.median)} [{one(self.q25)}–{one(self.q75)}]"

    def to_json(self) -> dict[str, float | None]:
        """Infinite quartiles as null (JSON has no infinity)."""
        return {k: None if math.isinf(v) else v for k, v in attrs.asdict(self).items()}


@attrs.frozen
class MethodSummary:
    """The statistics of one entry (implementation, method) over its runs."""

    impl: str
    method: str
    runs: int
    pick: Quantiles
    pick_share: float  # share of runs whose final pick is >= PICK_LEVEL of the optimum
    best: Quantiles
    trials_to: Mapping[float, Quantiles]
    reach: Mapping[float, float]  # share of runs that reached each level
    hours_to: Mapping[float, Quantiles]
    oom: Quantiles
    oom_mean: float
    trials: Quantiles
    hours: Quantiles

    def to_json(self) -> dict[str, Any]:
        def levels(q: Mapping[float, Quantiles]) -> dict[str, Any]:
            return {str(k): v.to_json() for k, v in q.items()}

        return {
            "impl": self.impl,
            "method": self.method,
            "runs": self.runs,
            "final_pick": self.pick.to_json(),
            f"pick_share_at_{PICK_LEVEL}": self.pick_share,
            "best_tried": self.best.to_json(),
            "trials_to": levels(self.trials_to),
            "reach": {str(k): v for k, v in self.reach.items()},
            "hours_to": levels(self.hours_to),
            "oom_trials": self.oom.to_json(),
            "oom_mean": self.oom_mean,
            "trials_run": self.trials.to_json(),
            "hours_total": self.hours.to_json(),
        }


def summarize(impl: str, method: str, scores: Sequence[RunScore]) -> MethodSummary:
    """Aggregate one entry's run scores."""
    n = len(scores)
    return MethodSummary(
        impl=impl,
        method=method,
        runs=n,
        pick=Quantiles.of([s.pick for s in scores]),
        pick_share=sum(s.pick >= PICK_LEVEL - _TOLERANCE for s in scores) / n if n else 0.0,
        best=Quantiles.of([s.best for s in scores]),
        trials_to={lv: Quantiles.of([_late(s.trials_to[lv]) for s in scores]) for lv in LEVELS},
        reach={
            lv: sum(s.trials_to[lv] is not None for s in scores) / n if n else 0.0 for lv in LEVELS
        },  # fmt: skip
        hours_to={lv: Quantiles.of([_late(s.hours_to[lv]) for s in scores]) for lv in LEVELS},
        oom=Quantiles.of([s.oom for s in scores]),
        oom_mean=float(np.mean([s.oom for s in scores])) if n else 0.0,
        trials=Quantiles.of([s.trials for s in scores]),
        hours=Quantiles.of([s.hours for s in scores]),
    )


GroupKey = tuple[str, str, int, str, str]
"""(family, sweep, concurrency, implementation, method): the runs one summary covers."""


def group_key(run: Run) -> GroupKey:
    return run.family, run.sweep, run.concurrency, run.impl, run.method


def summarize_runs(runs: Sequence[Run]) -> dict[GroupKey, MethodSummary]:
    """One summary per (family, sweep, concurrency, entry), in the order runs first show it."""
    groups: dict[GroupKey, list[RunScore]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(score_run(run))
    return {key: summarize(key[3], key[4], scores) for key, scores in groups.items()}
