"""The local executor: each trial is ``slots_per_trial`` processes on this machine.

Every trial gets its own directory under ``RUN_DIR/trials/`` (the model dir linked in,
the trial sheet, one log per rank, DeepSpeed's output files), disjoint slots
(``CUDA_VISIBLE_DEVICES`` on GPUs, CPU affinity on CPUs), ports no other running trial
holds (``ports.py``; a trial whose port another program took is started again) and its
own process groups, so a timeout or Ctrl-C ends every process it started, and a killed
runner takes them with it (``orphans.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from determined_dsat.integration.local_context import METRICS_NAME, SHEET_NAME, TrialSheet
from determined_dsat.runners.devices import Slots, check_slots_per_trial
from determined_dsat.runners.entrypoint import LocalCommand
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.ext_locks import clear_stale_locks
from determined_dsat.runners.orphans import deathsig_available, die_with_parent, start_watchdog
from determined_dsat.runners.outcome import TrialEnding, classify, port_clash
from determined_dsat.runners.ports import NoFreePorts, PortAllocator, free_ports, shared_allocator
from determined_dsat.runners.rank import (
    kill_group,
    rank_env,
    remove_shared_memory,
    spawn_rank,
)
from determined_dsat.runners.reap import KILL_REAP_S, kill, reap_all
from determined_dsat.settings import DEFAULT_TRIAL_TIMEOUT_S
from determined_dsat.space.ds_config import (
    AUTOTUNING_KEY,
    METRIC_PATH,
    MODEL_INFO_PATH,
    OVERWRITE_KEY,
)

# free_ports and die_with_parent are imported from here by benchmarks and the warm-up.
__all__ = [
    "LocalExecutor",
    "LocalTrialOptions",
    "die_with_parent",
    "free_ports",
    "remove_shared_memory",
]

logger = logging.getLogger("determined_dsat")

# After one rank fails, the others usually hang in a collective; give them this long.
RANK_FAILURE_GRACE_S = 15.0
# A trial whose rank found its port taken by another program is started again on other
# ports, this many times at most, before its ending counts.
PORT_CLASH_RETRIES = 3
_OUTPUTS = (SHEET_NAME, METRICS_NAME, METRIC_PATH, MODEL_INFO_PATH)


def _private_parts(experiment_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The model-dir path of the ds_config, split into its parts: a trial rewrites that
    file (``get_hf_args_with_overwrites``), so the folders above it must be the trial's own,
    not links into the user's model dir."""
    hparams = experiment_config.get("hyperparameters")
    name = hparams.get("deepspeed_config") if isinstance(hparams, Mapping) else None
    if not isinstance(name, str) or os.path.isabs(name):
        return ()
    parts = pathlib.PurePath(os.path.normpath(name)).parts
    return () if not parts or parts[0] == os.pardir else parts


def _link_into(
    source: pathlib.Path, link: pathlib.Path, run_dir: pathlib.Path, private: tuple[str, ...]
) -> None:
    """Link ``source`` in as ``link``, except that a folder on the way to the private file
    becomes a real folder whose entries are linked in the same way (a file replaced there
    leaves the user's own untouched)."""
    if link.exists() or link.is_symlink():
        return
    target = source.resolve()
    if target == run_dir or target in run_dir.parents:
        return  # the run directory itself lives in the model dir
    if len(private) > 1 and source.name == private[0] and target.is_dir():
        link.mkdir()
        for child in sorted(target.iterdir()):
            _link_into(child, link / child.name, run_dir, private[1:])
        return
    link.symlink_to(target)


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
    hparams: Mapping[str, Any]
    trial_dir: pathlib.Path
    slots: list[str]
    procs: list[subprocess.Popen[bytes]]
    logs: list[pathlib.Path]
    started: float
    deadline: float
    ports: tuple[int, ...]
    attempt: int = 1
    failed_at: float | None = None
    timed_out: bool = False
    killed_by_us: bool = False
    pidfds: list[int] = attrs.field(factory=list)
    watchdog: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The rendezvous port (``MASTER_PORT``), which names DeepSpeed's shm buffers."""
        return self.ports[0]


