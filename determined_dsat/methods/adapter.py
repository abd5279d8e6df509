"""The bridge from a pure :class:`SearchPolicy` to Determined's ``SearchMethod`` event API.

The adapter owns the tracker, the RNG and the trial budget; every runner (cluster,
local, replay) drives it through the same events a Determined master sends.
"""

from __future__ import annotations

import enum
import logging
import pathlib
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from determined import searcher

from determined_dsat.jsonio import write_json_atomic
from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.confirm import confirm, confirmation_budget, top_configs
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import trial_length
from determined_dsat.space.memory import ModelProfile
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord, TrialResult, TrialSpec
from determined_dsat.trials.tracker import Tracker

logger = logging.getLogger("determined_dsat")

ADAPTER_STATE_VERSION = 1
METHOD_STATE_FILE = "dsat_method_state.json"
OUTCOME_KEY = "dsat_outcome"
_REQUEST_NAMESPACE = uuid.UUID("6c1b3f0e-9a52-4b8e-8f3e-2d6a3c9f7b10")


class Phase(enum.Enum):
    """Where a search is: proposing trials, re-measuring the best, or finishing."""

    SEARCH = "search"
    CONFIRM = "confirm"
    DONE = "done"


_EXIT_OUTCOMES = {
    searcher.ExitedReason.ERRORED: Outcome.ERROR,
    searcher.ExitedReason.INVALID_HP: Outcome.INVALID,
    searcher.ExitedReason.USER_CANCELED: Outcome.CANCELLED,
}


