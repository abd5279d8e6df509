"""Lineages: the successive micro-batch trials of one ZeRO configuration.

``LineageBook`` hands out lineage ids, remembers which ZeRO blocks were already
explored (so no configuration is searched twice) and which lineages are still open.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from determined_dsat.methods import bisect
from determined_dsat.methods.base import Proposal
from determined_dsat.methods.trial_cost import ProposalCost, TimeLimit
from determined_dsat.space.batch import SearchBounds
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.memory import ModelProfile
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.view import TrackerView

_SAMPLE_TRIES = 64


def zero_key(zero: Mapping[str, Any]) -> str:
    return json.dumps(zero, sort_keys=True)


class LineageBook:
    """Lineage ids, explored ZeRO blocks and open lineages, as JSON-able state."""

    def __init__(self) -> None:
        self.counter = 0
        self.used: set[str] = set()
        self.open: list[str] = []
        # The stage of each lineage started, for proposals not yet in the tracker (those of
        # the current ``propose`` call); not state: the tracker has them by the next call.
        self.stage_of: dict[str, int] = {}

    def new_id(self) -> str:
        self.counter += 1
        return f"L{self.counter}"

    def close(self, lineage_id: str) -> None:
        if lineage_id in self.open:
            self.open.remove(lineage_id)

    def forget(self, proposal: Proposal) -> None:
        """Undo a new lineage that will not run (its first trial was held back): its ZeRO
        block may be drawn again."""
        self.close(proposal.lineage_id)
        self.used.discard(zero_key(proposal.zero))
        self.stage_of.pop(proposal.lineage_id, None)

    def idle_open(self, view: TrackerView) -> list[str]:
        """Open lineages whose latest trial has finished."""
        idle = []
        for lid in self.open:
            latest = view.latest_in_lineage(lid)
            if latest is None or latest.finished:
                idle.append(lid)
        return idle

    def sample_zero(
        self,
        space: ConfigSpace,
        stages: Sequence[int],
        rng: np.random.Generator,
        profile: ModelProfile | None = None,
    ) -> dict[str, Any] | None:
        """An unexplored ZeRO block from a random stage of ``stages``; None if none is left."""
        if not stages:
            return None
        for _ in range(_SAMPLE_TRIES):
            stage = int(stages[int(rng.integers(len(stages)))])
            zero = space.sample_zero(stage, rng, profile)
            key = zero_key(zero)
            if key not in self.used:
                self.used.add(key)
                return zero
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter, "used": sorted(self.used), "open": list(self.open)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counter = int(state["counter"])
        self.used = set(state["used"])
        self.open = list(state["open"])


def continue_then_start(
    book: LineageBook,
    view: TrackerView,
    capacity: int,
    next_step: Callable[[str], Proposal | None],
    new_lineage: Callable[[], Proposal | None],
    cost: Callable[[], ProposalCost] | None = None,
    limit: TimeLimit | None = None,
) -> list[Proposal]:
    """Up to ``capacity`` proposals: the next step of each idle open lineage (closing those
    with none left), then new lineages until capacity or ideas run out. When more idle
    lineages wait than there is room for, the cheapest steps by ``cost`` go first. Steps
    past the time ``limit`` wait (their lineage stays open); a new lineage past it is
    forgotten, and no other starts."""
    fits = (lambda _: True) if limit is None else limit.fits
    idle = book.idle_open(view)
    choose = cost is not None and len(idle) > capacity
    proposals: list[Proposal] = []
    for lineage_id in idle:
        if len(proposals) >= capacity and not choose:
            return proposals
        step = next_step(lineage_id)
        if step is None:
            book.close(lineage_id)
        elif fits(step):
            proposals.append(step)
    if cost is not None and len(proposals) > capacity:
        return cost().cheapest(proposals, capacity)
    while len(proposals) < capacity:
        fresh = new_lineage()
        if fresh is None:
            break
        if not fits(fresh):
            book.forget(fresh)
            break
        proposals.append(fresh)
    return proposals


def remaining_bounds(record: TrialRecord, space: ConfigSpace) -> SearchBounds | None:
    """The range a lineage may still try after its latest trial; None when it is done."""
    spec = record.spec
    if spec.bounds is None:
        return None
    return bisect.narrow(spec.bounds, spec.mbs, record.succeeded, space.grid, space.mbs_tolerance)


def bisection_step(
    record: TrialRecord,
    space: ConfigSpace,
    rung: int | None = None,
    view: TrackerView | None = None,
) -> Proposal | None:
    """The next trial of a lineage: by bisection while its range lasts, then (given the
    ``view``) by :func:`refinement_mbs` below the largest micro-batch that fits; None when
    neither is left."""
    bounds = remaining_bounds(record, space)
    if bounds is None:
        mbs = None if view is None else refinement_mbs(view, record, space)
    else:
        mbs = bisect.midpoint(bounds, space.grid)
    if mbs is None:
        return None
    spec = record.spec
    assert spec.lineage_id is not None
    return Proposal(
        zero=spec.zero,
        mbs=mbs,
        lineage_id=spec.lineage_id,
        parent_id=spec.request_id,
        bounds=bounds,  # None for a refinement probe: it lies inside the explored range
        rung=spec.rung if rung is None else rung,
    )


def refinement_mbs(view: TrackerView, record: TrialRecord, space: ConfigSpace) -> int | None:
    """Where to look below the largest micro-batch that fits, once throughput fell.

    Near the memory limit PyTorch's allocator flushes its cache (DeepSpeed warns of it) and
    caches thrash, so the best micro-batch is often below the largest that fits. When a
    lineage's best-scoring micro-batch is not its largest that trained, the optimum lies
    between the best one's tried neighbours: try the middle of the wider gap, until both
    gaps are within ``--mbs-tolerance`` of the best (golden-section search would need more
    trials for the same bracket on these unimodal curves)."""
    lineage_id = record.spec.lineage_id
    if lineage_id is None:
        return None
    finished = [r for r in view.lineage(lineage_id) if r.finished]
    scored = sorted((s, -r.spec.mbs, r.spec.mbs) for r in finished
                    if (s := view.score(r)) is not None)  # fmt: skip
    if len(scored) < 2:
        return None
    best = scored[-1][2]
    largest_ok = max(mbs for _, _, mbs in scored)
    if best == largest_ok:
        return None  # throughput has not fallen: the bisection's answer stands
    tried = {r.spec.mbs for r in view.lineage(lineage_id)}
    below = max((m for m in tried if m < best), default=space.grid.min_mbs - 1)
    above = min(m for m in tried if m > best)
    tolerance = max(space.mbs_tolerance, 0.02) * best
    gaps = [(best - below, below, best), (above - best, best, above)]
    for gap, lo, hi in sorted(gaps, reverse=True):
        if gap <= max(1.0, tolerance):
            continue
        middle = space.grid.snap_down((lo + hi) // 2)
        if middle is not None and lo < middle < hi and middle not in tried:
            return middle
    return None


def start_lineage(
    book: LineageBook,
    space: ConfigSpace,
    view: TrackerView,
    zero: Mapping[str, Any],
    range_factor: float,
    bounds: SearchBounds | None = None,
) -> Proposal:
    """The first trial of a new lineage.

    Once another lineage of the same stage has trained, the new one starts at the
    largest micro-batch known to fit there (throughput grows with micro-batch size, so
    that is where the answer usually is); otherwise at the middle of its range.
    """
    lineage_id = book.new_id()
    book.open.append(lineage_id)
    book.stage_of[lineage_id] = int(zero.get("stage", 0))
    memory = None if view.profile is None else space.memory_model(view.profile)
    stage = int(zero.get("stage", 0))
    evidence = view.memory_evidence(stage)
    start = bounds or space.initial_bounds(memory, zero, range_factor, evidence)
    mbs = _first_probe(start, evidence[0], space) or space.grid.min_mbs
    if bounds is None:
        mbs = spread_first_probe(book, view, stage, lineage_id, mbs, start, space)
    return Proposal(zero=dict(zero), mbs=mbs, lineage_id=lineage_id, bounds=start)


def spread_first_probe(
    book: LineageBook,
    view: TrackerView,
    stage: int,
    lineage_id: str,
    mbs: int,
    bounds: SearchBounds,
    space: ConfigSpace,
) -> int:
    """A new lineage's first micro-batch, moved by powers of :data:`WAVE_STEP` (see
    :func:`_spread`) for each lineage of its stage whose first trial is still out, while
    nothing at the stage has finished."""
    if view.memory_evidence(stage) != (None, None):
        return mbs
    return _spread(mbs, _pending_first_probes(book, view, stage, lineage_id), bounds, space)


WAVE_STEP = 0.7
"""New lineages of a stage started before anything at that stage finished probe the
first one's micro-batch times 0.7, 1/0.7, 0.49, 1/0.49, ... (within their range): a
wave of trials spreads around the middle of the range instead of running out of memory
together, or crowding at micro-batches too small to be fast."""


def _pending_first_probes(book: LineageBook, view: TrackerView, stage: int, new_id: str) -> int:
    """Lineages of ``stage`` whose first trial is still running."""
    count = 0
    for lid in book.open:
        if lid == new_id:
            continue
        size = view.lineage_size(lid)
        if size == 0:  # proposed in this very call
            count += int(book.stage_of.get(lid) == stage)
        elif size == 1:
            first = view.latest_in_lineage(lid)
            if first is not None and not first.finished and first.spec.stage == stage:
                count += 1
    return count


def _spread(mbs: int, rank: int, bounds: SearchBounds, space: ConfigSpace) -> int:
    """The ``rank``-th further probe of a wave: alternately below and above the first
    (x0.7, /0.7, x0.49, /0.49, ...), within the lineage's bounds. The first probe sits at
    the middle of the range, so half the wave probes nearer the estimated limit, where
    throughput is higher, and half further below it, where it surely fits."""
    if rank == 0:
        return mbs
    steps = (rank + 1) // 2
    factor = WAVE_STEP**steps if rank % 2 else WAVE_STEP**-steps
    target = space.grid.snap_down(max(1, min(int(mbs * factor), bounds.hi)))
    return mbs if target is None or target < bounds.lo else target


def _first_probe(bounds: SearchBounds, known_ok: int | None, space: ConfigSpace) -> int | None:
    if known_ok is not None:
        snapped = space.grid.snap_down(min(known_ok, bounds.hi))
        if snapped is not None and snapped >= bounds.lo:
            return snapped
    return bisect.midpoint(bounds, space.grid)
