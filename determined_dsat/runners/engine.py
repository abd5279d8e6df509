"""Plays the Determined master's part for a ``SearchMethod``, with trials run by an executor.

Event order follows the master's custom searcher (determined 0.37,
``master/pkg/searcher/custom_search.go``): ``Create`` yields ``trialCreated``;
``ValidateAfter`` runs the trial; a reported validation yields
``validationCompleted``, after which the method's ``Close`` yields ``trialClosed``;
a trial that fails yields ``trialExitedEarly`` and then ``trialClosed``. Every
handler's operations are applied in order, and ``Progress`` follows each
``trialClosed``, ``trialExitedEarly`` and ``validationCompleted``.
"""

from __future__ import annotations

import collections
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
from determined import searcher

from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.trials.records import Outcome, TrialResult


@runtime_checkable
class NotesOutcomes(Protocol):
    """A ``SearchMethod`` that wants the full result of a trial (outcome, detail, duration)
    before the master's event, which only says ``ERRORED`` (our search methods do)."""

    def note_outcome(self, request_id: str, result: TrialResult) -> None: ...


@runtime_checkable
class KeepsTime(Protocol):
    """A ``SearchMethod`` that wants the search's wall seconds before each event (a time
    budget); a cluster runner measures them itself."""

    def note_time(self, elapsed_s: float) -> None: ...


logger = logging.getLogger("determined_dsat")

ENGINE_STATE_VERSION = 1


@attrs.define
class EngineTrial:
    """What the engine knows of a created trial."""

    request_id: str
    hparams: Mapping[str, Any]
    length: int | None = None
    result: TrialResult | None = None
    closed: bool = False


TrialObserver = Callable[[EngineTrial], None]


