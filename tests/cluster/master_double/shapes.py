"""JSON shapes the master double answers with, and the configs it fills in."""

from __future__ import annotations

import base64
import copy
import io
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from .records import USERNAME, ExperimentRecord, TrialRecord
from .wire import now


def not_custom(exp: ExperimentRecord, what: str) -> str:
    name = str((exp.config.get("searcher") or {}).get("name", ""))
    return f"*searcher.{name}Search search method does not support {what}"


def user_json() -> dict[str, Any]:
    return {"id": 1, "username": USERNAME, "admin": True, "active": True, "displayName": ""}


def experiment_json(exp: ExperimentRecord) -> dict[str, Any]:
    searcher = exp.config.get("searcher") or {}
    return {
        "id": exp.id,
        "name": str(exp.config.get("name") or f"Experiment {exp.id}"),
        "description": exp.config.get("description"),
        "labels": exp.config.get("labels"),
        "archived": False,
        "config": exp.config,
        "originalConfig": exp.config_text,
        "jobId": f"master-double-job-{exp.id}",
        "numTrials": len(exp.trials),
        "trialIds": [trial.trial_id for trial in exp.trials.values()],
        "projectId": exp.project_id,
        "projectOwnerId": 1,
        "projectName": "Uncategorized",
        "workspaceId": 1,
        "workspaceName": "Uncategorized",
        "searcherType": str(searcher.get("name", "")),
        "searcherMetric": searcher.get("metric"),
        "startTime": exp.start_time,
        "state": f"STATE_{exp.state}",
        "username": USERNAME,
        "userId": 1,
        "progress": exp.progress,
        "resourcePool": "default",
    }


def trial_json(trial: TrialRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": trial.trial_id,
        "experimentId": trial.experiment_id,
        "hparams": trial.hparams,
        "restarts": 0,
        "startTime": now(),
        "state": f"STATE_{trial.state}",
        "totalBatchesProcessed": max(trial.completed_lengths, default=0),
        "taskId": trial.task_id,
    }
    if trial.latest_validation_steps is not None:
        body["latestValidation"] = {"totalBatches": trial.latest_validation_steps}
    return body


def decode_files(files: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    decoded: dict[str, bytes] = {}
    for entry in files:
        if entry.get("type") == ord(tarfile.DIRTYPE):
            continue
        decoded[str(entry.get("path"))] = base64.b64decode(entry.get("content") or "")
    return decoded


def runner_config() -> dict[str, Any]:
    return {
        "name": "dsat-search-runner",
        "entrypoint": "python3 -m determined_dsat.runners.cluster",
        "searcher": {"name": "single", "metric": "unused", "max_length": 1},
        "max_restarts": 5,
        "checkpoint_storage": {"type": "shared_fs", "host_path": "/tmp/master-double-host"},
    }


def context_directory(files: Mapping[str, bytes]) -> str:
    """The model definition as ``GetTaskContextDirectory`` sends it: a base64 gzipped tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, content in sorted(files.items()):
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode = len(content), 0o644
            archive.addfile(entry, io.BytesIO(content))
    return base64.b64encode(buffer.getvalue()).decode()


# Top-level defaults of Determined 0.37's ``schemas/expconf/v0/experiment.json`` that the
# master fills into a trial's config before the trial starts (and that the Trial APIs read).
_EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "checkpoint_policy": "best",
    "data": {},
    "debug": False,
    "environment": {},
    "hyperparameters": {},
    "max_restarts": 5,
    "min_checkpoint_period": {"batches": 0},
    "min_validation_period": {"batches": 0},
    "optimizations": {},
    "perform_initial_validation": False,
    "profiling": {},
    "records_per_epoch": 0,
    "reproducibility": {},
    "resources": {},
    "scheduling_unit": 100,
}


def trial_config(
    config: Mapping[str, Any], checkpoint_storage: Mapping[str, Any]
) -> dict[str, Any]:
    """An experiment config as a trial task gets it: the top-level defaults filled in and the
    cluster's checkpoint storage where the config has none (nested defaults are not filled)."""
    filled = copy.deepcopy(dict(config))
    for key, value in _EXPERIMENT_DEFAULTS.items():
        filled.setdefault(key, copy.deepcopy(value))
    if not filled.get("checkpoint_storage"):
        filled["checkpoint_storage"] = copy.deepcopy(dict(checkpoint_storage))
    return filled
