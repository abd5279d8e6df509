"""Routes a user and a search runner call: login, experiments, the custom-searcher queue."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from determined.common import api

from .live import LiveTrialState
from .records import (
    ACTIVE_STATES,
    CLUSTER_ID,
    MASTER_VERSION,
    TERMINAL_STATES,
    USER_TOKEN,
    USERNAME,
    ExperimentRecord,
    PostedOperations,
)
from .shapes import decode_files, experiment_json, not_custom, trial_json, user_json
from .wire import HttpError, Request, now


def info(master: LiveTrialState, request: Request) -> Any:
    return {
        "version": MASTER_VERSION,
        "master_id": "master-double",
        "cluster_id": CLUSTER_ID,
        "cluster_name": "master-double",
        "telemetry": {"enabled": False},
    }


def get_master(master: LiveTrialState, request: Request) -> Any:
    return {
        "version": MASTER_VERSION,
        "masterId": "master-double",
        "clusterId": CLUSTER_ID,
        "clusterName": "master-double",
        "hasCustomLogo": False,
        "strictJobQueueControl": False,
        "telemetryEnabled": False,
        "rbacEnabled": False,
        "userManagementEnabled": True,
        "featureSwitches": [],
    }


def login(master: LiveTrialState, request: Request) -> Any:
    body = request.body or {}
    if body.get("username") != USERNAME:
        raise HttpError(403, "user not found")
    if master._password is not None:
        expected = master._password
        if body.get("isHashed"):
            expected = api.salt_and_hash(master._password)
        if body.get("password", "") != expected:
            raise HttpError(403, "invalid credentials")
    with master._cond:
        master._logins += 1
    return {"token": USER_TOKEN, "user": user_json()}


def logout(master: LiveTrialState, request: Request) -> Any:
    return {}


def get_me(master: LiveTrialState, request: Request) -> Any:
    return {"user": user_json()}


def create_experiment(master: LiveTrialState, request: Request) -> Any:
    body = request.body or {}
    config_text = str(body.get("config") or "")
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as e:
        raise HttpError(400, f"invalid experiment config YAML: {e}") from e
    if not isinstance(config, dict):
        raise HttpError(400, "experiment config must be a mapping")
    if master._config_validator is not None:
        problems = list(master._config_validator(config))
        if problems:
            raise HttpError(400, "invalid experiment: " + "; ".join(problems))
    files = decode_files(body.get("modelDefinition") or [])
    with master._cond:
        if body.get("validateOnly"):
            preview = ExperimentRecord(
                0, config, config_text, files, 1, "PAUSED", now(), custom=False
            )
            return {"experiment": experiment_json(preview), "config": config}
        exp = master._new_experiment(
            config,
            config_text,
            files,
            project_id=int(body.get("projectId") or 1),
            active=bool(body.get("activate")),
        )
        return {"experiment": experiment_json(exp), "config": config, "warnings": []}


def get_experiment(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        exp = master._experiment_for(request)
        master._observe_stopping(exp)
        return {"experiment": experiment_json(exp), "config": exp.config}


def experiment_action(master: LiveTrialState, request: Request) -> Any:
    action = request.params["action"]
    with master._cond:
        exp = master._experiment_for(request)
        if action == "activate":
            if exp.state == "PAUSED":
                exp.state = "ACTIVE"
            elif exp.state not in ACTIVE_STATES:
                raise HttpError(400, f"experiment in incompatible state STATE_{exp.state}")
        elif action == "pause":
            if exp.state in ACTIVE_STATES:
                exp.state = "PAUSED"
            elif exp.state != "PAUSED":
                raise HttpError(400, f"experiment in incompatible state STATE_{exp.state}")
        elif action == "cancel":
            master._begin_stop(exp, "STOPPING_CANCELED")
        else:
            master._begin_stop(exp, "STOPPING_KILLED")
        master._cond.notify_all()
        return {}


def get_experiment_trials(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        exp = master._experiment_for(request)
        trials = [trial_json(t) for t in exp.trials.values()]
    total = len(trials)
    return {
        "trials": trials,
        "pagination": {
            "offset": 0,
            "limit": 0,
            "startIndex": 0,
            "endIndex": total,
            "total": total,
        },
    }


def get_searcher_events(master: LiveTrialState, request: Request) -> Any:
    with master._cond:
        exp = master._experiment_for(request)
        if not exp.custom:
            raise HttpError(500, not_custom(exp, "GetCustomSearcherEventQueue"))
        if exp.state in ACTIVE_STATES:
            master._advance(exp)
        if exp.state not in ACTIVE_STATES:
            master._observe_stopping(exp)
            inactive = {
                "id": -1,
                "experimentInactive": {"experimentState": f"STATE_{exp.state}"},
            }
            exp.deliveries.append([-1])
            return {"searcherEvents": [inactive]}
        master._cond.wait_for(lambda: master._closing or bool(exp.queue), master._long_poll_s)
        events = copy.deepcopy(exp.queue)
        exp.deliveries.append([int(event["id"]) for event in events])
        return {"searcherEvents": events}


def post_searcher_operations(master: LiveTrialState, request: Request) -> Any:
    body = request.body or {}
    with master._cond:
        exp = master._experiment_for(request)
        if not exp.custom:
            raise HttpError(500, not_custom(exp, "GetCustomSearcherEventQueue"))
        event = body.get("triggeredByEvent")
        operations = list(body.get("searcherOperations") or [])
        if not isinstance(event, dict) or event.get("id") is None:
            exp.anomalies.append("operations posted without triggeredByEvent.id")
            raise HttpError(400, "triggeredByEvent.id is required")
        event_id = int(event["id"])
        post = PostedOperations(event_id, operations, accepted=False)
        exp.operations.append(post)
        if exp.state in TERMINAL_STATES:
            post.error = f"failed to post operations: experiment {exp.id} could not be found"
            exp.anomalies.append(f"operations posted after the experiment became {exp.state}")
            raise HttpError(500, post.error)
        position = next((i for i, queued in enumerate(exp.queue) if queued["id"] == event_id), None)
        if position is None:
            post.error = "failed to remove events from queue"
            exp.anomalies.append(
                f"operations posted for event {event_id}, which is not in the queue"
            )
            raise HttpError(500, post.error)
        del exp.queue[: position + 1]
        post.accepted = True
        post.applied = master._apply(exp, operations)
        master._cond.notify_all()
        return {}