class LocalExecutor(TrialExecutor):
    """Runs trials as local process groups; see the module docstring."""

    def __init__(
        self,
        options: LocalTrialOptions,
        slots: Slots,
        trial_dir_of: Callable[[str], pathlib.Path],
        ports: PortAllocator | None = None,
    ) -> None:
        check_slots_per_trial(slots, options.slots_per_trial, "the experiment config")
        self.options = options
        self.slots = slots
        self._trial_dir_of = trial_dir_of
        self._free = list(slots.ids)
        self._running: dict[str, _Running] = {}
        self._selector = selectors.DefaultSelector()
        self._launches = 0
        self._ports = shared_allocator() if ports is None else ports
        self._watchdogs = not deathsig_available()

    # ----- TrialExecutor -----
    @property
    def num_running(self) -> int:
        return len(self._running)

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        n = self.options.slots_per_trial
        if len(self._free) < n:
            raise RuntimeError(f"no {n} free slot(s) for trial {request_id}; the search overbooked")
        ports = self._ports.reserve(request_id, 3)
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
        self._start(request_id, hparams, length, trial_dir, slots, ports, attempt=1)

    def _start(
        self,
        request_id: str,
        hparams: Mapping[str, Any],
        length: int,
        trial_dir: pathlib.Path,
        slots: list[str],
        ports: tuple[int, ...],
        attempt: int,
    ) -> None:
        n = self.options.slots_per_trial
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
            hparams=hparams,
            trial_dir=trial_dir,
            slots=slots,
            procs=procs,
            logs=logs,
            started=now,
            deadline=now + self.options.trial_timeout_s,
            ports=ports,
            attempt=attempt,
        )
        if self._watchdogs:
            running.watchdog = start_watchdog([p.pid for p in procs], self.options.python)
        self._watch(running)
        self._running[request_id] = running

    def next_completion(self) -> Completion:
        while True:
            for running in list(self._running.values()):
                if self._advance(running):
                    completion = self._finish(running)
                    if completion is not None:
                        return completion
            self._wait()

    def cancel_all(self) -> None:
        trials = list(self._running.values())
        for running in trials:
            running.killed_by_us = True
        # One grace period for all of them: Ctrl-C with 16 trials running must not take 16.
        procs = [proc for running in trials for proc in running.procs]
        kill_group(procs)
        reap_all(procs, KILL_REAP_S)
        for running in trials:
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
        private = _private_parts(self.options.experiment_config)
        for source in sources:
            if source.name not in _OUTPUTS:
                _link_into(source, trial_dir / source.name, run_dir, private)
        return trial_dir

    def _spawn(
        self,
        trial_dir: pathlib.Path,
        rank: int,
        world: int,
        slots: list[str],
        ports: tuple[int, ...],
        log: pathlib.Path,
    ) -> subprocess.Popen[bytes]:
        env = rank_env(rank, world, ports, slots, self.slots.gpu, self.options.threads_per_rank)
        cpu = None if self.slots.gpu else int(slots[rank])
        command = self._command(trial_dir)
        return spawn_rank(command, trial_dir, env, log, cpu, self.options.memory_limit_mb)

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
            kill_group(running.procs)
        elif running.failed_at is not None and now >= running.failed_at + RANK_FAILURE_GRACE_S:
            # The survivors are stuck in a collective; their SIGKILL is ours, not an OOM.
            running.killed_by_us = True
            kill_group(running.procs)
        return False

    def _finish(self, running: _Running) -> Completion | None:
        """The trial's completion, or None when it was started again after a port clash."""
        self._release(running, keep_slots=True)
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
            autotuning=_autotuning_on(running.hparams),
        )
        if running.attempt <= PORT_CLASH_RETRIES and port_clash(ending):
            with contextlib.suppress(NoFreePorts):  # then the clash is its ending
                self._restart_after_port_clash(running)
                return None
        self._free_slots(running)
        return Completion(
            request_id=running.request_id, result=classify(ending), length=running.length
        )

    def _restart_after_port_clash(self, running: _Running) -> None:
        self._ports.avoid(running.ports)
        ports = self._ports.reserve(running.request_id, 3)
        logger.warning(
            "trial %s: another program took one of its ports %s before its ranks bound "
            "them; starting it again on other ports (attempt %d)",
            running.request_id[:8],
            list(running.ports),
            running.attempt + 1,
        )
        for name in (METRICS_NAME, METRIC_PATH, MODEL_INFO_PATH):
            (running.trial_dir / name).unlink(missing_ok=True)
        for log in running.logs:  # kept for the curious, out of the outcome's way
            with contextlib.suppress(OSError):
                log.rename(log.with_suffix(f".port-clash-{running.attempt}.log"))
        self._start(
            running.request_id,
            running.hparams,
            running.length,
            running.trial_dir,
            running.slots,
            ports,
            running.attempt + 1,
        )

    def _release(self, running: _Running, keep_slots: bool = False) -> None:
        for fd in running.pidfds:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        running.pidfds.clear()
        self._ports.release(running.request_id)
        if running.watchdog is not None:
            kill(running.watchdog)
            running.watchdog = None
        if not keep_slots:
            self._free_slots(running)

    def _free_slots(self, running: _Running) -> None:
        if running.slots:
            order = {slot: i for i, slot in enumerate(self.slots.ids)}
            self._free = sorted(self._free + running.slots, key=lambda slot: order[slot])
            running.slots = []


def _autotuning_on(hparams: Mapping[str, Any]) -> bool:
    overwrites = hparams.get(OVERWRITE_KEY) or {}
    section = overwrites.get(AUTOTUNING_KEY) if isinstance(overwrites, Mapping) else None
    return isinstance(section, Mapping) and bool(section.get("enabled"))
