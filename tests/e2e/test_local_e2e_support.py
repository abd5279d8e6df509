"""Shared helpers of the local-backend end-to-end tests (no tests in here).

The e2e tests run ``python -m determined_dsat ... --backend local`` as a subprocess with
real DeepSpeed on CPU (``DS_ACCELERATOR=cpu``, gloo). Processes belonging to a run are
found through ``/proc``: a command line that names the run directory, a working
directory inside it, or an open file inside it (the op warm-up's log).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml

from determined_dsat.runners import ext_locks

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
STATUSES = {"ok", "oom", "error", "timeout", "invalid", "cancelled"}
# Caps each trial process's address space. The profiling trial then reports it as the
# device memory, so the memory model proposes micro-batches around 130 (not 800) and
# trials take seconds; ZeRO-1 with a 1e9-element reduce bucket (2 GB in bf16) runs out.
MEMORY_CAP_MIB = 2000


def runner_env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.pop("DET_MASTER", None)
    return env


def _default_sigint() -> None:
    # A background job of a non-interactive shell (CI) starts with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler; a user's terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Runner:
    """One ``dsat`` process; its stdout and stderr go to files next to the run dir."""

    def __init__(
        self,
        args: Sequence[str],
        run_dir: pathlib.Path,
        name: str = "runner",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.args = [sys.executable, "-m", "determined_dsat", *args]
        base = run_dir.parent
        self.stdout_path = base / f"{name}.stdout"
        self.stderr_path = base / f"{name}.stderr"
        self.started = time.monotonic()
        # MASTER_PORTs of this run's trial ranks, and the DeepSpeed shared-memory segments
        # named after them that were left in /dev/shm (see take_leaked_shm).
        self.ports: set[str] = set()
        self.leaked_shm: set[str] = set()
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.args,
                cwd=base,
                env={**runner_env(), **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=_default_sigint,
            )
        _RUNNERS.append(self)
        self._watcher = threading.Thread(target=self._watch_ports, daemon=True)
        self._watcher.start()

    def _watch_ports(self) -> None:
        needle = f"determined_dsat.integration.bootstrap {self.run_dir}/trials/".encode()
        while self.proc.poll() is None:
            for pid_dir in pathlib.Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    if needle not in (pid_dir / "cmdline").read_bytes().replace(b"\0", b" "):
                        continue
                    environ = (pid_dir / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                for item in environ:
                    if item.startswith(b"MASTER_PORT="):
                        self.ports.add(item.split(b"=", 1)[1].decode())
            time.sleep(0.2)

    def take_leaked_shm(self) -> set[str]:
        """Remove (and remember) the segments of this run's trial ports left in /dev/shm."""
        if self.proc.poll() is None:
            return set()
        self._watcher.join(timeout=5)
        mine = {name for name in shm_buffers() if name.rsplit("_", 2)[-2] in self.ports}
        for name in mine - _mapped_shm():
            with contextlib.suppress(OSError):
                (SHM_DIR / name).unlink()
                self.leaked_shm.add(name)
        return set(self.leaked_shm)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"dsat did not finish within {timeout:.0f} s\n{self.describe()}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        log = self.run_dir / "dsat.log"
        text = log.read_text(errors="replace")[-4000:] if log.exists() else "(no dsat.log)"
        return (
            f"command: {' '.join(self.args)}\nexit: {self.proc.returncode}\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}\n"
            f"--- dsat.log ---\n{text}"
        )


def run_dsat(args: Sequence[str], run_dir: pathlib.Path, timeout: float, name: str) -> Runner:
    runner = Runner(args, run_dir, name)
    runner.wait(timeout)
    runner.take_leaked_shm()
    return runner


def search_args(
    method: str,
    model_dir: pathlib.Path,
    run_dir: pathlib.Path,
    max_trials: int,
    *extra: str,
    config: str = "deepspeed-cpu.yaml",
    memory_cap: int | None = MEMORY_CAP_MIB,
) -> list[str]:
    args = [method, str(model_dir / config), str(model_dir), "--backend", "local"]
    args += ["--run-dir", str(run_dir), "--max-trials", str(max_trials)]
    if memory_cap is not None:
        args += ["--trial-memory-limit", str(memory_cap)]
    return [*args, *extra]


