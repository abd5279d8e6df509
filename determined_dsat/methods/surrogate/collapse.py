"""Throughput collapses: search trials that trained, but at a fraction of what a smaller
micro-batch reached.

Past some micro-batch a step can slow down by a factor of several rather than by the
5-25 % of an allocator that starts flushing: the allocator thrashes, a CPU's caches
overflow. The throughput surrogate's bends (flush term, hinges) are priced for the mild
case. Fitting a fall by a factor of several anyway bent the model elsewhere: after
micro-batch 25 at 84 samples/s and 82 at 1.4 it expected micro-batch 1 to be twice as
fast as anything measured, and spent a wave of trials there. So the ``model`` search
leaves a collapse out of the throughput fit and bisects instead: at its stage nothing
from the collapsed micro-batch up is tried, and between the largest that trained below
it and the collapse only the geometric midpoint is, until the gap closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

from determined_dsat.methods.surrogate.throughput import log_metric, metric_offset
from determined_dsat.space.knobs import offload_of
from determined_dsat.trials.records import TrialKind, TrialRecord
from determined_dsat.trials.view import TrackerView

COLLAPSE_FRACTION = 1 / 3
"""A search trial below this fraction of the best throughput a smaller micro-batch
reached, at any stage with the same offload, has collapsed. Stages and knob settings
alone move throughput by up to about 2.5x (ZeRO-2 with DeepSpeed's default buckets on
two nodes against ZeRO-3 with tuned ones, in the benchmark families); offload halves
it, so it is compared only with its own kind."""


@attrs.frozen
class Gap:
    """At one stage: the largest micro-batch that trained below a collapse, and the
    smallest that collapsed."""

    trained: int
    collapsed: int

    @property
    def midpoint(self) -> int:
        return int(round(math.sqrt(self.trained * self.collapsed)))


@attrs.frozen
class Collapses:
    """The collapsed trials (request ids) and each stage's gap."""

    ids: frozenset[str]
    gaps: dict[int, Gap]


def _log_throughput(view: TrackerView, record: TrialRecord) -> float | None:
    score = view.score(record)
    y = None if score is None else log_metric(view.metric, score)
    if y is None:
        return None
    spec = record.spec
    offset = metric_offset(view.metric, np.array([float(spec.mbs)]), np.array([float(spec.gas)]))
    return y - float(offset[0])


def find_collapses(view: TrackerView, trained: Sequence[TrialRecord]) -> Collapses:
    """The collapses among ``trained`` (records whose scores are known), and the gaps."""
    points = []
    for record in trained:
        value = _log_throughput(view, record)
        if value is not None:
            points.append((offload_of(record.spec.zero), record.spec.mbs, value, record))
    floor = math.log(COLLAPSE_FRACTION)
    ids: set[str] = set()
    first: dict[int, int] = {}  # stage -> smallest collapsed micro-batch
    for group, mbs, value, record in points:
        smaller = [v for g, m, v, _ in points if g == group and m < mbs]
        if record.spec.kind is TrialKind.SEARCH and smaller and value < max(smaller) + floor:
            ids.add(record.spec.request_id)
            stage = record.spec.stage
            first[stage] = min(first.get(stage, mbs), mbs)
    gaps: dict[int, Gap] = {}
    for stage, collapsed in first.items():
        below = [
            r.spec.mbs
            for _, m, _, r in points
            if r.spec.request_id not in ids and m < collapsed and r.spec.stage == stage
        ] or [m for _, m, _, r in points if r.spec.request_id not in ids and m < collapsed]
        if below:
            gaps[stage] = Gap(max(below), collapsed)
    return Collapses(frozenset(ids), gaps)
