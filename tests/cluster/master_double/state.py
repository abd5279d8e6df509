"""The master double's state and its custom-searcher semantics (callers hold ``_cond``).

``MasterState`` holds every experiment, trial, checkpoint and request the double knows
and applies the searcher protocol described in the package docstring; ``MasterDouble``
(``server.py``) serves it over HTTP.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .records import (
    EXITED_REASONS,
    EXITS,
    STOPPING_TO_TERMINAL,
    TERMINAL_STATES,
    CheckpointRecord,
    Delayed,
    Errored,
    ExperimentRecord,
    FaultRule,
    InvalidHP,
    Live,
    RouteHit,
    RunnerTask,
    Simulator,
    TrialRecord,
    UserCanceled,
    default_simulate,
    operation_kind,
)
from .shapes import runner_config
from .wire import HttpError, HTTPServer, Request, now


class MasterState:
    """Everything the double knows; see ``MasterDouble`` for the arguments."""

    def __init__(
        self,
        simulate: Simulator | None = None,
        *,
        long_poll_s: float = 0.05,
        report_progress: bool = False,
        stopping_polls: int = 1,
        password: str | None = None,
        config_validator: Callable[[dict[str, Any]], Sequence[str]] | None = None,
        checkpoint_storage: Mapping[str, Any] | None = None,
    ) -> None:
        self._simulate = simulate or default_simulate
        self._long_poll_s = long_poll_s
        self._report_progress = report_progress
        self._stopping_polls = stopping_polls
        self._password = password
        self._config_validator = config_validator
        self._checkpoint_storage = dict(checkpoint_storage or runner_config()["checkpoint_storage"])
        self._cond = threading.Condition()
        self._closing = False
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._experiments: dict[int, ExperimentRecord] = {}
        self._trials_by_id: dict[int, TrialRecord] = {}
        self._task_tokens: dict[str, RunnerTask] = {}
        self._checkpoints: list[CheckpointRecord] = []
        self._hits: list[RouteHit] = []
        self._faults: list[FaultRule] = []
        self._preempted: set[str] = set()
        self._trial_reports: list[tuple[int, str, Any]] = []
        self._next_trial_id = 1
        self._logins = 0

    def _experiment_for(self, request: Request) -> ExperimentRecord:
        experiment_id = int(request.params["id"])
        exp = self._experiments.get(experiment_id)
        if exp is None:
            raise HttpError(404, f"experiment not found: {experiment_id}")
        return exp

    def _new_experiment(
        self,
        config: dict[str, Any],
        config_text: str,
        files: dict[str, bytes],
        *,
        project_id: int,
        active: bool,
    ) -> ExperimentRecord:
        searcher = config.get("searcher") or {}
        exp = ExperimentRecord(
            id=len(self._experiments) + 1,
            config=config,
            config_text=config_text,
            model_files=files,
            project_id=project_id,
            state="ACTIVE" if active else "PAUSED",
            start_time=now(),
            custom=isinstance(searcher, dict) and searcher.get("name") == "custom",
        )
        self._experiments[exp.id] = exp
        if exp.custom:
            self._enqueue(exp, "initialOperations", {"placeholder": 0})
        return exp

    def _new_trial(
        self, exp: ExperimentRecord, request_id: str, hparams: dict[str, Any]
    ) -> TrialRecord:
        task_id = f"{exp.id}.{request_id}"
        trial = TrialRecord(
            trial_id=self._next_trial_id,
            experiment_id=exp.id,
            request_id=request_id,
            hparams=hparams,
            task_id=task_id,
            allocation_id=f"{task_id}.1",
        )
        self._next_trial_id += 1
        exp.trials[request_id] = trial
        self._trials_by_id[trial.trial_id] = trial
        return trial

    def _enqueue(self, exp: ExperimentRecord, kind: str, payload: dict[str, Any]) -> None:
        exp.event_count += 1
        event = {"id": exp.event_count, kind: payload}
        exp.events_emitted.append(event)
        exp.queue.append(copy.deepcopy(event))
        self._cond.notify_all()

    def _begin_stop(self, exp: ExperimentRecord, stopping_state: str) -> None:
        if exp.state in TERMINAL_STATES or exp.state in STOPPING_TO_TERMINAL:
            return
        exp.state = stopping_state
        running = any(trial.state == "ACTIVE" for trial in exp.trials.values())
        if running and self._stopping_polls > 0:
            exp.stopping_polls_left = self._stopping_polls
        else:
            self._finish_stop(exp)
        self._cond.notify_all()

    def _finish_stop(self, exp: ExperimentRecord) -> None:
        terminal = STOPPING_TO_TERMINAL[exp.state]
        for trial in exp.trials.values():
            if trial.state == "ACTIVE":
                trial.state = terminal
                trial.pending_length = None
                trial.pending_result = None
        exp.state = terminal
        self._cond.notify_all()

    def _observe_stopping(self, exp: ExperimentRecord) -> None:
        """One poll of a stopping experiment: count down, then make it terminal."""
        if exp.state not in STOPPING_TO_TERMINAL:
            return
        if exp.stopping_polls_left > 0:
            exp.stopping_polls_left -= 1
        else:
            self._finish_stop(exp)

    def _advance(self, exp: ExperimentRecord) -> None:
        """Let simulated time pass: pending ``ValidateAfter``s progress, closed trials exit."""
        for trial in exp.trials.values():
            if trial.state != "ACTIVE":
                continue
            if trial.pending_length is not None:
                if trial.live:
                    continue  # its process completes the operation over HTTP
                trial.polls_left -= 1
                if trial.polls_left > 0:
                    continue
                if not self._complete(exp, trial):
                    continue
            if trial.close_requested and trial.pending_length is None:
                if trial.running:
                    # The master asks a running trial to stop (a preemption signal) and
                    # closes it once its container has exited.
                    self._preempted.add(trial.allocation_id)
                    self._cond.notify_all()
                    continue
                trial.state = "COMPLETED"
                self._enqueue(exp, "trialClosed", {"requestId": trial.request_id})

    def _complete(self, exp: ExperimentRecord, trial: TrialRecord) -> bool:
        """Finish the pending operation; False when the trial (or experiment) is done."""
        length, result = trial.pending_length, trial.pending_result
        assert length is not None
        trial.pending_length, trial.pending_result = None, None
        if isinstance(result, (Errored, InvalidHP, UserCanceled)):
            reason, state = EXITS[type(result)]
            self._exit_early(exp, trial, reason, result.message)
            self._close_exited(exp, trial, state)
            return False
        if length in trial.completed_lengths:
            exp.anomalies.append(
                f"ValidateAfter({trial.request_id}, {length}) completed twice: the master"
                " fails the experiment ('operation ... was already completed')"
            )
            self._begin_stop(exp, "STOPPING_ERROR")
            return False
        if self._report_progress and not trial.live:
            progress = {"requestId": trial.request_id, "partialUnits": float(length)}
            self._enqueue(exp, "trialProgress", progress)
        metric = json.loads(json.dumps(result))
        trial.validations.append((length, metric))
        payload = {
            "requestId": trial.request_id,
            "metric": metric,
            "validateAfterLength": str(length),
        }
        self._enqueue(exp, "validationCompleted", payload)
        return True

    def _exit_early(
        self, exp: ExperimentRecord, trial: TrialRecord, reason: str, message: str
    ) -> None:
        """Queue ``trialExitedEarly`` (``reason``: ERRORED, INVALID_HP or USER_CANCELED)."""
        trial.exited_reason, trial.exit_message = reason, message
        payload = {"requestId": trial.request_id, "exitedReason": EXITED_REASONS[reason]}
        self._enqueue(exp, "trialExitedEarly", payload)

    def _close_exited(self, exp: ExperimentRecord, trial: TrialRecord, state: str) -> None:
        """The trial that exited early is gone: ``state`` and ``trialClosed``."""
        trial.state = state
        trial.pending_length, trial.pending_result = None, None
        self._enqueue(exp, "trialClosed", {"requestId": trial.request_id})

    def _apply(self, exp: ExperimentRecord, operations: list[dict[str, Any]]) -> bool:
        """Apply one post's operations; False when the experiment is stopping (ignored)."""
        if exp.state in STOPPING_TO_TERMINAL:
            return False
        for op in operations:
            kind = operation_kind(op)
            if kind == "Create":
                self._apply_create(exp, op["createTrial"])
            elif kind == "ValidateAfter":
                self._apply_validate_after(exp, op["trialOperation"]["validateAfter"])
            elif kind == "Close":
                trial = self._open_trial(exp, op["closeTrial"].get("requestId"), "Close")
                if trial is not None:
                    trial.close_requested = True
            elif kind == "Progress":
                exp.progress = float(op["setSearcherProgress"].get("progress") or 0.0)
            elif kind == "Shutdown":
                shutdown = op["shutDown"]
                if shutdown.get("failure"):
                    self._begin_stop(exp, "STOPPING_ERROR")
                elif shutdown.get("cancel"):
                    self._begin_stop(exp, "STOPPING_CANCELED")
                else:
                    self._begin_stop(exp, "STOPPING_COMPLETED")
            else:
                exp.anomalies.append(f"unimplemented operation {op!r}")
        return True

    def _apply_create(self, exp: ExperimentRecord, create: dict[str, Any]) -> None:
        request_id = str(create.get("requestId") or "")
        exp.create_request_ids.append(request_id)
        if request_id in exp.trials:
            exp.anomalies.append(f"Create({request_id}): trial already exists; ignored")
            return
        try:
            hparams = json.loads(create.get("hyperparams") or "{}")
        except json.JSONDecodeError:
            exp.anomalies.append(f"Create({request_id}): hyperparams are not JSON; ignored")
            return
        trial = self._new_trial(exp, request_id, hparams)
        if exp.state in STOPPING_TO_TERMINAL or exp.state in TERMINAL_STATES:
            trial.state = STOPPING_TO_TERMINAL.get(exp.state, exp.state)
        self._enqueue(exp, "trialCreated", {"requestId": request_id})

    def _apply_validate_after(self, exp: ExperimentRecord, validate: dict[str, Any]) -> None:
        trial = self._open_trial(exp, validate.get("requestId"), "ValidateAfter")
        if trial is None:
            return
        length = int(validate.get("length") or 0)
        try:
            result = self._simulate(copy.deepcopy(trial.hparams), length)
        except Exception as e:  # a broken simulator is a trial error, visible in the record
            result = Errored(f"simulate raised {e!r}")
        polls = 1
        while isinstance(result, Delayed):
            polls = max(polls, result.polls)
            result = result.result
        trial.live = trial.live or isinstance(result, Live)
        trial.pending_length, trial.pending_result, trial.polls_left = length, result, polls

    def _open_trial(self, exp: ExperimentRecord, request_id: Any, what: str) -> TrialRecord | None:
        trial = exp.trials.get(str(request_id))
        if trial is None:
            exp.anomalies.append(f"{what}({request_id}): no such trial; ignored")
            return None
        if trial.state != "ACTIVE":
            exp.anomalies.append(f"{what}({request_id}): trial is {trial.state}; ignored")
            return None
        return trial
