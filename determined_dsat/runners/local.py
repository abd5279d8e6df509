"""The local executor: each trial is ``slots_per_trial`` processes on this machine.

Every trial gets its own directory under ``RUN_DIR/trials/`` (the model dir linked in,
the trial sheet, one log per rank, DeepSpeed's output files), disjoint slots
(``CUDA_VISIBLE_DEVICES`` on GPUs, CPU affinity on CPUs), its own rendezvous port and
its own process group, so a timeout or Ctrl-C ends every process it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pathlib
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from determined_dsat.integration.local_context import METRICS_NAME, SHEET_NAME, TrialSheet
from determined_dsat.runners.devices import Slots
from determined_dsat.runners.entrypoint import LocalCommand
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.ext_locks import clear_stale_locks
from determined_dsat.runners.outcome import TrialEnding, classify
from determined_dsat.settings import DEFAULT_TRIAL_TIMEOUT_S
from determined_dsat.space.ds_config import (
    AUTOTUNING_KEY,
    METRIC_PATH,
    MODEL_INFO_PATH,
    OVERWRITE_KEY,
)

logger = logging.getLogger("determined_dsat")

# After one rank fails, the others usually hang in a collective; give them this long.
RANK_FAILURE_GRACE_S = 15.0
KILL_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1
_OUTPUTS = (SHEET_NAME, METRICS_NAME, METRIC_PATH, MODEL_INFO_PATH)


@attrs.frozen
class LocalTrialOptions:
    """How local trials run. ``memory_limit_mb`` caps each rank's address space."""

    experiment_config: Mapping[str, Any]
    model_dir: pathlib.Path
    command: LocalCommand
    slots_per_trial: int
    includes: tuple[pathlib.Path, ...] = ()
    trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S
    memory_limit_mb: int | None = None
    python: str = sys.executable
    threads_per_rank: int = 1


@attrs.define
class _Running:
    request_id: str
    length: int
    trial_dir: pathlib.Path
    slots: list[int]
    procs: list[subprocess.Popen[bytes]]
    logs: list[pathlib.Path]
    started: float
    autotuning: bool
    deadline: float
    port: int = 0
    failed_at: float | None = None
    timed_out: bool = False
    killed_by_us: bool = False
    pidfds: list[int] = attrs.field(factory=list)


