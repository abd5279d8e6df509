"""Routes a trial task calls: its searcher operation, reports, checkpoints, allocation."""

from __future__ import annotations

from typing import Any

from .live import LiveTrialState
from .records import CheckpointRecord, TrialRecord
from .shapes import context_directory, trial_json
from .wire import HttpError, Request


def get_trial(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        trial = master._trials_by_id.get(int(request.params["id"]))
        if trial is None:
            raise HttpError(404, f"trial not found: {request.params['id']}")
        return {"trial": trial_json(trial)}


def trial_report(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        trial_id = int(request.params["id"])
        if trial_id not in master._trials_by_id:
            raise HttpError(404, f"trial not found: {trial_id}")
        master._trial_reports.append((trial_id, request.params["kind"], request.body))
        master._report_from_trial(
            master._trials_by_id[trial_id], request.params["kind"], request.body
        )
    return {}


def run_prepare(master: LiveTrialState, request: Request) -> Any:
    return {"storageId": 1}


def report_checkpoint(master: LiveTrialState, request: Request) -> Any:
    body = request.body or {}
    if not body.get("uuid"):
        raise HttpError(400, "checkpoint uuid is required")
    record = CheckpointRecord(
        uuid=str(body["uuid"]),
        task_id=body.get("taskId"),
        allocation_id=body.get("allocationId"),
        metadata=dict(body.get("metadata") or {}),
        body=body,
    )
    with master._cond:
        master._checkpoints.append(record)
    return {}


def patch_checkpoints(master: LiveTrialState, request: Request) -> Any:
    return {}


def get_checkpoint(master: LiveTrialState, request: Request) -> Any:
    uuid_ = request.params["uuid"]
    with master._cond:
        for record in reversed(master._checkpoints):
            if record.uuid == uuid_:
                return {"checkpoint": record.body}
    raise HttpError(404, f"checkpoint not found: {uuid_}")


def preemption_signal(master: LiveTrialState, request: Request) -> Any:
    allocation_id = request.params["id"]
    raw = (request.query.get("timeout_seconds") or request.query.get("timeoutSeconds") or ["0"])[0]
    timeout = min(float(raw or 0), 60.0)
    with master._cond:
        master._cond.wait_for(
            lambda: master._closing or allocation_id in master._preempted, timeout
        )
        return {"preempt": allocation_id in master._preempted}


def ack_preemption(master: LiveTrialState, request: Request) -> Any:
    return {}


def get_searcher_operation(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        return master._current_operation(master._live_trial(request))


def complete_searcher_operation(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        master._complete_operation(master._live_trial(request), request.body or {})
    return {}


def _trial_of_task(master: LiveTrialState, task_id: str) -> TrialRecord:
    for trial in master._trials_by_id.values():
        if trial.task_id == task_id:
            return trial
    raise HttpError(404, f"task not found: {task_id}")


def task_context_directory(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        trial = _trial_of_task(master, request.params["task_id"])
        files = master._experiments[trial.experiment_id].model_files
        return {"b64Tgz": context_directory(files)}


def rendezvous_info(master: LiveTrialState, request: Request) -> Any:
    """One container on 127.0.0.1 with all the trial's slots (no multi-node trials)."""
    allocation_id = request.params["id"]
    with master._cond:
        trial = next(
            (t for t in master._trials_by_id.values() if t.allocation_id == allocation_id), None
        )
        if trial is None:
            raise HttpError(404, f"allocation not found: {allocation_id}")
        config = master._experiments[trial.experiment_id].config
    slots = int((config.get("resources") or {}).get("slots_per_trial", 1))
    return {"rendezvousInfo": {"addresses": ["127.0.0.1"], "rank": 0, "slots": [slots]}}


def accelerator_data(master: LiveTrialState, request: Request) -> Any:
    return {}
