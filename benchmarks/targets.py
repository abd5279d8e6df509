"""Issue 5's targets for ``model``, checked against the other searches of the same run.

* **Trials to 99 %**: ``model``'s median is at most half the median of the best of the
  original dsat's methods (upstream ``binary``, ``random``, ``asha``).
* **OOM trials**: fewer than each of the original dsat's methods, by median and by mean
  (DeepSpeed's tuners are shown too).
* **The 25th-percentile landscape**: per landscape, the median over seeds of each quality
  measure; across landscapes, ``model``'s lower quartile (for a best/optimum fraction) or
  upper quartile (for a trial count, where larger is worse) is no worse than ``binary``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs
import numpy as np

from benchmarks.efficiency import (
    BEST_AFTER,
    REACH_LEVELS,
    UPSTREAM_METHODS,
    Entry,
    MethodSummary,
    RunScore,
    ScoreKey,
)

MODEL: Entry = ("ours", "model")


@attrs.frozen
class Target:
    """One check: ``model``'s value against a reference value."""

    target: str
    against: str
    model: float
    reference: float
    smaller_is_better: bool
    strict: bool  # must be strictly better (OOMs), or just not worse

    @property
    def holds(self) -> bool:
        if self.smaller_is_better:
            return self.model < self.reference if self.strict else self.model <= self.reference
        return self.model > self.reference if self.strict else self.model >= self.reference


def per_landscape(
    scores: Mapping[ScoreKey, RunScore], entry: Entry, get: Callable[[RunScore], float]
) -> list[float]:
    """The median over seeds of a measure, one value per landscape."""
    by_landscape: dict[int, list[float]] = {}
    for (impl, method, landscape, _), score in scores.items():
        if (impl, method) == entry:
            by_landscape.setdefault(landscape, []).append(get(score))
    return [float(np.median(v)) for _, v in sorted(by_landscape.items())]


def model_targets(
    summaries: Mapping[Entry, MethodSummary],
    scores: Mapping[ScoreKey, RunScore],
    others: Iterable[Entry],
) -> list[Target]:
    """Every check of issue 5 that the run's entries allow (``others``: entries compared)."""
    if MODEL not in summaries:
        return []
    model = summaries[MODEL]
    out: list[Target] = []
    upstream = [summaries["upstream", m] for m in UPSTREAM_METHODS if ("upstream", m) in summaries]
    if upstream:
        best = min(upstream, key=lambda s: s.trials_to[0.99].median)
        out.append(
            Target(
                "median trials to 99% <= half the best original dsat method's",
                f"upstream {best.method} ({best.trials_to[0.99].median:g}) / 2",
                model.trials_to[0.99].median,
                best.trials_to[0.99].median / 2.0,
                smaller_is_better=True,
                strict=False,
            )
        )
    for entry in others:
        if entry == MODEL or entry not in summaries:
            continue
        other = summaries[entry]
        name = f"{entry[0]} {entry[1]}"
        out.append(
            Target("OOM trials, median", name, model.oom_median, other.oom_median, True, True)
        )
        out.append(Target("OOM trials, mean", name, model.oom_mean, other.oom_mean, True, True))
    for binary in (("ours", "binary"), ("upstream", "binary")):
        if binary not in summaries:
            continue
        name = f"{binary[0]} binary"
        for level in REACH_LEVELS:

            def get(s: RunScore, lv: float = level) -> float:
                return float(s.trials_to[lv])

            out.append(_quartile_target(scores, f"trials to {level:.0%}", name, binary, get, True))
        for k in BEST_AFTER:

            def fraction(s: RunScore, k: int = k) -> float:
                return float(s.best_after[k])

            measure = f"best/optimum @{k}"
            out.append(_quartile_target(scores, measure, name, binary, fraction, False))
        out.append(
            _quartile_target(
                scores, "best/optimum at the end", name, binary, lambda s: s.best_final, False
            )  # fmt: skip
        )
    return out


def _quartile_target(
    scores: Mapping[ScoreKey, RunScore],
    measure: str,
    name: str,
    reference: Entry,
    get: Callable[[RunScore], float],
    smaller_is_better: bool,
) -> Target:
    # The bad quartile: the 75th percentile of a count, the 25th of a fraction.
    q = 75 if smaller_is_better else 25
    model = float(np.percentile(per_landscape(scores, MODEL, get), q))
    other = float(np.percentile(per_landscape(scores, reference, get), q))
    return Target(
        f"{measure}, {q}th-percentile landscape", name, model, other, smaller_is_better, False
    )
