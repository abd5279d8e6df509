"""End to end through ``dsat ... --backend replay``: files in the run directory, resume, locking.

The experiment is written to a temporary directory: ``deepspeed.yaml`` (2 slots per trial),
``ds_config.json`` (bf16) and a replay function built on a seeded synthetic landscape. What
the run directory must hold is derived from that landscape and the ds_config, not from
earlier runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest
import yaml

from determined_dsat import cli
from determined_dsat.store.run_dir import CONFIG_HASH_KEY, RunDirectory, config_hash
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import Outcome

SLOTS = 2
DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "gradient_clipping": 1.0,
}
LINE_KEYS = {
    "trial_id", "request_id", "kind", "status", "stage", "mbs", "gas", "overwrites", "metrics",
    "duration_s", "lineage_id", "parent_id", "detail", "finished_at",
}  # fmt: skip
METHODS = ["binary", "random", "asha"]


def landscape_for(seed: int) -> Landscape:
    return attrs.evolve(Landscape.draw(seed), slots=SLOTS)


def pick_seed() -> int:
    """A landscape on 2 slots where every stage fits, with moderate ceilings (small tables)."""
    seed = 0
    while not all(4 <= landscape_for(seed).true_max_mbs(s) <= 120 for s in (1, 2, 3)):
        seed += 1
    return seed


SEED = pick_seed()
LANDSCAPE = landscape_for(SEED)

REPLAY_FN = f"""
import os
import time

import attrs

from determined_dsat.testing.synthetic import Landscape

LANDSCAPE = attrs.evolve(Landscape.draw({SEED}), slots={SLOTS})


def fn(cfg):
    return LANDSCAPE(cfg)


def timed_fn(cfg):
    # Trials take different (simulated) times, so completion order differs from launch order.
    metrics = dict(LANDSCAPE(cfg))
    metrics["duration_s"] = 0.5 + cfg["train_micro_batch_size_per_gpu"] % 7
    return metrics


def slow_fn(cfg):
    time.sleep(float(os.environ.get("DSAT_TEST_SLEEP", "0.15")))
    return LANDSCAPE(cfg)
"""


@pytest.fixture(autouse=True)
def _isolate_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each in-process ``dsat`` run adds a file handler; close and drop them afterwards."""
    monkeypatch.delenv("DET_MASTER", raising=False)
    logger = logging.getLogger("determined_dsat")
    handlers, level = list(logger.handlers), logger.level
    yield
    for handler in logger.handlers[:]:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


