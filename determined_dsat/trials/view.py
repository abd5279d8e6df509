"""The read-only view of a search's trials that search policies decide from.

:class:`~determined_dsat.trials.tracker.Tracker` implements it; policies are typed
against this protocol, so one that tried to write to the tracker would not type-check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from determined_dsat.space.memory import ModelProfile
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import TrialRecord


class TrackerView(Protocol):
    """What a policy may read: records, lineages, bests and memory evidence."""

    @property
    def metric(self) -> Metric: ...

    @property
    def profile(self) -> ModelProfile | None: ...

    @property
    def profile_record(self) -> TrialRecord | None:
        """The profiling trial (None before it was created)."""
        ...

    @property
    def num_created(self) -> int: ...

    @property
    def num_finished(self) -> int: ...

    @property
    def trials_since_best(self) -> int: ...

    @property
    def time_left_s(self) -> float | None:
        """Seconds left of the time budget; None without one."""
        ...

    @property
    def trial_allowance_s(self) -> float | None:
        """The most wall seconds a search trial started now may take without overrunning
        the time budget (what the confirmation needs kept back); None without a budget.
        Policies propose only trials they expect to end within it."""
        ...

    def typical_duration_s(self) -> float | None:
        """The median wall seconds of the finished trials that trained."""
        ...

    def __getitem__(self, request_id: str) -> TrialRecord: ...

    def records(self) -> Iterator[TrialRecord]:
        """All records in creation order."""
        ...

    def score(self, record: TrialRecord) -> float | None:
        """Larger-is-better score of a successful trial, None otherwise."""
        ...

    def is_running(self, request_id: str) -> bool: ...

    def lineage(self, lineage_id: str) -> list[TrialRecord]: ...

    def lineage_size(self, lineage_id: str) -> int: ...

    def latest_in_lineage(self, lineage_id: str) -> TrialRecord | None: ...

    def best(self) -> TrialRecord | None: ...

    def best_for_stage(self, stage: int) -> TrialRecord | None: ...

    def confirmations_of(self, request_id: str) -> list[TrialRecord]: ...

    def successful_stages(self) -> set[int]: ...

    def max_successful_mbs(self, stage: int) -> int | None: ...

    def memory_evidence(self, stage: int) -> tuple[int | None, int | None]:
        """(largest micro-batch that trained, smallest above it that ran out of memory)."""
        ...
