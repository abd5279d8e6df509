"""Live trials: real trial processes that talk to the double over the trial-side API.

A trial whose ``ValidateAfter`` the simulator answers with ``Live()`` is not simulated: a
test starts its container (``container.py``, or in-process with ``enter_cluster_task``)
as the task ``trial_task()`` describes, and the trial completes the operation the way a
Determined 0.37 trial does (``determined.core._searcher``):

- ``GET /api/v1/trials/{id}/searcher/operation`` answers the trial's current
  ``ValidateAfter`` and whether it is completed;
- ``POST /api/v1/trials/{id}/searcher/completed_operation`` (``{"op": {"length": N},
  "searcherMetric": ...}``) completes it: ``validationCompleted`` is queued at once, with
  the metric, as the master's ``TrialCompleteOperation`` does. Completing another length
  than the pending one, or completing twice, is refused with HTTP 500;
- ``POST /api/v1/trials/{id}/progress`` (``op.report_progress``) queues ``trialProgress``
  (``partialUnits``); a raw progress (``is_raw``, ``train.report_progress``) does not;
- ``POST /api/v1/trials/{id}/early_exit`` queues ``trialExitedEarly`` with the reason sent.

The agent's side is a call, not a route: ``trial_started`` and ``trial_exited`` say when the
trial's container runs and how it ended. A trial that exits non-zero without having
reported an early exit exits early as ERRORED (``trialExitedEarly``, then ``trialClosed``):
restarts are not simulated, as with ``max_restarts: 0``. One that exits 0 with its
operation still pending is an anomaly (the master would schedule it again). A ``Close``
of a running trial raises its preemption signal; ``trialClosed`` follows its exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .records import EXITED_REASONS, EXITS, InvalidHP, RunnerTask, TrialRecord, UserCanceled
from .shapes import trial_config
from .state import MasterState
from .wire import HttpError

_REASON_BY_WIRE = {wire: name for name, wire in EXITED_REASONS.items()}
# Final trial state after an early exit the trial reported itself.
_STATE_AFTER_REPORTED_EXIT = {
    "INVALID_HP": EXITS[InvalidHP][1],
    "USER_CANCELED": EXITS[UserCanceled][1],
}


class LiveTrialState(MasterState):
    """The trial-side searcher semantics of the double (see the module docstring)."""

    # -- the agent's side (called by tests) --

    def trial_task(self, trial_id: int) -> RunnerTask:
        """The task a trial's container runs as: its ids, session token, hyperparameters and
        its experiment's config as the master hands it to a trial (defaults filled in)."""
        with self._cond:
            trial = self._trials_by_id[trial_id]
            exp = self._experiments[trial.experiment_id]
            token = f"master-double-task-token-{trial.trial_id}"
            task = RunnerTask(
                exp.id,
                trial.trial_id,
                trial.task_id,
                trial.allocation_id,
                token,
                trial_config(exp.config, self._checkpoint_storage),
                dict(trial.hparams),
            )
            self._task_tokens[token] = task
            return task

    def trial_started(self, trial_id: int) -> None:
        """The trial's container started (a ``Close`` now waits for it to exit)."""
        with self._cond:
            self._trials_by_id[trial_id].running = True

    def trial_exited(self, trial_id: int, exit_code: int) -> None:
        """The trial's container exited with ``exit_code``; see the module docstring."""
        with self._cond:
            trial = self._trials_by_id[trial_id]
            exp = self._experiments[trial.experiment_id]
            trial.running = False
            trial.exit_codes.append(exit_code)
            self._preempted.discard(trial.allocation_id)
            if trial.state != "ACTIVE":
                return
            if trial.exited_reason is not None:
                state = _STATE_AFTER_REPORTED_EXIT.get(trial.exited_reason, "ERROR")
                self._close_exited(exp, trial, state)
            elif exit_code != 0:
                self._exit_early(exp, trial, "ERRORED", f"the trial exited with {exit_code}")
                self._close_exited(exp, trial, "ERROR")
            elif trial.pending_length is not None:
                exp.anomalies.append(
                    f"trial {trial.trial_id} exited 0 without completing"
                    f" ValidateAfter({trial.pending_length}): the master would start it again"
                )
            self._cond.notify_all()

    # -- trial-side routes (callers hold the lock) --

    def _live_trial(self, request: Any) -> TrialRecord:
        trial = self._trials_by_id.get(int(request.params["id"]))
        if trial is None:
            raise HttpError(404, f"trial not found: {request.params['id']}")
        return trial

    def _current_operation(self, trial: TrialRecord) -> dict[str, Any]:
        if trial.pending_length is not None:
            length, completed = trial.pending_length, False
        elif trial.validations:
            length, completed = trial.validations[-1][0], True
        else:
            raise HttpError(400, f"trial {trial.trial_id} has no searcher operation yet")
        op = {"requestId": trial.request_id, "length": str(length)}
        return {"op": {"validateAfter": op}, "completed": completed}

    def _complete_operation(self, trial: TrialRecord, body: Mapping[str, Any]) -> None:
        exp = self._experiments[trial.experiment_id]
        length = int((body.get("op") or {}).get("length") or 0)
        if not trial.live:
            raise HttpError(400, f"trial {trial.trial_id} is simulated, not live")
        if trial.pending_length is None and length in trial.completed_lengths:
            raise HttpError(
                500, f"received op ValidateAfter({length}) which was previously completed"
            )
        if trial.pending_length != length:
            raise HttpError(
                500,
                f"expected op ValidateAfter({trial.pending_length})"
                f" but received op ValidateAfter({length})",
            )
        trial.pending_result = body.get("searcherMetric")
        self._complete(exp, trial)
        self._cond.notify_all()

    def _report_from_trial(self, trial: TrialRecord, kind: str, body: Any) -> None:
        """What a custom experiment's searcher learns from a trial-side report."""
        exp = self._experiments[trial.experiment_id]
        body = body if isinstance(body, Mapping) else {}
        if kind == "metrics" and body.get("group") == "validation":
            steps = (body.get("metrics") or {}).get("stepsCompleted")
            trial.latest_validation_steps = None if steps is None else int(steps)
        if not exp.custom or trial.state != "ACTIVE":
            return
        if kind == "progress" and not body.get("is_raw"):
            payload = {"requestId": trial.request_id, "partialUnits": float(body["progress"])}
            self._enqueue(exp, "trialProgress", payload)
        elif kind == "early_exit" and trial.exited_reason is None:
            reason = _REASON_BY_WIRE.get(str(body.get("reason")), "ERRORED")
            self._exit_early(exp, trial, reason, "reported by the trial")
