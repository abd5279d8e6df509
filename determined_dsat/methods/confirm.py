"""The end of a search: re-measure the best configurations and pick a confirmed winner.

A single measurement of a short profiling window is noisy, and the best of many noisy
measurements is biased upward (the winner's curse): DeepSpeed's own autotuner once
overstated its winner's throughput by 26 %. So the top ``k`` distinct configurations
run again, and the winner is the one with the best median over all its measurements,
a failed re-run counting as the worst possible result. After a search that stopped
early, only the rivals that may still beat the leader run again (:func:`plausible_rivals`,
judged again once the leader's re-run is in). While the two leaders' medians are within
the measured noise of each other, both run again (budget and time allowing,
at most :data:`MAX_EXTRA_ROUNDS` more times), but only while another round is worth its
trials: its expected gain (:func:`remeasure_value`) per trial must reach the same
``--min-improvement`` that ends the search. Choosing between two configurations whose
true speeds differ by less than that is not worth a trial.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.trials.records import TrialKind, TrialRecord
from determined_dsat.trials.view import TrackerView


def confirmation_budget(max_trials: int, requested: int, baseline: bool) -> int:
    """How many confirmation trials fit: at most ``requested``, and at most a quarter of
    the trials left after the profiling (and baseline) trial, so a small budget still
    searches."""
    left = max_trials - 1 - (1 if baseline else 0)
    return max(0, min(requested, left // 4))


def top_configs(view: TrackerView, k: int, with_baseline: bool = False) -> list[TrialRecord]:
    """The ``k`` best successful search trials, best first (configs never repeat), and
    the baseline among them when ``with_baseline`` (it may be the pick, so one lucky
    measurement of it must not beat re-measured medians)."""
    kinds = {TrialKind.SEARCH, TrialKind.BASELINE} if with_baseline else {TrialKind.SEARCH}
    scored = []
    for record in view.records():
        if record.spec.kind not in kinds:
            continue
        score = view.score(record)
        if score is not None:
            scored.append((-score, record.spec.seq, record))
    return [record for _, _, record in sorted(scored, key=lambda t: (t[0], t[1]))[:k]]


@attrs.frozen
class Confirmed:
    """A re-measured configuration: its search trial, median metrics and run count."""

    record: TrialRecord
    metrics: Mapping[str, Any]
    measurements: int
    score: float


def confirm(view: TrackerView, targets: list[str]) -> Confirmed | None:
    """The target (search trial id) whose measurements have the best median score."""
    best: Confirmed | None = None
    for request_id in targets:
        original = view[request_id]
        runs = [original, *view.confirmations_of(request_id)]
        scores = [_score_or_worst(view, r) for r in runs if r.finished]
        median = statistics.median(scores)
        if best is not None and median <= best.score:
            continue
        best = Confirmed(original, _median_metrics(view, runs, median), len(scores), median)
    return best


def best_searched(view: TrackerView) -> Confirmed | None:
    """The search trial with the best median over its runs, as :func:`confirm` ranks
    them. One measured once competes only when none was re-measured: a single draw is
    the lucky one the confirmation exists to discount."""
    searched = [
        r.spec.request_id
        for r in view.records()
        if r.spec.kind is TrialKind.SEARCH and view.score(r) is not None
    ]
    remeasured = [rid for rid in searched if view.confirmations_of(rid)]
    return confirm(view, remeasured or searched)


def _score_or_worst(view: TrackerView, record: TrialRecord) -> float:
    score = view.score(record)
    return float("-inf") if score is None else score


def _median_metrics(view: TrackerView, runs: list[TrialRecord], median: float) -> dict[str, Any]:
    """The metrics of the run closest to the median score, with how they were confirmed."""
    ok = [r for r in runs if view.score(r) is not None]
    closest = min(ok, key=lambda r: abs(_score_or_worst(view, r) - median)) if ok else runs[0]
    assert closest.result is not None
    metrics = dict(closest.result.metrics)
    name = view.metric.value
    raw = [float(r.result.metrics[name]) for r in ok if r.result is not None]
    if raw:
        metrics[name] = statistics.median(raw)
    metrics["dsat_measurements"] = len(runs)
    return metrics


DEFAULT_NOISE = 0.025
"""Relative sd of one measurement before repeated ones say otherwise (DeepSpeed's profile
of a few steps: 2-3 %)."""
MAX_EXTRA_ROUNDS = 3
REMEASURE_MIN_GAIN = 0.005
"""Expected gain per trial an extra round must reach, for methods without
``--min-improvement`` (``model``'s default: below the noise of one measurement)."""


def measurement_noise(view: TrackerView, targets: list[str]) -> float:
    """The relative sd of one measurement, pooled over the targets' repeated measurements
    (log scale), never below 0.5 %; :data:`DEFAULT_NOISE` before any repeat."""
    squares, count = 0.0, 0
    for request_id in targets:
        logs = [math.log(s) for r in [view[request_id], *view.confirmations_of(request_id)]
                if (s := _positive_score(view, r)) is not None]  # fmt: skip
        if len(logs) >= 2:
            mean = statistics.fmean(logs)
            squares += sum((x - mean) ** 2 for x in logs)
            count += len(logs) - 1
    if count == 0:
        return DEFAULT_NOISE
    return max(math.sqrt(squares / count), 0.005)


PLAUSIBLE_Z = 2.0
"""How many sds of the gap between two single measurements a rival may trail the leader
by and still be re-measured: one trailing by more is truly faster with a chance of about
2 % (a flat prior on the gap), too little to pay for a trial."""


def plausible_rivals(
    view: TrackerView, targets: list[str], rivals: list[TrialRecord]
) -> list[TrialRecord]:
    """The rivals (measured once) that may still beat the targets' best median, as
    :func:`confirm` ranks them: trailing it by at most :data:`PLAUSIBLE_Z` sds of the gap
    between that median and one measurement, at the noise :func:`measurement_noise`
    measures over the targets, never taken below :data:`DEFAULT_NOISE` (a pair or two of
    repeats can look quieter than a landscape is)."""
    lead = confirm(view, targets)  # the pick if confirmation ended now
    median = None if lead is None else _positive(lead.score)
    if lead is None or median is None:
        return list(rivals)  # no leader, or its re-run failed: any rival may win
    noise = max(DEFAULT_NOISE, measurement_noise(view, targets))
    limit = PLAUSIBLE_Z * noise * math.sqrt(1.0 / lead.measurements + 1.0)
    kept = []
    for record in rivals:
        score = _positive_score(view, record)
        if score is None or math.log(median / score) <= limit:
            kept.append(record)
    return kept


@attrs.frozen
class Leaders:
    """The two leading targets: the log ratio of their medians and their run counts."""

    first: str
    second: str
    log_gap: float
    runs: tuple[int, int]


def leaders(view: TrackerView, targets: list[str]) -> Leaders | None:
    """The two targets with the best medians (None with fewer than two measured)."""
    ranked = []
    for request_id in targets:
        runs = [view[request_id], *view.confirmations_of(request_id)]
        scores = [s for r in runs if r.finished and (s := _positive_score(view, r)) is not None]
        if scores:
            ranked.append((statistics.median(scores), len(scores), request_id))
    if len(ranked) < 2:
        return None
    ranked.sort(reverse=True)
    (first, n1, a), (second, n2, b) = ranked[0], ranked[1]
    return Leaders(a, b, math.log(first / second), (n1, n2))


def undecided(view: TrackerView, targets: list[str]) -> list[str]:
    """The two leading targets when their medians are within the noise of each other (so
    another measurement of each could change the winner); empty when the lead is clear."""
    lead = leaders(view, targets)
    if lead is None:
        return []
    n1, n2 = lead.runs
    noise = measurement_noise(view, targets)
    # Two medians of n noisy measurements differ by ~noise * sqrt(1/n1 + 1/n2) by chance.
    within = lead.log_gap < 2.0 * noise * math.sqrt(1.0 / n1 + 1.0 / n2)
    return [lead.first, lead.second] if within else []


def remeasure_value(view: TrackerView, targets: list[str]) -> float:
    """The expected gain, as a fraction of the metric, from measuring the two leaders once
    more each and then picking the better median (0 with fewer than two leaders).

    Today's pick is the first. After one more run of each, the estimate of the log gap
    second - first moves to N(-gap, s^2), where s^2 is how much its variance shrinks:
    noise^2 * ((1/n1 + 1/n2) - (1/(n1+1) + 1/(n2+1))). The pick changes when the new
    estimate is positive, gaining it: E[max(0, N(-gap, s^2))] (a value of information)."""
    lead = leaders(view, targets)
    if lead is None:
        return 0.0
    n1, n2 = lead.runs
    noise = measurement_noise(view, targets)
    shrink = (1.0 / n1 + 1.0 / n2) - (1.0 / (n1 + 1) + 1.0 / (n2 + 1))
    return expected_positive_part(-lead.log_gap, noise * math.sqrt(shrink))


def expected_positive_part(mean: float, sd: float) -> float:
    """E[max(0, X)] for X ~ N(mean, sd^2)."""
    if sd <= 0.0:
        return max(0.0, mean)
    z = mean / sd
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    below = 0.5 * math.erfc(-z / math.sqrt(2.0))
    return sd * density + mean * below


def _positive_score(view: TrackerView, record: TrialRecord) -> float | None:
    """A larger-is-better value that is positive (throughput-like, or 1/seconds)."""
    score = view.score(record)
    return None if score is None else _positive(score)


def _positive(score: float) -> float | None:
    """A larger-is-better score as a positive value (None for 0 or a failure's -inf)."""
    if score == 0.0 or not math.isfinite(score):
        return None
    return score if score > 0 else -1.0 / score
