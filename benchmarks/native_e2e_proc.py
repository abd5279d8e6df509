"""Running the end-to-end benchmark's child processes: environment, limits, timing, progress.

Every tool runs the same way: its own process group and session (so a timeout stops the
whole tree, DeepSpeed's launcher and its experiments included), stdout and stderr to a
log file, the address-space limit inherited by every descendant, and a progress line
every ``progress_every_s`` seconds while it runs.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

REPO = pathlib.Path(__file__).resolve().parents[1]
TERM_GRACE_S = 20.0
SHM_DIR = pathlib.Path("/dev/shm")


@attrs.frozen
class ProcessResult:
    """How a child process ended: seconds from start to end, its exit code (None if it
    had to be killed) and whether it ran past its time limit."""

    wall_s: float
    exit_code: int | None
    timed_out: bool


def child_env(
    extensions_dir: pathlib.Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every tool: DeepSpeed on CPU, one thread per process, this
    repository importable, this interpreter's ``bin`` first on ``PATH`` (DeepSpeed's
    scheduler starts each experiment as ``deepspeed ...`` from ``PATH``), and a private
    torch extensions cache, warmed before anything is timed."""
    env = dict(os.environ)
    env.pop("DET_MASTER", None)
    bin_dir = str(pathlib.Path(sys.executable).parent)
    python_path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(dict.fromkeys(python_path)),
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
        TORCH_EXTENSIONS_DIR=str(extensions_dir),
    )
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limits(memory_limit_mib: int) -> Callable[[], None]:
    def apply() -> None:
        if memory_limit_mib > 0:
            cap = memory_limit_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_logged(
    command: Sequence[str],
    *,
    cwd: pathlib.Path,
    env: Mapping[str, str],
    log_path: pathlib.Path,
    timeout_s: float,
    memory_limit_mib: int = 0,
    progress: Callable[[float], None] | None = None,
    progress_every_s: float = 30.0,
) -> ProcessResult:
    """Run ``command`` to its end (or ``timeout_s`` seconds, then stop its process group);
    ``progress(elapsed_s)`` is called every ``progress_every_s`` seconds meanwhile.
    ``memory_limit_mib`` (0: none) caps the address space of it and every descendant."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_limits(memory_limit_mib),
        )
        try:
            next_report = started + progress_every_s
            while True:
                try:
                    code = proc.wait(timeout=max(0.1, min(5.0, next_report - time.monotonic())))
                    return ProcessResult(time.monotonic() - started, code, False)
                except subprocess.TimeoutExpired:
                    now = time.monotonic()
                    if now - started > timeout_s:
                        _stop_group(proc)
                        return ProcessResult(now - started, None, True)
                    if progress is not None and now >= next_report:
                        progress(now - started)
                        next_report = now + progress_every_s
        except BaseException:
            _stop_group(proc)
            raise


def remove_allreduce_buffers(ports: Iterable[int], root: pathlib.Path = SHM_DIR) -> int:
    """Delete the ``/dev/shm`` allreduce buffers of runs that used these master ports;
    returns how many. DeepSpeed 0.19.8's CPU comm op creates
    ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MiB per rank) and never
    unlinks it, so every experiment and measurement would leave one behind in RAM."""
    removed = 0
    for port in ports:
        for leftover in root.glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
    return removed


def format_duration(seconds: float) -> str:
    """``"4 min 11 s"``, ``"1 h 02 min"``, ``"38 s"``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