class DSATSearchMethod(searcher.SearchMethod):
    """A DeepSpeed Autotune search: profiling trial first, then the policy's proposals."""

    def __init__(
        self,
        policy: SearchPolicy,
        space: ConfigSpace,
        tracker: Tracker,
        seed: int,
        baseline: bool = False,
        confirm_top: int = 0,
    ) -> None:
        with warnings.catch_warnings():
            # Determined 0.37 deprecates custom searchers; this package is their replacement.
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__()
        self.policy = policy
        self.space = space
        self.tracker = tracker
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.next_seq = 0
        self.stop_message: str | None = None
        self.failed = False
        self._shutdown_sent = False
        self._outcome_hints: dict[str, tuple[Outcome, str]] = {}
        self._durations: dict[str, float] = {}
        self.baseline = baseline
        self.confirm_k = confirmation_budget(tracker.limits.max_trials, confirm_top, baseline)
        self.phase = Phase.SEARCH
        self._baseline_created = False
        self._confirm_targets: list[str] = []
        self._confirm_queue: list[str] = []
        self._search_end: str | None = None

    @property
    def shutdown_sent(self) -> bool:
        """Whether the method has ended the search (a ``Shutdown`` was returned)."""
        return self._shutdown_sent

    # ----- runner-side annotations -----
    def note_outcome(
        self, request_id: str, outcome: Outcome, detail: str = "", duration_s: float | None = None
    ) -> None:
        """Tell the method how a trial really ended, before the master's event arrives.

        Determined only says ``ERRORED``; local and replay runners know whether it was an
        OOM, a crash or a timeout, and that steers the search better.
        """
        self._outcome_hints[request_id] = (outcome, detail)
        if duration_s is not None:
            self._durations[request_id] = duration_s

    def note_duration(self, request_id: str, duration_s: float) -> None:
        self._durations[request_id] = duration_s

    # ----- SearchMethod events -----
    def initial_operations(self, _: searcher.SearcherState) -> list[searcher.Operation]:
        if len(self.tracker):
            return []
        spec = self.space.profile_spec(self._new_request_id())
        self.tracker.add(spec)
        return self._launch_ops(spec, length=1)

    def on_trial_created(
        self, _: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        return []

    def on_validation_completed(
        self,
        _: searcher.SearcherState,
        request_id: uuid.UUID,
        metric: Any,
        train_length: int,
    ) -> list[searcher.Operation]:
        rid = str(request_id)
        if rid not in self.tracker:
            logger.warning("validation for unknown trial %s ignored", rid)
            return []
        metrics = dict(metric) if isinstance(metric, Mapping) else {"value": metric}
        outcome = Outcome.OK
        reported = metrics.pop(OUTCOME_KEY, None)
        if isinstance(reported, str) and reported in {o.value for o in Outcome}:
            outcome = Outcome(reported)
        record = self._finish(rid, TrialResult(outcome, metrics, self._durations.pop(rid, None)))
        if record.spec.kind is TrialKind.PROFILE and outcome is Outcome.OK:
            self._accept_profile(metrics)
        return [searcher.Close(request_id)]

    def on_trial_exited_early(
        self,
        _: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> list[searcher.Operation]:
        rid = str(request_id)
        if rid not in self.tracker:
            return []
        outcome, detail = _EXIT_OUTCOMES[exited_reason], ""
        if exited_reason is searcher.ExitedReason.ERRORED and rid in self._outcome_hints:
            outcome, detail = self._outcome_hints[rid]
        record = self._finish(rid, TrialResult(outcome, {}, self._durations.pop(rid, None), detail))
        if record.spec.kind is TrialKind.PROFILE:
            self._fail(
                "the profiling trial failed"
                + (f" ({outcome.value}: {detail})" if detail else f" ({outcome.value})")
                + "; make sure your config trains with train_micro_batch_size_per_gpu=1"
            )
        elif exited_reason is not searcher.ExitedReason.ERRORED:
            self.stop_message = f"a trial ended as {outcome.value}; stopping the search"
            self.failed = exited_reason is searcher.ExitedReason.INVALID_HP
            return [self._shutdown(cancel=exited_reason is searcher.ExitedReason.USER_CANCELED)]
        return []

    def on_trial_closed(
        self, _: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        rid = str(request_id)
        if rid in self.tracker and not self.tracker[rid].finished:
            self._finish(rid, TrialResult(Outcome.CANCELLED, {}, None, "closed before it reported"))
        return self._next_operations()

    def progress(self, _: searcher.SearcherState) -> float:
        return min(1.0, self.tracker.num_finished / self.tracker.limits.max_trials)

    # ----- decisions -----
    def _next_operations(self) -> list[searcher.Operation]:
        if self._shutdown_sent:
            return []
        if self.stop_message is not None:  # a failure or a cancel: stop now
            return [self._shutdown()] if self.tracker.num_running == 0 else []
        ops = self._baseline_ops()
        if self.phase is Phase.SEARCH:
            ops += self._search_ops()
        if self.phase is Phase.CONFIRM:
            ops += self._confirm_ops()
        if self.phase is Phase.DONE and not ops and self.tracker.num_running == 0:
            self.stop_message = self._final_message()
            return [self._shutdown()]
        return ops

    def _baseline_ops(self) -> list[searcher.Operation]:
        """Measure the user's own ds_config once the model profile is in."""
        if not self.baseline or self._baseline_created or self.tracker.profile is None:
            return []
        if self.tracker.capacity() < 1:
            return []
        self._baseline_created = True
        spec = self.space.baseline_spec(self._new_request_id())
        self.tracker.add(spec)
        return self._launch_ops(spec, trial_length(self.space.end_profile_step))

    def _search_budget_left(self) -> int:
        reserved = self.confirm_k + (1 if self.baseline and not self._baseline_created else 0)
        return self.tracker.limits.max_trials - reserved - self.tracker.num_created

    def _search_ops(self) -> list[searcher.Operation]:
        reason = (
            "every trial of the search budget has run" if self._search_budget_left() <= 0 else None
        )
        reason = reason or self.policy.stop_reason(self.tracker)
        ops: list[searcher.Operation] = []
        if reason is None:
            capacity = min(self.tracker.capacity(), self._search_budget_left())
            if capacity <= 0:
                return ops  # no room right now (other trials run): not the end of the search
            for proposal in self.policy.propose(self.tracker, capacity, self.rng)[:capacity]:
                spec = self._spec_from(proposal)
                self.tracker.add(spec)
                ops.extend(self._launch_ops(spec, trial_length(self.space.end_profile_step)))
            if ops:
                return ops
            reason = "the search space is exhausted"
        if self._running_of(TrialKind.SEARCH):
            return ops  # let running search trials report before choosing the top configs
        self._search_end = reason
        has_candidates = bool(top_configs(self.tracker, 1))
        self.phase = Phase.CONFIRM if self.confirm_k and has_candidates else Phase.DONE
        return ops

    def _confirm_ops(self) -> list[searcher.Operation]:
        if not self._confirm_targets:
            targets = top_configs(self.tracker, self.confirm_k)
            self._confirm_targets = [r.spec.request_id for r in targets]
            self._confirm_queue = list(self._confirm_targets)
        ops: list[searcher.Operation] = []
        while self._confirm_queue and self.tracker.capacity() > 0:
            original = self.tracker[self._confirm_queue.pop(0)].spec
            spec = attrs.evolve(
                original,
                request_id=self._new_request_id(),
                kind=TrialKind.CONFIRM,
                lineage_id=None,
                parent_id=original.request_id,
                seq=self.next_seq,
            )
            self.tracker.add(spec)
            ops.extend(self._launch_ops(spec, trial_length(self.space.end_profile_step)))
        if not self._confirm_queue and not self._running_of(TrialKind.CONFIRM) and not ops:
            winner = confirm(self.tracker, self._confirm_targets)
            if winner is not None:
                self.tracker.set_winner(winner.record.spec.request_id, winner.metrics)
            self.phase = Phase.DONE
        return ops

    def _running_of(self, kind: TrialKind) -> int:
        return sum(1 for rid in self.tracker.running_ids() if self.tracker[rid].spec.kind is kind)

    def _final_message(self) -> str:
        message = self._search_end or "the search ended"
        if self.tracker.winner_confirmed:
            message += f"; the top {len(self._confirm_targets)} configurations were re-measured"
        return message

    def _shutdown(self, cancel: bool = False) -> searcher.Shutdown:
        self._shutdown_sent = True
        failed = self.failed or self.tracker.best() is None
        return searcher.Shutdown(cancel=cancel, failure=failed)

    def _fail(self, message: str) -> None:
        self.failed = True
        self.stop_message = message

    def _finish(self, rid: str, result: TrialResult) -> TrialRecord:
        record = self.tracker.finish(rid, result)
        self._outcome_hints.pop(rid, None)
        if record.spec.kind is TrialKind.SEARCH:
            self.policy.observe(self.tracker, record)
        return record

    def _accept_profile(self, metrics: Mapping[str, Any]) -> None:
        try:
            profile = ModelProfile.from_metrics(metrics)
        except ValueError as exc:
            self._fail(f"the profiling trial reported unusable model info: {exc}")
            return
        self.tracker.set_profile(profile)
        memory = self.space.memory_model(profile)
        estimates = memory.max_mbs_per_stage(self.space.stages)
        logger.info("memory model: approximate largest micro-batch per ZeRO stage %s", estimates)

    def _spec_from(self, proposal: Proposal) -> TrialSpec:
        return TrialSpec(
            request_id=self._new_request_id(),
            kind=TrialKind.SEARCH,
            mbs=proposal.mbs,
            gas=self.space.grid.batch_config(proposal.mbs).gradient_accumulation_steps,
            zero=dict(proposal.zero),
            lineage_id=proposal.lineage_id,
            parent_id=proposal.parent_id,
            bounds=proposal.bounds,
            rung=proposal.rung,
            seq=self.next_seq,
        )

    def _new_request_id(self) -> str:
        self.next_seq += 1
        return str(uuid.uuid5(_REQUEST_NAMESPACE, f"{self.seed}/{self.next_seq}"))

    def _launch_ops(self, spec: TrialSpec, length: int) -> list[searcher.Operation]:
        rid = uuid.UUID(spec.request_id)
        return [
            searcher.Create(request_id=rid, hparams=self.space.hparams(spec), checkpoint=None),
            searcher.ValidateAfter(request_id=rid, length=length),
        ]

    # ----- persistence -----
    def state_dict(self, journaled: int = 0) -> dict[str, Any]:
        """JSON-able state; :meth:`load_state_dict` on a fresh adapter continues identically.

        ``journaled``: how many finished records (in completion order) the caller keeps
        in a journal instead (see :meth:`Tracker.to_json`).
        """
        return {
            "version": ADAPTER_STATE_VERSION,
            "method": self.policy.name,
            "seed": self.seed,
            "next_seq": self.next_seq,
            "rng": _jsonable_rng_state(self.rng),
            "tracker": self.tracker.to_json(journaled),
            "policy": self.policy.state_dict(),
            "stop_message": self.stop_message,
            "failed": self.failed,
            "shutdown_sent": self._shutdown_sent,
            "phase": self.phase.value,
            "baseline_created": self._baseline_created,
            "confirm_targets": list(self._confirm_targets),
            "confirm_queue": list(self._confirm_queue),
            "search_end": self._search_end,
        }

    def load_state_dict(
        self, state: Mapping[str, Any], journal: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        version = state.get("version")
        if version != ADAPTER_STATE_VERSION:
            raise ValueError(f"unsupported search state version {version!r}")
        if state.get("method") != self.policy.name:
            raise ValueError(
                f"the saved search used method {state.get('method')!r}, not {self.policy.name!r}"
            )
        self.seed = int(state["seed"])
        self.next_seq = int(state["next_seq"])
        self.rng.bit_generator.state = state["rng"]
        self.tracker = Tracker.from_json(state["tracker"], journal)
        self.policy.load_state_dict(state["policy"])
        self.stop_message = state.get("stop_message")
        self.failed = bool(state.get("failed", False))
        self._shutdown_sent = bool(state.get("shutdown_sent", False))
        self.phase = Phase(state.get("phase", Phase.SEARCH.value))
        self._baseline_created = bool(state.get("baseline_created", False))
        self._confirm_targets = list(state.get("confirm_targets", []))
        self._confirm_queue = list(state.get("confirm_queue", []))
        self._search_end = state.get("search_end")

    def save_method_state(self, path: pathlib.Path) -> None:
        write_json_atomic(path / METHOD_STATE_FILE, self.state_dict())

    def load_method_state(self, path: pathlib.Path) -> None:
        import json

        self.load_state_dict(json.loads((path / METHOD_STATE_FILE).read_text()))


def _jsonable_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)
