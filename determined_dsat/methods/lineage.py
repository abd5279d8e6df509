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

    def new_id(self) -> str:
        self.counter += 1
        return f"L{self.counter}"

    def close(self, lineage_id: str) -> None:
        if lineage_id in self.open:
            self.open.remove(lineage_id)

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
) -> list[Proposal]:
    """Up to ``capacity`` proposals: the next step of each idle open lineage (closing those
    with none left), then new lineages until capacity or ideas run out."""
    proposals: list[Proposal] = []
    for lineage_id in book.idle_open(view):
        if len(proposals) >= capacity:
            return proposals
        step = next_step(lineage_id)
        if step is None:
            book.close(lineage_id)
        else:
            proposals.append(step)
    while len(proposals) < capacity:
        fresh = new_lineage()
        if fresh is None:
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
    record: TrialRecord, space: ConfigSpace, rung: int | None = None
) -> Proposal | None:
    """The next trial of a lineage by bisection, or None when its range is exhausted."""
    bounds = remaining_bounds(record, space)
    if bounds is None:
        return None
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
        bounds=bounds,
        rung=spec.rung if rung is None else rung,
    )


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
    memory = None if view.profile is None else space.memory_model(view.profile)
    evidence = view.memory_evidence(int(zero.get("stage", 0)))
    start = bounds or space.initial_bounds(memory, zero, range_factor, evidence)
    mbs = _first_probe(start, evidence[0], space) or space.grid.min_mbs
    return Proposal(zero=dict(zero), mbs=mbs, lineage_id=lineage_id, bounds=start)


def _first_probe(bounds: SearchBounds, known_ok: int | None, space: ConfigSpace) -> int | None:
    if known_ok is not None:
        snapped = space.grid.snap_down(min(known_ok, bounds.hi))
        if snapped is not None and snapped >= bounds.lo:
            return snapped
    return bisect.midpoint(bounds, space.grid)
