"""Every trial of a search, its budgets, and the best results so far.

All updates are O(1) per event (bests and counters are kept incrementally), so a
search's per-event cost stays flat as trials accumulate.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from determined_dsat.space.memory import ModelProfile
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord, TrialResult, TrialSpec

STATE_VERSION = 1


@attrs.frozen
class Limits:
    """Budgets a search never exceeds. ``max_trials`` counts the profiling trial."""

    max_trials: int
    max_concurrent_trials: int
    slots_per_trial: int
    max_slots: int | None = None
    time_budget_s: float | None = None  # wall seconds of the whole search (--time-budget)

    @property
    def concurrent_cap(self) -> int:
        """Trials that may run at once, from both the trial and the slot limits."""
        cap = self.max_concurrent_trials
        if self.max_slots is not None:
            cap = min(cap, self.max_slots // self.slots_per_trial)
        return cap

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Tracker:
    """The search's trial records. Policies read it (as a ``TrackerView``); only the search
    driver writes it."""

    def __init__(self, metric: Metric, limits: Limits, baseline_may_win: bool = True) -> None:
        self.metric = metric
        self.limits = limits
        # False when the user's own batch breaks the search's constraints (--train-batch-size,
        # --divisible-by, --max-mbs): then it is measured for comparison only.
        self.baseline_may_win = baseline_may_win
        self.profile: ModelProfile | None = None
        self._records: dict[str, TrialRecord] = {}
        self._running: dict[str, None] = {}
        self._lineages: dict[str, list[str]] = {}
        self._finished_order: list[str] = []
        self._best_id: str | None = None
        self._best_by_stage: dict[int, str] = {}
        self._max_ok_mbs_by_stage: dict[int, int] = {}
        self._oom_mbs_by_stage: dict[int, list[int]] = {}
        self._trials_since_best = 0
        self._scored_search = 0
        self.elapsed_s = 0.0  # the search's wall seconds so far, as the runner measures them
        # Seconds of the time budget kept for the trials after the search (confirmation);
        # set by the search phase before each proposal, so not state.
        self.kept_for_later_s = 0.0
        self._profile_id: str | None = None
        self._baseline_id: str | None = None
        self._confirmations: dict[str, list[str]] = {}
        self._winner: tuple[str, dict[str, Any]] | None = None

    # ----- writes (the driver only) -----
    def add(self, spec: TrialSpec) -> None:
        """Register a created trial as running."""
        if spec.request_id in self._records:
            raise KeyError(f"trial {spec.request_id} is already tracked")
        self._records[spec.request_id] = TrialRecord(spec=spec)
        self._running[spec.request_id] = None
        if spec.kind is TrialKind.PROFILE:
            self._profile_id = spec.request_id
        elif spec.kind is TrialKind.BASELINE:
            self._baseline_id = spec.request_id
        elif spec.kind is TrialKind.CONFIRM and spec.parent_id is not None:
            self._confirmations.setdefault(spec.parent_id, []).append(spec.request_id)
        if spec.lineage_id is not None:
            self._lineages.setdefault(spec.lineage_id, []).append(spec.request_id)

    def finish(self, request_id: str, result: TrialResult) -> TrialRecord:
        """Attach a result to a running trial and update the bests."""
        record = self._records[request_id]
        if record.finished:
            return record
        record = attrs.evolve(record, result=result, finished_seq=len(self._finished_order) + 1)
        self._records[request_id] = record
        self._running.pop(request_id, None)
        self._finished_order.append(request_id)
        if record.spec.kind is TrialKind.SEARCH:
            self._update_bests(record)
        return record

    def set_profile(self, profile: ModelProfile) -> None:
        self.profile = profile

    def _update_bests(self, record: TrialRecord) -> None:
        assert record.result is not None
        if record.result.outcome is Outcome.OOM:
            bisect.insort(self._oom_mbs_by_stage.setdefault(record.spec.stage, []), record.spec.mbs)
        score = self.score(record)
        if score is None:
            if self._best_id is not None:
                self._trials_since_best += 1
            return
        self._scored_search += 1
        stage = record.spec.stage
        self._max_ok_mbs_by_stage[stage] = max(
            self._max_ok_mbs_by_stage.get(stage, 0), record.spec.mbs
        )
        stage_best = self._best_by_stage.get(stage)
        if stage_best is None or score > self._score_of_id(stage_best):
            self._best_by_stage[stage] = record.spec.request_id
        if self._best_id is None or score > self._score_of_id(self._best_id):
            self._best_id = record.spec.request_id
            self._trials_since_best = 0
        else:
            self._trials_since_best += 1

    # ----- reads -----
    def score(self, record: TrialRecord) -> float | None:
        """Larger-is-better score of a successful trial, None otherwise."""
        if record.result is None or not record.result.outcome.succeeded:
            return None
        return self.metric.score_of(record.result.metrics)

    def _score_of_id(self, request_id: str) -> float:
        score = self.score(self._records[request_id])
        assert score is not None
        return score

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._records

    def __getitem__(self, request_id: str) -> TrialRecord:
        return self._records[request_id]

    def records(self) -> Iterator[TrialRecord]:
        """All records in creation order."""
        return iter(self._records.values())

    def finished_records(self) -> list[TrialRecord]:
        """Finished records in completion order."""
        return [self._records[rid] for rid in self._finished_order]

    @property
    def profile_record(self) -> TrialRecord | None:
        return None if self._profile_id is None else self._records[self._profile_id]

    @property
    def num_created(self) -> int:
        return len(self._records)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_finished(self) -> int:
        return len(self._finished_order)

    def running_ids(self) -> list[str]:
        return list(self._running)

    def is_running(self, request_id: str) -> bool:
        return request_id in self._running

    def lineage(self, lineage_id: str) -> list[TrialRecord]:
        """The trials of a lineage, oldest first."""
        return [self._records[rid] for rid in self._lineages.get(lineage_id, [])]

    def lineage_size(self, lineage_id: str) -> int:
        return len(self._lineages.get(lineage_id, []))

    def latest_in_lineage(self, lineage_id: str) -> TrialRecord | None:
        ids = self._lineages.get(lineage_id)
        return self._records[ids[-1]] if ids else None

    def best(self) -> TrialRecord | None:
        """The confirmed winner once there is one, else the best single search trial."""
        if self._winner is not None:
            return self._records[self._winner[0]]
        return None if self._best_id is None else self._records[self._best_id]

    def best_metrics(self) -> dict[str, Any] | None:
        """The metrics to report for :meth:`best` (a confirmed winner's are medians)."""
        if self._winner is not None:
            return dict(self._winner[1])
        best = self.best()
        return None if best is None or best.result is None else dict(best.result.metrics)

    def recommended(self) -> TrialRecord | None:
        """The configuration to train with: the search's best (its confirmed winner once
        there is one), unless the user's own ds_config (the baseline trial) trained and
        scored higher, or was the only one that trained, and keeps the search's batch
        constraints (:attr:`baseline_may_win`)."""
        best, baseline = self.best(), self.baseline_record
        if not self.baseline_may_win:
            return best
        base_score = None if baseline is None else self._median_score(baseline)
        if base_score is None:
            return best
        best_metrics = self.best_metrics()
        best_score = None if best_metrics is None else self.metric.score_of(best_metrics)
        return baseline if best_score is None or base_score > best_score else best

    def _median_score(self, record: TrialRecord) -> float | None:
        """The median score of a trial and its re-measurements (a failed run scores
        worst); None when the trial itself did not train."""
        if self.score(record) is None:
            return None
        runs = [record, *self.confirmations_of(record.spec.request_id)]
        scores = [self.score(r) for r in runs if r.finished]
        return statistics.median(float("-inf") if v is None else v for v in scores)

    def recommended_metrics(self) -> dict[str, Any] | None:
        """The metrics to report for :meth:`recommended`."""
        pick = self.recommended()
        if pick is None or pick.spec.kind is not TrialKind.BASELINE:
            return self.best_metrics()
        return None if pick.result is None else dict(pick.result.metrics)

    def set_winner(self, request_id: str, metrics: Mapping[str, Any]) -> None:
        """Record the confirmed winner (a search trial) and its median metrics."""
        self._winner = (request_id, dict(metrics))

    @property
    def winner_confirmed(self) -> bool:
        return self._winner is not None

    @property
    def baseline_record(self) -> TrialRecord | None:
        return None if self._baseline_id is None else self._records[self._baseline_id]

    def confirmations_of(self, request_id: str) -> list[TrialRecord]:
        """Re-measurements of a search trial, oldest first."""
        return [self._records[rid] for rid in self._confirmations.get(request_id, [])]

    def best_score(self) -> float | None:
        return None if self._best_id is None else self._score_of_id(self._best_id)

    def best_for_stage(self, stage: int) -> TrialRecord | None:
        rid = self._best_by_stage.get(stage)
        return None if rid is None else self._records[rid]

    def best_by_stage(self) -> dict[int, TrialRecord]:
        return {stage: self._records[rid] for stage, rid in sorted(self._best_by_stage.items())}

    def successful_stages(self) -> set[int]:
        return set(self._max_ok_mbs_by_stage)

    def max_successful_mbs(self, stage: int) -> int | None:
        return self._max_ok_mbs_by_stage.get(stage)

    def memory_evidence(self, stage: int) -> tuple[int | None, int | None]:
        """(largest micro-batch that trained, smallest above it that ran out of memory) at a
        stage; without a success, the smallest OOM.

        Knobs (bucket sizes) move memory use, so an OOM below the largest success is
        another configuration's limit and says nothing about the frontier. Only OOMs count
        as ceilings: a crash says nothing about memory.
        """
        max_ok = self._max_ok_mbs_by_stage.get(stage)
        ooms = self._oom_mbs_by_stage.get(stage, [])
        i = 0 if max_ok is None else bisect.bisect_right(ooms, max_ok)
        return max_ok, (ooms[i] if i < len(ooms) else None)

    def note_time(self, elapsed_s: float) -> None:
        """The search's wall seconds so far (the runner's clock; never goes back)."""
        self.elapsed_s = max(self.elapsed_s, float(elapsed_s))

    @property
    def time_left_s(self) -> float | None:
        """Seconds left of ``--time-budget``; None without one."""
        budget = self.limits.time_budget_s
        return None if budget is None else budget - self.elapsed_s

    @property
    def trial_allowance_s(self) -> float | None:
        """The most wall seconds a search trial started now may take: the time budget left,
        less what is kept for the trials after the search; None without a budget."""
        left = self.time_left_s
        return None if left is None else left - self.kept_for_later_s

    def typical_duration_s(self) -> float | None:
        """The median wall seconds of the finished trials that trained (the profiling trial
        too while nothing else has), or None before any finished."""
        trained = [r.result.duration_s for r in self.finished_records()
                   if r.result is not None and r.result.duration_s is not None
                   and r.succeeded and r.spec.kind is not TrialKind.PROFILE]  # fmt: skip
        if not trained:
            profile = self.profile_record
            if profile is None or profile.result is None:
                return None
            return profile.result.duration_s
        trained.sort()
        return trained[len(trained) // 2]

    @property
    def num_scored_search(self) -> int:
        """Search trials that trained and reported the metric."""
        return self._scored_search

    @property
    def trials_since_best(self) -> int:
        return self._trials_since_best

    def capacity(self, reserve: int = 0) -> int:
        """How many more trials may be created right now without breaking a limit, keeping
        ``reserve`` trials of the budget for later (the one place that works this out)."""
        by_concurrency = self.limits.concurrent_cap - self.num_running
        by_budget = self.limits.max_trials - reserve - self.num_created
        return max(0, min(by_concurrency, by_budget))

    @property
    def budget_spent(self) -> bool:
        return self.num_created >= self.limits.max_trials

    def running_of(self, kind: TrialKind) -> int:
        """How many trials of ``kind`` are running."""
        return sum(1 for rid in self._running if self._records[rid].spec.kind is kind)

    # ----- persistence -----
    def finished_since(self, count: int) -> list[TrialRecord]:
        """Records that finished after the first ``count``, in completion order."""
        return [self._records[rid] for rid in self._finished_order[count:]]

    def to_json(self, journaled: int = 0) -> dict[str, Any]:
        """JSON state. The first ``journaled`` finished records are left out: the caller
        keeps them in an append-only journal and passes them back to :meth:`from_json`."""
        skipped = set(self._finished_order[:journaled])
        return {
            "version": STATE_VERSION,
            "metric": self.metric.value,
            "limits": self.limits.to_json(),
            "baseline_may_win": self.baseline_may_win,
            "elapsed_s": self.elapsed_s,
            "profile": None if self.profile is None else self.profile.to_json(),
            "journaled": journaled,
            "winner": None if self._winner is None else list(self._winner),
            "records": [r.to_json() for rid, r in self._records.items() if rid not in skipped],
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], journal: Sequence[Mapping[str, Any]] = ()
    ) -> Tracker:
        """Rebuild a tracker; bests and indexes are recomputed by replaying completions."""
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"unsupported tracker state version {version!r}")
        journaled = int(data.get("journaled", 0))
        if len(journal) < journaled:
            raise ValueError(f"the state needs {journaled} journaled trials, found {len(journal)}")
        tracker = cls(
            Metric.parse(data["metric"]),
            Limits(**data["limits"]),
            baseline_may_win=bool(data.get("baseline_may_win", True)),
        )
        tracker.elapsed_s = float(data.get("elapsed_s", 0.0))
        if data.get("profile") is not None:
            tracker.profile = ModelProfile.from_metrics(data["profile"])
        rows = [*journal[:journaled], *data["records"]]
        records = sorted((TrialRecord.from_json(r) for r in rows), key=lambda r: r.spec.seq)
        for record in records:
            tracker.add(record.spec)
        finished = sorted((r for r in records if r.finished), key=lambda r: r.finished_seq or 0)
        for record in finished:
            assert record.result is not None
            tracker.finish(record.spec.request_id, record.result)
        winner = data.get("winner")
        if winner is not None:
            tracker.set_winner(str(winner[0]), winner[1])
        return tracker
