"""Boot a live trial's container the way a Determined 0.37 agent does, against the double.

The container is a process tree in a private mount namespace (``unshare --mount``, which
needs root) whose ``/run`` is a directory of the test's: so Determined's own code finds
``/run/determined/info/*.json`` where it looks for them, and nothing outside is touched.
In it, as the master's trial entrypoint script does:

1. ``python3 -m determined.exec.prep_container --download_context_directory --resources
   --rendezvous --proxy`` writes the cluster, trial, resources and rendezvous info (from
   the ``DET_*`` environment and the double's allocation routes) and unpacks the
   experiment's model definition into the working directory;
2. ``python3 -m determined.exec.launch`` checks the checkpoint storage and runs the
   experiment config's ``entrypoint`` with ``sh -c``.

The image is this machine's Python environment: ``python3`` and ``deepspeed`` run the
interpreter running the tests (through small wrappers: putting its whole ``bin`` first on
``PATH`` would also swap the machine's ``ninja`` for the environment's, whose newer log
format makes every other process rebuild the DeepSpeed ops), without ``PYTHONPATH``: a
trial imports what its upload and the environment hold, as on a cluster. Checkpoint
storage must be reachable under the same path inside and outside (e.g. ``type:
directory`` in a temporary directory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Mapping

from .records import CLUSTER_ID, USER_TOKEN, USERNAME, RunnerTask
from .server import MasterDouble

RESOURCES_ID = "master-double-resources"
_BOOT = (
    'mount --no-mtab --bind "$0" /run'
    " && python3 -m determined.exec.prep_container"
    " --download_context_directory --resources --rendezvous --proxy"
    " && exec python3 -m determined.exec.launch"
)


def image_bin(directory: pathlib.Path) -> pathlib.Path:
    """``directory`` with ``python3``, ``python`` and ``deepspeed`` running this environment."""
    directory.mkdir(parents=True, exist_ok=True)
    env_bin = pathlib.Path(sys.executable).parent
    targets = {"python3": sys.executable, "python": sys.executable}
    targets["deepspeed"] = str(env_bin / "deepspeed")
    for name, target in targets.items():
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        wrapper.chmod(0o755)
    return directory


def container_env(
    master: MasterDouble,
    task: RunnerTask,
    bin_dir: pathlib.Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment the agent gives ``task``'s container (0.37's ``DET_*`` variables),
    with ``bin_dir`` (see ``image_bin``) first on ``PATH``."""
    slots = int((task.config.get("resources") or {}).get("slots_per_trial", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DET_") and k != "PYTHONPATH"}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        DET_MASTER=master.url,
        DET_CLUSTER_ID=CLUSTER_ID,
        DET_AGENT_ID="master-double-agent",
        DET_SLOT_IDS=json.dumps(list(range(slots))),
        DET_TASK_ID=task.task_id,
        DET_ALLOCATION_ID=task.allocation_id,
        DET_SESSION_TOKEN=task.session_token,
        DET_TASK_TYPE="TRIAL",
        DET_USER=USERNAME,
        DET_USER_TOKEN=USER_TOKEN,
        DET_RESOURCES_ID=RESOURCES_ID,
        DET_RESOURCES_TYPE="docker-container",
        DET_CONTAINER_ID=f"master-double-container-{task.trial_id}",
        DET_EXPERIMENT_ID=str(task.experiment_id),
        DET_TRIAL_ID=str(task.trial_id),
        DET_TRIAL_SEED="0",
        DET_TRIAL_RUN_ID="1",
        DET_STEPS_COMPLETED="0",
        DET_HPARAMS=json.dumps(task.hparams),
        DET_EXPERIMENT_CONFIG=json.dumps(task.config),
    )
    env.update(extra or {})
    return env


@dataclasses.dataclass
class TrialContainer:
    """A running (or finished) container; its output goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    work_dir: pathlib.Path
    """The container's working directory (the unpacked model definition)."""
    run_dir: pathlib.Path
    """What the container sees as ``/run``."""
    log_path: pathlib.Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        """The exit code; kills the whole container after ``timeout_s`` seconds."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the trial container ran past {timeout_s:.0f} s\n{self.log[-6000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL every process of the container's session (ninja gives each of the
        compilers of a DeepSpeed op build its own process group)."""
        for pid in _session_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def _session_members(sid: int) -> list[int]:
    members = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of proc_pid_stat(5): the session id
                members.append(int(stat.parent.name))
    return members


def start_container(
    master: MasterDouble,
    task: RunnerTask,
    base_dir: pathlib.Path,
    extra_env: Mapping[str, str] | None = None,
) -> TrialContainer:
    """Start ``task``'s container under ``base_dir`` and tell the double it runs."""
    work_dir, run_dir = base_dir / "work", base_dir / "run"
    work_dir.mkdir(parents=True)
    for sub in ("determined/info", "determined/train"):
        (run_dir / sub).mkdir(parents=True)
    (run_dir / "shm").symlink_to("/dev/shm")
    log_path = base_dir / "container.log"
    master.trial_started(task.trial_id)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BOOT, str(run_dir)],
            cwd=work_dir,
            env=container_env(master, task, image_bin(base_dir / "bin"), extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return TrialContainer(proc, work_dir, run_dir, log_path)


def run_container(
    master: MasterDouble,
    task: RunnerTask,
    base_dir: pathlib.Path,
    timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
) -> TrialContainer:
    """Run ``task``'s container to its end and report its exit to the double."""
    container = start_container(master, task, base_dir, extra_env)
    try:
        code = container.wait(timeout_s)
    except BaseException:
        master.trial_exited(task.trial_id, -int(signal.SIGKILL))
        raise
    master.trial_exited(task.trial_id, code)
    return container