class SearchEngine:
    """Drives one ``SearchMethod`` to ``Shutdown`` against a :class:`TrialExecutor`."""

    def __init__(
        self,
        method: searcher.SearchMethod,
        executor: TrialExecutor,
        on_trial_finished: TrialObserver | None = None,
        on_checkpoint: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.method = method
        self.executor = executor
        self.state = searcher.SearcherState()
        self.state.experiment_id = 0
        self.trials: dict[str, EngineTrial] = {}
        self.progress = 0.0
        self.shutdown: searcher.Shutdown | None = None
        self.events_processed = 0
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._on_trial_finished = on_trial_finished
        self._on_checkpoint = on_checkpoint
        self.clock = clock or executor.elapsed_s

    # ----- driving -----
    def start(self) -> None:
        """Ask for the initial operations (a fresh search)."""
        self._dispatch("initialOperations", None)
        self._drain()
        self._checkpoint()

    def resume(self, finished: set[str] | frozenset[str] = frozenset()) -> None:
        """Relaunch trials that were running when the state was saved, except those known
        to have ``finished`` since (their results are fed with :meth:`complete`)."""
        for trial in self.trials.values():
            if trial.request_id in finished:
                continue
            if trial.result is None and trial.length is not None and not trial.closed:
                self.executor.launch(trial.request_id, trial.hparams, trial.length)

    def run(self) -> None:
        """Process completions until the method shuts the search down or nothing is left."""
        while self.shutdown is None:
            if self.executor.num_running == 0:
                logger.warning("no trial is running and the search did not shut down; stopping")
                break
            self.complete(self.executor.next_completion())
        self.executor.cancel_all()

    def complete(self, completion: Completion) -> None:
        """Feed one trial's ending to the method, with everything it triggers."""
        trial = self.trials.get(completion.request_id)
        if trial is None or trial.result is not None:
            return
        trial.result = completion.result
        if isinstance(self.method, KeepsTime):
            self.method.note_time(self.clock())
        if isinstance(self.method, NotesOutcomes):
            self.method.note_outcome(completion.request_id, completion.result)
        if completion.result.outcome is Outcome.OK:
            self._dispatch("validationCompleted", completion)
        else:
            self._dispatch("trialExitedEarly", completion)
            self._dispatch("trialClosed", completion.request_id)
        # The trial's own event first, and its observer before the operations it triggers
        # run: a launch that fails must not lose the line of the trial that just finished.
        kind, payload = self._events.popleft()
        ops = self._handle(kind, payload)
        if self._on_trial_finished is not None:
            self._on_trial_finished(trial)
        self._apply(ops)
        self._drain()
        # Again once the events it triggered have settled: the launches change the
        # running count the progress bar shows, and the trial's close can decide the
        # winner. The observer writes the trial's line only once.
        if self._on_trial_finished is not None:
            self._on_trial_finished(trial)
        self._checkpoint()

    # ----- events and operations -----
    def _dispatch(self, kind: str, payload: Any) -> None:
        self._events.append((kind, payload))

    def _drain(self) -> None:
        while self._events:
            kind, payload = self._events.popleft()
            self._apply(self._handle(kind, payload))

    def _handle(self, kind: str, payload: Any) -> list[searcher.Operation]:
        self.events_processed += 1
        self.state.last_event_id = self.events_processed
        m, s = self.method, self.state
        if kind == "initialOperations":
            return list(m.initial_operations(s))
        if kind == "trialCreated":
            rid = uuid.UUID(payload)
            s.trials_created.add(rid)
            s.trial_progress[rid] = 0.0
            return list(m.on_trial_created(s, rid))
        if kind == "validationCompleted":
            rid = uuid.UUID(payload.request_id)
            s.trial_progress[rid] = 1.0
            ops = list(
                m.on_validation_completed(s, rid, dict(payload.result.metrics), payload.length)
            )
            return ops + [searcher.Progress(m.progress(s))]
        if kind == "trialExitedEarly":
            rid = uuid.UUID(payload.request_id)
            reason = _exit_reason(payload.result.outcome)
            if reason is searcher.ExitedReason.ERRORED:
                s.failures.add(rid)
            elif reason is searcher.ExitedReason.INVALID_HP:
                s.trial_progress.pop(rid, None)
            ops = list(m.on_trial_exited_early(s, rid, reason))
            return ops + [searcher.Progress(m.progress(s))]
        if kind == "trialClosed":
            rid = uuid.UUID(payload)
            s.trials_closed.add(rid)
            if payload in self.trials:
                self.trials[payload].closed = True
            ops = list(m.on_trial_closed(s, rid))
            return ops + [searcher.Progress(m.progress(s))]
        raise ValueError(f"unknown event {kind}")

    def _apply(self, ops: list[searcher.Operation]) -> None:
        for op in ops:
            if isinstance(op, searcher.Create):
                rid = str(op.request_id)
                hparams = op.hparams
                parsed = _json_loads(hparams) if isinstance(hparams, str) else dict(hparams)
                self.trials[rid] = EngineTrial(request_id=rid, hparams=parsed)
                self._dispatch("trialCreated", rid)
            elif isinstance(op, searcher.ValidateAfter):
                rid = str(op.request_id)
                trial = self.trials[rid]
                trial.length = int(op.length)
                self.executor.launch(rid, trial.hparams, trial.length)
            elif isinstance(op, searcher.Close):
                rid = str(op.request_id)
                if rid in self.trials and not self.trials[rid].closed:
                    self._dispatch("trialClosed", rid)
            elif isinstance(op, searcher.Progress):
                self.progress = float(op.progress)
            elif isinstance(op, searcher.Shutdown):
                self.shutdown = op
                self._events.clear()
                return

    def _checkpoint(self) -> None:
        if self._on_checkpoint is not None:
            self._on_checkpoint()

    # ----- persistence -----
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": ENGINE_STATE_VERSION,
            "searcher_state": self.state.to_dict(),
            "events_processed": self.events_processed,
            "progress": self.progress,
            "shutdown": None
            if self.shutdown is None
            else {"cancel": self.shutdown.cancel, "failure": self.shutdown.failure},
            # Ended trials are not needed to resume; leaving them out keeps this small.
            "trials": [
                {
                    "request_id": t.request_id,
                    "hparams": t.hparams,
                    "length": t.length,
                    "result": None,
                    "closed": t.closed,
                }
                for t in self.trials.values()
                if t.result is None and not t.closed
            ],
        }

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        if data.get("version") != ENGINE_STATE_VERSION:
            raise ValueError(f"unsupported engine state version {data.get('version')!r}")
        self.state.from_dict(data["searcher_state"])
        self.state.experiment_id = 0
        self.events_processed = int(data["events_processed"])
        self.progress = float(data["progress"])
        shut = data.get("shutdown")
        self.shutdown = None if shut is None else searcher.Shutdown(**shut)
        self.trials = {}
        for t in data["trials"]:
            result = t.get("result")
            self.trials[t["request_id"]] = EngineTrial(
                request_id=t["request_id"],
                hparams=t["hparams"],
                length=t.get("length"),
                result=None if result is None else TrialResult.from_json(result),
                closed=bool(t.get("closed", False)),
            )


def _exit_reason(outcome: Outcome) -> searcher.ExitedReason:
    if outcome is Outcome.INVALID:
        return searcher.ExitedReason.INVALID_HP
    if outcome is Outcome.CANCELLED:
        return searcher.ExitedReason.USER_CANCELED
    return searcher.ExitedReason.ERRORED


def _json_loads(text: str) -> dict[str, Any]:
    import json

    loaded: dict[str, Any] = json.loads(text)
    return loaded