class LocalExecutor(TrialExecutor):
    """Runs trials as local process groups; see the module docstring."""

    def __init__(
        self,
        options: LocalTrialOptions,
        slots: Slots,
        trial_dir_of: Callable[[str], pathlib.Path],
    ) -> None:
        self.options = options
        self.slots = slots
        self._trial_dir_of = trial_dir_of
        self._free = list(slots.ids)
        self._running: dict[str, _Running] = {}
        self._selector = selectors.DefaultSelector()
        self._launches = 0

    # ----- TrialExecutor -----
    @property
    def num_running(self) -> int:
        return len(self._running)

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        n = self.options.slots_per_trial
        if len(self._free) < n:
            raise RuntimeError(f"no {n} free slot(s) for trial {request_id}; the search overbooked")
        slots, self._free = self._free[:n], self._free[n:]
        trial_dir = self._prepare_dir(request_id)
        sheet = TrialSheet(
            hparams=dict(hparams),
            experiment_config=dict(self.options.experiment_config),
            length=length,
            checkpoint_dir=str(trial_dir / "checkpoints"),
            metrics_path=str(trial_dir / METRICS_NAME),
            trial_id=self._launches + 1,
        )
        sheet.write(trial_dir / SHEET_NAME)
        self._launches += 1
        ports = free_ports(3)
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[pathlib.Path] = []
        for rank in range(n):
            log = trial_dir / f"rank{rank}.log"
            procs.append(self._spawn(trial_dir, rank, n, slots, ports, log))
            logs.append(log)
        now = time.monotonic()
        running = _Running(
            request_id=request_id,
            length=length,
            trial_dir=trial_dir,
            slots=slots,
            procs=procs,
            logs=logs,
            started=now,
            autotuning=_autotuning_on(hparams),
            deadline=now + self.options.trial_timeout_s,
            port=ports[0],
        )
        self._watch(running)
        self._running[request_id] = running

    def next_completion(self) -> Completion:
        while True:
            for running in list(self._running.values()):
                if self._advance(running):
                    return self._finish(running)
            self._wait()

    def cancel_all(self) -> None:
        for running in list(self._running.values()):
            running.killed_by_us = True
            _kill_group(running.procs)
        for running in list(self._running.values()):
            for proc in running.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=KILL_GRACE_S)
            self._release(running)
            remove_shared_memory(running.port)
        self._running.clear()
        clear_stale_locks()

    # ----- processes -----
    def _prepare_dir(self, request_id: str) -> pathlib.Path:
        trial_dir = self._trial_dir_of(request_id)
        trial_dir.mkdir(parents=True, exist_ok=True)
        for name in _OUTPUTS:
            (trial_dir / name).unlink(missing_ok=True)
        sources = [*sorted(self.options.model_dir.iterdir()), *self.options.includes]
        run_dir = trial_dir.resolve().parent.parent
        for source in sources:
            link = trial_dir / source.name
            if link.exists() or link.is_symlink() or source.name in _OUTPUTS:
                continue
            target = source.resolve()
            if target == run_dir or target in run_dir.parents:
                continue  # the run directory itself lives in the model dir
            link.symlink_to(target)
        return trial_dir

    def _spawn(
        self,
        trial_dir: pathlib.Path,
        rank: int,
        world: int,
        slots: list[int],
        ports: list[int],
        log: pathlib.Path,
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            LOCAL_SIZE=str(world),
            CROSS_RANK="0",
            CROSS_SIZE="1",
            GROUP_RANK="0",
            GROUP_WORLD_SIZE="1",
            DET_CHIEF_IP="127.0.0.1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(ports[0]),
            # Determined's DistributedContext binds these; fixed defaults would clash
            # between concurrent trials.
            INTER_TRAIN_PROCESS_COMM_PORT_1=str(ports[1]),
            INTER_TRAIN_PROCESS_COMM_PORT_2=str(ports[2]),
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS=str(self.options.threads_per_rank),
        )
        if self.slots.gpu:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(s) for s in slots)
        else:
            env["DS_ACCELERATOR"] = "cpu"
        command = self._command(trial_dir)
        cpu = None if self.slots.gpu else slots[rank]
        limit = self.options.memory_limit_mb
        with log.open("wb") as out:
            return subprocess.Popen(
                command,
                cwd=trial_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Each rank leads its own session and process group (a process cannot join
                # a group in another session); cleanup signals every rank's group.
                start_new_session=True,
                preexec_fn=lambda: _limit_child(cpu, limit),
            )

    def _command(self, trial_dir: pathlib.Path) -> list[str]:
        bootstrap = [self.options.python, "-m", "determined_dsat.integration.bootstrap"]
        sheet = str(trial_dir / SHEET_NAME)
        command = self.options.command
        if command.trial_class is not None:
            return [
                *bootstrap,
                sheet,
                "--",
                "python3",
                "-m",
                "determined_dsat.integration.trial_driver",
                command.trial_class,
            ]
        return [*bootstrap, sheet, "--", "python3", *command.argv]

    # ----- waiting -----
    def _watch(self, running: _Running) -> None:
        for proc in running.procs:
            try:
                fd = os.pidfd_open(proc.pid)
            except (AttributeError, OSError):
                continue
            running.pidfds.append(fd)
            self._selector.register(fd, selectors.EVENT_READ, running.request_id)

    def _wait(self) -> None:
        now = time.monotonic()
        horizon = min(
            (
                min(r.deadline, (r.failed_at or 1e18) + RANK_FAILURE_GRACE_S)
                for r in self._running.values()
            ),
            default=now + 1.0,
        )
        timeout = max(0.0, min(1.0, horizon - now))
        if self._selector.get_map():
            self._selector.select(timeout)
        else:
            time.sleep(min(timeout, 0.05))

    def _advance(self, running: _Running) -> bool:
        """Update a trial's state; True once every one of its processes has ended."""
        codes = [p.poll() for p in running.procs]
        if all(code is not None for code in codes):
            return True
        now = time.monotonic()
        if running.failed_at is None and any(code not in (None, 0) for code in codes):
            running.failed_at = now
        if now >= running.deadline and not running.timed_out:
            running.timed_out = True
            logger.warning(
                "trial %s timed out after %.0f s; stopping it",
                running.request_id[:8],
                self.options.trial_timeout_s,
            )
            _kill_group(running.procs)
        elif running.failed_at is not None and now >= running.failed_at + RANK_FAILURE_GRACE_S:
            # The survivors are stuck in a collective; their SIGKILL is ours, not an OOM.
            running.killed_by_us = True
            _kill_group(running.procs)
        return False

    def _finish(self, running: _Running) -> Completion:
        self._release(running)
        remove_shared_memory(running.port)
        clear_stale_locks()
        del self._running[running.request_id]
        ending = TrialEnding(
            trial_dir=running.trial_dir,
            exit_codes=[p.returncode for p in running.procs],
            log_paths=running.logs,
            duration_s=time.monotonic() - running.started,
            timed_out=running.timed_out,
            killed_by_us=running.killed_by_us,
            autotuning=running.autotuning,
        )
        return Completion(
            request_id=running.request_id, result=classify(ending), length=running.length
        )

    def _release(self, running: _Running) -> None:
        for fd in running.pidfds:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        running.pidfds.clear()
        if running.slots:
            self._free = sorted(self._free + running.slots)
            running.slots = []


def _next_deadline(running: _Running) -> float:
    grace_end = (
        float("inf") if running.failed_at is None else running.failed_at + RANK_FAILURE_GRACE_S
    )
    return min(running.deadline, grace_end)


def _autotuning_on(hparams: Mapping[str, Any]) -> bool:
    overwrites = hparams.get(OVERWRITE_KEY) or {}
    section = overwrites.get(AUTOTUNING_KEY) if isinstance(overwrites, Mapping) else None
    return isinstance(section, Mapping) and bool(section.get("enabled"))


def _limit_child(cpu: int | None, memory_limit_mb: int | None) -> None:
    """Runs in the child before exec: die with the runner, pin to its core, cap its memory."""
    die_with_parent()
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def remove_shared_memory(port: int) -> None:
    """Delete the allreduce buffers DeepSpeed's CPU shared-memory comm op left for a trial.

    DeepSpeed 0.19.8 creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    (66 MiB per rank) and never unlinks it; a search of many trials would fill RAM.
    """
    for leftover in pathlib.Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the runner dies, even by SIGKILL, so a
    crashed runner leaves no trial behind (``--resume`` starts them again)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _kill_group(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every rank's process group, then SIGKILL what is left after a grace period."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on localhost."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