def copy_example(
    name: str,
    dest: pathlib.Path,
    config: str = "deepspeed-cpu.yaml",
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> pathlib.Path:
    """Copy ``examples/<name>`` to ``dest`` and apply ``edit`` to its experiment config."""
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if edit is not None:
        path = dest / config
        data = yaml.safe_load(path.read_text())
        edit(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def read_trials(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    path = run_dir / "trials.jsonl"
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        if raw.strip():
            lines.append(json.loads(raw))
    return lines


def read_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text())


# ----- DeepSpeed's shared memory ---------------------------------------------------------
# DeepSpeed 0.19.8's CPU allreduce (deepspeed_shm_comm) creates one 66 MiB segment per
# rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>,
# and never unlinks it; the runner removes a finished trial's. The tests remove what their
# runs left (found by the ports of their own trial ranks, so no other run's are touched).

SHM_DIR = pathlib.Path("/dev/shm")
SHM_PATTERN = "deepspeed_allreduce_buffer_*_127.0.0.1_*"


def shm_buffers() -> set[str]:
    return {p.name for p in SHM_DIR.glob(SHM_PATTERN)} if SHM_DIR.is_dir() else set()


def _mapped_shm() -> set[str]:
    mapped = set()
    for maps in pathlib.Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "/dev/shm/deepspeed_allreduce_buffer_" in line:
                mapped.add(line.split("/dev/shm/", 1)[1].split()[0])
    return mapped


_RUNNERS: list[Runner] = []


def remove_runners_shm(since: int = 0) -> None:
    """Remove what the runners started (from index ``since`` on) left in /dev/shm."""
    for runner in _RUNNERS[since:]:
        runner.take_leaked_shm()


# ----- torch's extension locks ------------------------------------------------------------
# torch.utils.cpp_extension takes a FileBaton (an O_EXCL file ``lock`` in the op's build
# directory, kept open by its holder) to load or build a DeepSpeed op. A process killed while
# holding it leaves the file, and every later load on the machine waits for it forever.


def torch_locks(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    return ext_locks.extension_locks(root)


def held_files(pids: Sequence[int] | None = None) -> set[str]:
    """Paths open in the given processes (every process when None)."""
    return ext_locks.open_files(pids)


def clear_stale_torch_locks() -> list[pathlib.Path]:
    """Remove torch extension locks no process holds (as the runner does)."""
    return ext_locks.clear_stale_locks()


@pytest.fixture(scope="module", autouse=True)
def remove_leaked_shm_buffers() -> Iterator[None]:
    """Import into a test module: removes what its runs leaked in /dev/shm, and stale
    torch extension locks (before, so a stale lock cannot hang the module's runs)."""
    clear_stale_torch_locks()
    first = len(_RUNNERS)
    try:
        yield
    finally:
        for runner in _RUNNERS[first:]:
            runner.kill()
        remove_runners_shm(first)
        clear_stale_torch_locks()


# ----- processes ------------------------------------------------------------------------


def _state(pid_dir: pathlib.Path) -> str:
    stat = (pid_dir / "stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _touches(pid_dir: pathlib.Path, needle: str) -> bool:
    cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if needle in cmdline:
        return True
    try:
        if os.readlink(pid_dir / "cwd").startswith(needle):
            return True
    except OSError:
        pass
    try:
        fds = list((pid_dir / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(needle):
                return True
        except OSError:
            continue
    return False


def processes_of(run_dir: pathlib.Path, exclude: Sequence[int] = ()) -> dict[int, str]:
    """Live (non-zombie) processes that name ``run_dir`` in their command line, run in it,
    or hold a file in it open; pid -> command line. This test process is left out."""
    needle = str(run_dir)
    skip = {os.getpid(), *exclude}
    found: dict[int, str] = {}
    for pid_dir in pathlib.Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) in skip:
            continue
        try:
            if _state(pid_dir) in ("Z", "X") or not _touches(pid_dir, needle):
                continue
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # gone meanwhile
        found[int(pid_dir.name)] = cmdline.decode(errors="replace").strip()
    return found


def trial_processes(run_dir: pathlib.Path) -> dict[int, str]:
    """Rank processes of the run's trials (``bootstrap RUN_DIR/trials/<id>/...``)."""
    trials = str(run_dir / "trials")
    return {
        pid: cmd
        for pid, cmd in processes_of(run_dir).items()
        if "determined_dsat.integration.bootstrap" in cmd and trials in cmd
    }


def no_processes_left(run_dir: pathlib.Path, within: float, exclude: Sequence[int] = ()) -> None:
    """Assert that every process of the run is gone within ``within`` seconds."""
    deadline = time.monotonic() + within
    left = processes_of(run_dir, exclude)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of(run_dir, exclude)
    assert not left, f"processes left behind: {left}"


def kill_leftovers(run_dir: pathlib.Path) -> None:
    """Cleanup after a failed test: SIGKILL the processes this run started (by pid)."""
    for pid in processes_of(run_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, runner: Runner | None = None
) -> None:
    """Poll ``check`` until true; fail (with the runner's output) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if runner is not None and runner.proc.poll() is not None:
            raise AssertionError(f"dsat exited before {what}\n{runner.describe()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ----- checks of a finished run ----------------------------------------------------------


def check_batch(line: Mapping[str, Any], slots: int) -> None:
    """The batch settings a trial got are consistent with its line in trials.jsonl."""
    over = line["overwrites"]
    mbs, gas = line["mbs"], line["gas"]
    assert over["train_micro_batch_size_per_gpu"] == mbs, line
    assert over["gradient_accumulation_steps"] == gas, line
    assert over["train_batch_size"] == mbs * gas * slots, line
    assert mbs >= 1 and gas >= 1


def check_trial_dir(run_dir: pathlib.Path, line: Mapping[str, Any], slots: int) -> pathlib.Path:
    """Every rank's log is kept in the trial's own directory."""
    trial_dir = run_dir / "trials" / line["request_id"]
    assert trial_dir.is_dir(), f"no directory for trial {line['trial_id']}"
    for rank in range(slots):
        log = trial_dir / f"rank{rank}.log"
        assert log.is_file() and log.stat().st_size > 0, f"missing or empty {log}"
    assert not (trial_dir / f"rank{slots}.log").exists()
    sheet = read_json(trial_dir / "dsat_trial.json")
    assert sheet["hparams"]["overwrite_deepspeed_args"] == line["overwrites"]
    return trial_dir


KINDS = {"profile", "baseline", "search", "confirm"}
# The examples' own ds_config.json: micro-batch 8, no accumulation, ZeRO-1.
USER_MBS, USER_GAS = 8, 1


def _check_run(line: Mapping[str, Any], trial_dir: pathlib.Path) -> None:
    """What a measuring trial (baseline, search, confirm) leaves, by outcome."""
    assert line["overwrites"]["autotuning"]["enabled"] is True
    assert line["duration_s"] > 0
    if line["status"] == "ok":
        for key in ("throughput", "latency", "FLOPS_per_gpu"):
            assert line["metrics"][key] > 0, (key, line)
        assert (trial_dir / "autotuning_metric.json").is_file()
        assert line["detail"] == ""
    elif line["status"] == "oom":  # e.g. ZeRO-1's 2 GB reduce bucket under the cap
        assert "memory" in line["detail"], line["detail"]
    else:
        assert line["detail"], line


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def check_finished_search(
    runner: Runner,
    max_trials: int,
    slots: int,
    memory_cap: int | None = MEMORY_CAP_MIB,
    train_batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """The checks every finished search passes (task (a)); returns trials.jsonl."""
    run_dir = runner.run_dir
    assert runner.proc.returncode == 0, runner.describe()
    lines = read_trials(run_dir)
    assert len(lines) == max_trials, runner.describe()
    assert [line["trial_id"] for line in lines] == list(range(1, max_trials + 1))
    assert len({line["request_id"] for line in lines}) == max_trials
    assert all(line["status"] in STATUSES for line in lines)
    assert {line["kind"] for line in lines} <= KINDS
    by_kind = {kind: [line for line in lines if line["kind"] == kind] for kind in KINDS}

    # The profiling trial: first, alone, with the model's numbers.
    (profile,) = by_kind["profile"]
    assert profile is lines[0] and profile["status"] == "ok", profile
    metrics = profile["metrics"]
    for key in ("num_params", "trainable_num_params", "activation_mem_per_gpu", "gpu_mem"):
        assert metrics[key] > 0, (key, metrics)
    if memory_cap is not None:
        # On CPU the device memory is the process's address-space cap.
        assert metrics["gpu_mem"] <= memory_cap * 2**20
    assert profile["overwrites"]["autotuning"]["enabled"] is True
    check_batch(profile, slots)
    check_trial_dir(run_dir, profile, slots)
    assert (run_dir / "trials" / profile["request_id"] / "model_info.json").is_file()

    # The baseline: the user's ds_config as it is (their batch and ZeRO block).
    assert len(by_kind["baseline"]) <= 1
    for line in by_kind["baseline"]:
        check_batch(line, slots)
        assert (line["mbs"], line["gas"]) == (USER_MBS, USER_GAS), line
        assert "zero_optimization" not in line["overwrites"]
        _check_run(line, check_trial_dir(run_dir, line, slots))

    # Search trials: consistent batch settings, every rank's log, real measurements.
    searches = by_kind["search"]
    for line in searches:
        check_batch(line, slots)
        assert line["overwrites"]["zero_optimization"]["stage"] == line["stage"]
        _check_run(line, check_trial_dir(run_dir, line, slots))
    if train_batch_size is not None:  # --train-batch-size holds for all but the baseline
        sizes = {line["overwrites"]["train_batch_size"] for line in [profile, *searches]}
        assert sizes == {train_batch_size}
    ok = [line for line in searches if line["status"] == "ok"]
    assert ok, f"no search trial succeeded\n{runner.describe()}"

    # Confirmation trials re-measure a successful search trial's exact configuration.
    by_id = {line["request_id"]: line for line in lines}
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in by_kind["confirm"]:
        original = by_id[line["confirms"]]
        assert original["kind"] == "search" and original["status"] == "ok", original
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert line["overwrites"][key] == original["overwrites"][key]
        assert (
            line["overwrites"]["zero_optimization"] == original["overwrites"]["zero_optimization"]
        )
        assert line["trial_id"] > original["trial_id"]
        _check_run(line, check_trial_dir(run_dir, line, slots))
        runs.setdefault(original["request_id"], [original]).append(line)

    def throughput(line: Mapping[str, Any]) -> float:  # a failed re-run is the worst
        return float(line["metrics"]["throughput"]) if line["status"] == "ok" else -math.inf

    best_metrics = read_json(run_dir / "best_ds_metrics.json")
    if runs:  # the winner: the best median over its measurements
        medians = {rid: _median([throughput(r) for r in group]) for rid, group in runs.items()}
        winner_id = max(medians, key=lambda rid: medians[rid])
        best_line = by_id[winner_id]
        group = [r for r in runs[winner_id] if r["status"] == "ok"]
        assert best_metrics["throughput"] == _median([throughput(r) for r in group])
        assert best_metrics["dsat_measurements"] == len(runs[winner_id])
    else:
        best_line = max(ok, key=throughput)
        assert best_metrics["throughput"] == best_line["metrics"]["throughput"]
    best = read_json(run_dir / "best_ds_config.json")
    assert "autotuning" not in best
    assert best["train_micro_batch_size_per_gpu"] == best_line["mbs"]
    assert best["gradient_accumulation_steps"] == best_line["gas"]
    assert best["train_batch_size"] == best_line["mbs"] * best_line["gas"] * slots
    assert best["zero_optimization"] == best_line["overwrites"]["zero_optimization"]
    assert best["optimizer"]["type"] == "AdamW"  # the user's ds_config, merged

    out = runner.stdout
    assert "DeepSpeed autotuning summary" in out, runner.describe()
    assert "Best: " in out and str(run_dir / "best_ds_config.json") in out
    if any(line["status"] == "ok" for line in by_kind["baseline"]):
        assert "than your ds_config.json" in out, out
    assert "Search ended:" in out
    return lines


def all_files(root: pathlib.Path) -> Iterator[pathlib.Path]:
    return (p for p in root.rglob("*") if p.is_file())