@pytest.fixture
def model(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_model(tmp_path)


def make_model(tmp_path: pathlib.Path) -> pathlib.Path:
    """A model dir with the replay functions, its ds_config and ``deepspeed.yaml``."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "ds_config.json").write_text(json.dumps(DS_CONFIG))
    config = {
        "name": "replay-e2e",
        "entrypoint": "python3 -m determined.launch.deepspeed python3 train.py",
        "hyperparameters": {"deepspeed_config": "ds_config.json", "lr": 1e-4},
        "resources": {"slots_per_trial": SLOTS},
        "searcher": {"name": "single", "metric": "loss", "max_length": 10},
    }
    (model / "deepspeed.yaml").write_text(yaml.safe_dump(config))
    (model / "replay_fn.py").write_text(REPLAY_FN)
    return model


def args(
    method: str, model: pathlib.Path, *flags: str, source: str = "fn", max_trials: int = 16
) -> list[str]:
    replay = source if source.endswith(".json") else f"{model / 'replay_fn.py'}:{source}"
    return [
        method, str(model / "deepspeed.yaml"), str(model),
        "--backend", "replay", "--replay-source", replay, "--max-trials", str(max_trials),
        *flags,
    ]  # fmt: skip


def dsat(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def read_lines(run: pathlib.Path) -> list[dict[str, Any]]:
    text = (run / "trials.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def full_config(line: Mapping[str, Any]) -> dict[str, Any]:
    return merged(DS_CONFIG, line["overwrites"])


def best_line(lines: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    ok = [ln for ln in lines if ln["kind"] == "search" and ln["status"] == "ok"]
    assert ok, "no search trial succeeded"
    smaller = metric in ("latency", "forward", "backward")
    return (min if smaller else max)(ok, key=lambda ln: ln["metrics"][metric])


def check_run_dir(run: pathlib.Path, max_trials: int, metric: str = "FLOPS_per_gpu") -> None:
    lines = read_lines(run)
    assert len(lines) == max_trials
    assert [ln["trial_id"] for ln in lines] == list(range(1, max_trials + 1))
    assert len({ln["request_id"] for ln in lines}) == max_trials
    for line in lines:
        extra = {"confirms"} if line["kind"] == "confirm" else set()
        assert set(line) == LINE_KEYS | extra
        assert line["status"] in {o.value for o in Outcome}
        overwrites = line["overwrites"]
        assert overwrites["train_micro_batch_size_per_gpu"] == line["mbs"]
        assert overwrites["gradient_accumulation_steps"] == line["gas"]
        assert overwrites["train_batch_size"] == line["mbs"] * line["gas"] * SLOTS
    profile = lines[0]
    assert profile["kind"] == "profile" and profile["status"] == "ok"
    assert profile["metrics"] == LANDSCAPE.profile.to_json()
    kinds = [ln["kind"] for ln in lines[1:]]
    # The CLI measures the user's ds_config once and re-measures the top configs at the end.
    assert kinds.count("baseline") == 1 and set(kinds) <= {"baseline", "search", "confirm"}
    baseline = next(ln for ln in lines if ln["kind"] == "baseline")
    assert "zero_optimization" not in baseline["overwrites"]  # the user's own ZeRO block
    assert baseline["mbs"] == DS_CONFIG["train_micro_batch_size_per_gpu"]
    search = [ln for ln in lines if ln["kind"] == "search"]
    by_id = {ln["request_id"]: ln for ln in search}
    confirms = [ln for ln in lines if ln["kind"] == "confirm"]
    assert 1 <= len(confirms) <= 3 and kinds[-len(confirms) :] == ["confirm"] * len(confirms)
    for line in confirms:
        original = by_id[line["confirms"]]
        assert original["status"] == "ok" and line["overwrites"] == original["overwrites"]
    for line in search:
        assert line["overwrites"]["zero_optimization"]["stage"] == line["stage"]
        assert "autotuning" in line["overwrites"]
        assert line["lineage_id"] is not None

    best = best_line(lines, metric)
    best_config = json.loads((run / "best_ds_config.json").read_text())
    assert "autotuning" not in best_config
    expected = full_config(best)
    del expected["autotuning"]
    assert best_config == expected
    for key, value in DS_CONFIG.items():
        if key not in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert best_config[key] == value  # the user's settings survive
    assert best_config["train_batch_size"] == (
        best_config["train_micro_batch_size_per_gpu"]
        * best_config["gradient_accumulation_steps"]
        * SLOTS
    )
    best_metrics = json.loads((run / "best_ds_metrics.json").read_text())
    assert best_metrics.pop(CONFIG_HASH_KEY) == config_hash(best_config)
    # Replay measurements are deterministic, so each confirmed median is the first value.
    assert best_metrics.pop("dsat_measurements") == 2
    assert best_metrics == best["metrics"]

    state = json.loads((run / "state.json").read_text())
    assert isinstance(state["version"], int)
    assert isinstance(state["method"]["version"], int)


@pytest.mark.parametrize("method", METHODS)
def test_replay_function_search_in_process(
    method: str, model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code, out, err = dsat(args(method, model, "--run-dir", str(run)), capsys)
    assert code == 0, err
    check_run_dir(run, 16)
    # Outcomes and metrics are the landscape's: OOM exactly beyond the true ceiling.
    for line in read_lines(run)[1:]:
        zero = line["overwrites"].get("zero_optimization") or DS_CONFIG.get("zero_optimization")
        fits = line["mbs"] <= LANDSCAPE.true_max_mbs(line["stage"], zero=zero)
        assert (line["status"] == "ok") == fits, line
        if fits:
            assert line["metrics"] == LANDSCAPE(full_config(line))
    assert "best_ds_config.json" in out  # the summary points at the result
    # The budget is announced before the first trial's result.
    assert "planned budget: 16 trials at most" in err
    assert err.index("planned budget") < err.index("best")


def test_replay_function_search_as_subprocess_matches_in_process(
    model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub, inproc = tmp_path / "sub", tmp_path / "inproc"
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    env.pop("DET_MASTER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "determined_dsat", *args("random", model, "--run-dir", str(sub))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_run_dir(sub, 16)
    code, _, err = dsat(args("random", model, "--run-dir", str(inproc)), capsys)
    assert code == 0, err

    # Same seed, same search, in another process: the very same trials.
    def timeless(run: pathlib.Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in ln.items() if k != "finished_at"} for ln in read_lines(run)]

    assert timeless(sub) == timeless(inproc)


def landscape_table(path: pathlib.Path) -> dict[tuple[int, int], dict[str, Any]]:
    """A replay table of every (stage, mbs) up to twice the true ceiling, noise-free."""
    rows, by_key = [], {}
    for stage in (1, 2, 3):
        ceiling = LANDSCAPE.true_max_mbs(stage)
        for mbs in range(1, 2 * ceiling + 2):
            key = {"train_micro_batch_size_per_gpu": mbs, "zero_optimization": {"stage": stage}}
            value = LANDSCAPE.true_throughput({"stage": stage}, mbs)
            if value is None:
                row: dict[str, Any] = {"config": key, "error": "oom"}
            else:
                row = {"config": key, "metrics": {"throughput": value, "latency": mbs / value}}
            rows.append(row)
            by_key[(stage, mbs)] = row
    path.write_text(json.dumps({"profile": LANDSCAPE.profile.to_json(), "trials": rows}))
    return by_key


@pytest.mark.parametrize("method", METHODS)
def test_replay_table_search(
    method: str, model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = landscape_table(model / "table.json")
    run = tmp_path / "run"
    argv = args(
        method, model, "--run-dir", str(run), "--metric", "latency",
        source=str(model / "table.json"),
    )  # fmt: skip
    code, _, err = dsat(argv, capsys)
    assert code == 0, err
    check_run_dir(run, 16, metric="latency")
    for line in read_lines(run)[1:]:
        row = rows.get((line["stage"], line["mbs"]))
        if row is None:
            assert line["status"] == "error" and "no row" in line["detail"]
        elif "error" in row:
            assert line["status"] == "oom"
        else:
            assert line["status"] == "ok" and line["metrics"] == row["metrics"]


# ----- resume ---------------------------------------------------------------------------------

RESUME_FLAGS = ("--max-concurrent-trials", "2")
COMPARED = (
    "trial_id", "request_id", "kind", "status", "stage", "mbs", "gas", "overwrites", "metrics",
    "lineage_id", "parent_id",
)  # fmt: skip


def comparable(run: pathlib.Path) -> list[tuple[Any, ...]]:
    return [tuple(json.dumps(ln[k], sort_keys=True) for k in COMPARED) for ln in read_lines(run)]


def resume_args(method: str, model: pathlib.Path, *flags: str, source: str) -> list[str]:
    return args(method, model, *flags, *RESUME_FLAGS, source=source, max_trials=12)


def complete_run(
    method: str,
    model: pathlib.Path,
    run: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    source: str = "fn",
) -> list[tuple[Any, ...]]:
    code, _, err = dsat(resume_args(method, model, "--run-dir", str(run), source=source), capsys)
    assert code == 0, err
    return comparable(run)


class Crash(KeyboardInterrupt):
    """Stands in for the process dying at a chosen point (``cli.main`` returns 130)."""


def crash_and_resume(
    method: str,
    where: str,
    k: int,
    source: str,
    model: pathlib.Path,
    run: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[Any, ...]] | None:
    """Run until the ``k``-th call of ``RunDirectory.<where>`` "kills" the runner, then
    ``--resume``; the resumed run's trials, or None when nothing was saved to resume."""
    original = getattr(RunDirectory, where)
    calls = {"n": 0}

    def crashing(self: RunDirectory, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == k:
            raise Crash()
        return original(self, *a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, where, crashing)
        code, _, _ = dsat(resume_args(method, model, "--run-dir", str(run), source=source), capsys)
    assert code == 130
    if not (run / "state.json").exists():
        assert where == "write_state" and k == 1  # crashed before the first checkpoint
        return None
    partial = len(read_lines(run)) if (run / "trials.jsonl").exists() else 0
    assert partial < 12
    code, _, err = dsat(resume_args(method, model, "--resume", str(run), source=source), capsys)
    assert code == 0, err
    return comparable(run)


CRASH_POINTS = [
    *[("binary", "write_state", k) for k in (1, 2, 3, 7, 12)],
    *[("binary", "append_trial", k) for k in (1, 2, 6, 12)],
    ("random", "write_state", 5),
    ("asha", "write_state", 5),
    ("random", "append_trial", 8),
    ("asha", "append_trial", 8),
]


@pytest.mark.parametrize(
    ("method", "where", "k", "source"),
    [
        *[(*point, "fn") for point in CRASH_POINTS],
        *[(*point, "timed_fn") for point in CRASH_POINTS if point[1] == "append_trial"],
    ],
)
def test_resume_after_crash_at_a_chosen_point(
    method: str,
    where: str,
    k: int,
    source: str,
    model: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash in ``write_state`` falls between logging a trial and saving the state that
    has it; one in ``append_trial`` falls before the trial's line is written. ``fn`` trials
    all take 1 simulated second, ``timed_fn`` ones 0.5-6.5 s."""
    expected = complete_run(method, model, tmp_path / "A", capsys, source)
    got = crash_and_resume(method, where, k, source, model, tmp_path / "B", capsys, monkeypatch)
    if got is not None:
        assert got == expected


@pytest.mark.parametrize("method", METHODS)
def test_resume_between_log_and_checkpoint_with_uneven_durations(
    method: str,
    model: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = complete_run(method, model, tmp_path / "A", capsys, "timed_fn")
    diverged = []
    for k in range(2, 13):
        run = tmp_path / f"B{k}"
        got = crash_and_resume(
            method, "write_state", k, "timed_fn", model, run, capsys, monkeypatch
        )
        if got != expected:
            diverged.append(k)
    assert diverged == []


def test_resume_after_sigkill_and_lock_refusal(
    model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = complete_run("binary", model, tmp_path / "A", capsys)
    run = tmp_path / "B"
    env = {**os.environ, "DSAT_TEST_SLEEP": "0.2"}
    env.pop("DET_MASTER", None)
    argv = resume_args("binary", model, "--run-dir", str(run), source="slow_fn")
    stderr_path = tmp_path / "killed.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "determined_dsat", *argv],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=tmp_path,
        )

    def logged() -> int:
        try:
            return len((run / "trials.jsonl").read_text().splitlines())
        except FileNotFoundError:
            return 0

    try:
        deadline = time.monotonic() + 60
        while logged() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, (
            f"the search ended before it could be interrupted: {stderr_path.read_text()}"
        )

        # A second runner on the same run directory is refused while the first holds it.
        resume = resume_args("binary", model, "--resume", str(run), source="fn")
        code, _, err = dsat(resume, capsys)
        assert code != 0
        assert "in use by another dsat runner" in err and f"pid {proc.pid}" in err
        assert str(run) in err
        assert proc.poll() is None

        while logged() < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert 4 <= logged() < 12

    code, _, err = dsat(resume, capsys)
    assert code == 0, err
    got = comparable(run)
    assert len({line[1] for line in got}) == len(got), "a trial was logged twice"
    assert got == expected


def test_second_runner_on_locked_run_dir_fails_naming_the_lock(
    model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = RunDirectory(run)
    holder.acquire()
    try:
        code, _, err = dsat(args("binary", model, "--run-dir", str(run)), capsys)
    finally:
        holder.release()
    assert code != 0
    assert "in use by another dsat runner" in err
    assert str(run) in err and f"pid {os.getpid()}" in err
    assert not (run / "trials.jsonl").exists()
    # Once the lock is free the same command runs.
    code, _, err = dsat(args("binary", model, "--run-dir", str(run)), capsys)
    assert code == 0, err


def test_in_process_runs_keep_separate_logs(
    model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert dsat(args("binary", model, "--run-dir", str(first)), capsys)[0] == 0
    size = (first / "dsat.log").stat().st_size
    assert size > 0
    assert dsat(args("binary", model, "--run-dir", str(second)), capsys)[0] == 0
    assert (first / "dsat.log").stat().st_size == size


CRASHES_AT_4 = """
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.testing.synthetic import Landscape

LANDSCAPE = Landscape.draw(3)


def fn(config):
    if config["train_micro_batch_size_per_gpu"] >= 4 and not is_profiling_config(config):
        return {"throughput": config["no such key"]}
    return LANDSCAPE(config)
"""


def test_a_replay_function_that_crashes_stops_with_exit_2_unless_asked(
    model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model / "replay_fn.py").write_text(CRASHES_AT_4)
    run = tmp_path / "stopped"
    code, _, err = dsat(args("binary", model, "--run-dir", str(run), "-mct", "1"), capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("dsat: error: ") and "replay_fn.py:fn raised KeyError" in last
    assert "micro-batch" in last and "--replay-errors-as-trials" in last
    finished = read_lines(run)  # what finished before the crash is kept
    assert finished and finished[0]["kind"] == "profile"
    run = tmp_path / "recorded"
    flags = ("--run-dir", str(run), "-mct", "1", "--replay-errors-as-trials")
    code, _, err = dsat(args("binary", model, *flags), capsys)
    assert code == 0, err
    errors = [ln for ln in read_lines(run) if ln["status"] == "error"]
    assert errors and all("KeyError" in ln["detail"] for ln in errors)
