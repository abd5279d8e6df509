"""Making the test process look like a trial task's container (in-process)."""

from __future__ import annotations

import pathlib

import determined as det
import pytest
from determined.common import constants
from determined.experimental import client

from .records import CLUSTER_ID, USER_TOKEN, USERNAME, RunnerTask
from .server import MasterDouble


def cluster_info(
    master: MasterDouble, task: RunnerTask, *, latest_checkpoint: str | None = None
) -> det.ClusterInfo:
    """The ``ClusterInfo`` the master would give the runner's trial container."""
    trial_info = det.TrialInfo(
        trial_id=task.trial_id,
        experiment_id=task.experiment_id,
        trial_seed=0,
        hparams=dict(task.hparams),
        config=task.config,
        steps_completed=0,
        trial_run_id=1,
        debug=False,
        inter_node_network_interface=None,
    )
    return det.ClusterInfo(
        master_url=master.url,
        cluster_id=CLUSTER_ID,
        agent_id="master-double-agent",
        slot_ids=[],
        task_id=task.task_id,
        allocation_id=task.allocation_id,
        session_token=task.session_token,
        task_type="TRIAL",
        latest_checkpoint=latest_checkpoint,
        trial_info=trial_info,
        rendezvous_info=det.RendezvousInfo(["127.0.0.1"], 0, [0]),
        resources_info=det.ResourcesInfo([]),
    )


def enter_cluster_task(
    monkeypatch: pytest.MonkeyPatch,
    master: MasterDouble,
    task: RunnerTask,
    work_dir: pathlib.Path,
    *,
    latest_checkpoint: str | None = None,
) -> det.ClusterInfo:
    """Make this process look like ``task``'s container (undone by ``monkeypatch``).

    Sets ``DET_MASTER``, ``DET_USER``, ``DET_USER_TOKEN`` and ``DET_SESSION_TOKEN`` as the
    master does, keeps the SDK's token and certificate stores under ``work_dir``, makes
    ``det.get_cluster_info()`` return the task's ``ClusterInfo`` (with
    ``latest_checkpoint``, as after a restart), maps the shared_fs container path to
    ``work_dir / "shared_fs"`` and forgets any ``client`` login. Call it again (with a
    fresh ``latest_checkpoint``) to simulate a restarted container.
    """
    info = cluster_info(master, task, latest_checkpoint=latest_checkpoint)
    shared_fs = work_dir / "shared_fs"
    shared_fs.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DET_MASTER", master.url)
    monkeypatch.setenv("DET_USER", USERNAME)
    monkeypatch.setenv("DET_USER_TOKEN", USER_TOKEN)
    monkeypatch.setenv("DET_SESSION_TOKEN", task.session_token)
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(work_dir / "det-config"))
    monkeypatch.delenv("DET_PASS", raising=False)
    monkeypatch.setattr(det._info, "_info", info)
    monkeypatch.setattr(det, "get_cluster_info", lambda: info)
    monkeypatch.setattr(constants, "SHARED_FS_CONTAINER_PATH", str(shared_fs))
    monkeypatch.setattr(client, "_determined", None)
    return info
