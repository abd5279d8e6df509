"""How a whole search ended, as the summary and the full experiment see it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.trials.records import TrialKind, TrialRecord
from determined_dsat.trials.tracker import Tracker


@attrs.frozen
class SearchOutcome:
    """The recommended record (the search's best, or the baseline when nothing searched
    beat it), why the search stopped, whether it failed, every finished record, the
    recommendation's metrics (medians once confirmed), the baseline trial, how many
    measurements the metrics summarise, the ZeRO stages the search was asked to try and
    the search's own best (which the baseline may beat)."""

    best: TrialRecord | None
    message: str
    failed: bool
    records: tuple[TrialRecord, ...]
    best_metrics: Mapping[str, Any] | None = None
    baseline: TrialRecord | None = None
    measurements: int = 1
    stages: tuple[int, ...] = ()
    search_best: TrialRecord | None = None
    search_best_metrics: Mapping[str, Any] | None = None


def best_searched(tracker: Tracker) -> tuple[TrialRecord | None, dict[str, Any] | None]:
    """The best searched configuration and its metrics, never the user's own: the
    confirmed winner when that is a search trial, else the search trial with the best
    median over its runs (its metric replaced by that median). One measured once
    competes only when none was re-measured: a single draw is the lucky one the
    confirmation exists to discount."""
    winner = tracker.best()
    if winner is not None and winner.spec.kind is TrialKind.SEARCH:
        return winner, tracker.best_metrics()
    searched = [r for r in tracker.records() if r.spec.kind is TrialKind.SEARCH]
    remeasured = [r for r in searched if tracker.confirmations_of(r.spec.request_id)]
    ranked: list[tuple[float, TrialRecord]] = []
    for record in remeasured or searched:
        runs = [record, *tracker.confirmations_of(record.spec.request_id)]
        scores = [tracker.score(r) for r in runs if r.finished]
        if tracker.score(record) is None:
            continue
        median = statistics.median(-math.inf if v is None else v for v in scores)
        if math.isfinite(median):
            ranked.append((median, record))
    if not ranked:
        return None, None
    median, record = max(ranked, key=lambda item: (item[0], -item[1].spec.seq))
    assert record.result is not None
    metrics = dict(record.result.metrics)
    metrics[tracker.metric.value] = -median if tracker.metric.smaller_is_better else median
    return record, metrics
