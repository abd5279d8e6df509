"""One rank of a local trial: its environment, how it is started and stopped, and what
DeepSpeed leaves of it in ``/dev/shm``."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import resource
import signal
import subprocess
from collections.abc import Sequence

from determined_dsat.runners.ext_cache import extensions_env
from determined_dsat.runners.orphans import die_with_parent
from determined_dsat.runners.reap import reap_all, signal_session

logger = logging.getLogger("determined_dsat")

KILL_GRACE_S = 5.0
_unpinnable: set[int] = set()


def rank_env(
    rank: int, world: int, ports: Sequence[int], slots: Sequence[str], gpu: bool, threads: int
) -> dict[str, str]:
    """The runner's environment plus what a rank of a ``world``-rank trial needs: the
    distributed variables, its three ports, its devices and this environment's op cache."""
    env = {**os.environ, **extensions_env()}
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
        OMP_NUM_THREADS=str(threads),
    )
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slots)
    else:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def spawn_rank(
    command: Sequence[str],
    cwd: pathlib.Path,
    env: dict[str, str],
    log: pathlib.Path,
    cpu: int | None,
    memory_limit_mb: int | None,
) -> subprocess.Popen[bytes]:
    """Start a rank in its own session and process group, its output in ``log``; pinned to
    core ``cpu`` (when given), its address space capped at ``memory_limit_mb`` MiB."""
    runner = os.getpid()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Each rank leads its own session and process group (a process cannot join
            # a group in another session); cleanup signals every rank's group.
            start_new_session=True,
            preexec_fn=lambda: _limit_child(runner, cpu, memory_limit_mb),
        )
    if cpu is not None:
        _check_pinned(proc.pid, cpu)
    return proc


def _limit_child(runner: int, cpu: int | None, memory_limit_mb: int | None) -> None:
    """Runs in the child before exec: die with the runner, pin to its core, cap its memory.
    A failed pin is not fatal; the runner sees it (``_check_pinned``) and logs it."""
    die_with_parent(runner)
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _check_pinned(pid: int, cpu: int) -> None:
    """Log once per core when a rank could not be pinned to it (its throughput is then
    measured while it may share cores with other trials)."""
    try:
        cores = os.sched_getaffinity(pid)
    except OSError:
        return  # already gone; its ending tells
    if cores != {cpu} and cpu not in _unpinnable:
        _unpinnable.add(cpu)
        logger.warning(
            "could not pin a trial rank to CPU core %d (it may run on cores %s); "
            "measurements of concurrent trials may disturb each other",
            cpu,
            sorted(cores),
        )


def kill_group(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every rank's session (each leads its own), then SIGKILL what is left after a
    grace period. The session, not just the group: a rank building an op runs its
    compilers through ninja, in process groups of their own."""
    _signal_sessions(procs, signal.SIGTERM)
    reap_all(procs, KILL_GRACE_S)
    _signal_sessions(procs, signal.SIGKILL)


def _signal_sessions(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for proc in procs:
        signal_session(proc.pid, signum)


def remove_shared_memory(port: int) -> None:
    """Delete the allreduce buffers DeepSpeed's CPU shared-memory comm op left for a trial.

    DeepSpeed 0.19.8 creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    (66 MiB per rank) and never unlinks it; a search of many trials would fill RAM.
    """
    for leftover in pathlib.Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        with contextlib.suppress(OSError):
            leftover.unlink()
