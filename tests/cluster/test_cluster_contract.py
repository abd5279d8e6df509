"""The whole cluster search over real HTTP, against the master double.

``dsat ... --backend determined`` submits the search-runner experiment; the test then
plays the runner's container (the uploaded files unpacked as its working directory,
the cluster info and task token set) and runs our on-cluster entrypoint,
``search_runner.main()``, which uses ``det.core.init()`` and determined's own API
bindings. The double simulates the trials of the ``custom`` experiment with a synthetic
throughput landscape; every experiment config it receives is checked against the
Determined 0.37 schemas.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from determined.common.api import errors as api_errors
from determined.experimental import client
from expconf import ExpconfValidator, default_validator
from master_double import (
    USERNAME,
    Errored,
    ExperimentRecord,
    MasterDouble,
    RunnerTask,
    TrialResult,
    enter_cluster_task,
)

from determined_dsat import cli
from determined_dsat.runners.cluster import search_runner
from determined_dsat.space import ds_config as dsc
from determined_dsat.store import layout
from determined_dsat.testing.synthetic import GIB, Landscape

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_TRIALS = 14
# The example's shape on 2 x 24 GiB: some micro-batches run out of memory.
LANDSCAPE = attrs.evolve(Landscape.draw(3), slots=2, gpu_mem=24 * GIB)
CRASH_STAGE = 1  # the first stage-1 search trial above the smallest micro-batch crashes


class Trials:
    """The double's stand-in for DeepSpeed: metrics from the landscape, one crash."""

    def __init__(self, ds_config: dict[str, Any]) -> None:
        self.ds_config = ds_config
        self.crashed: str | None = None

    def __call__(self, hparams: dict[str, Any], length: int) -> TrialResult:
        overwrites = hparams[dsc.OVERWRITE_KEY]
        full = dsc.merge_overwrites(self.ds_config, overwrites)
        # Search trials (not the profiling or baseline trial) carry their ZeRO block.
        zero = overwrites.get("zero_optimization", {})
        if (
            self.crashed is None
            and zero.get("stage") == CRASH_STAGE
            and full["train_micro_batch_size_per_gpu"] > 1
        ):
            self.crashed = json.dumps(overwrites, sort_keys=True)
            return Errored("simulated NCCL crash")
        try:
            return LANDSCAPE(full)
        except MemoryError:
            # What dsat_reporting_context reports for an out-of-memory trial.
            return {"dsat_outcome": "oom"}


@pytest.fixture
def validator() -> ExpconfValidator:
    found = default_validator()
    if found is None:
        pytest.skip("the Determined 0.37 expconf schemas are not beside the checkout")
    return found


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "user" / "core_api"
    shutil.copytree(ROOT / "examples" / "core_api", path)
    return path


@pytest.fixture
def master(
    model_dir: pathlib.Path,
    validator: ExpconfValidator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> Iterator[MasterDouble]:
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(tmp_path / "det-config"))
    for name in ("DET_USER_TOKEN", "DET_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "_determined", None)
    monkeypatch.setattr(search_runner, "POLL_INTERVAL_S", 0.0)
    ds_config = json.loads((model_dir / "ds_config.json").read_text())
    with MasterDouble(Trials(ds_config), config_validator=validator.sanity_errors) as double:
        yield double


def submit(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *flags: str,
) -> int:
    """``dsat binary deepspeed.yaml MODEL_DIR`` with ``DET_MASTER`` set, as a user runs it."""
    monkeypatch.setenv("DET_MASTER", master.url)
    monkeypatch.setenv("DET_USER", USERNAME)
    monkeypatch.setenv("DET_PASS", "")
    argv = ["binary", str(model_dir / "deepspeed.yaml"), str(model_dir)]
    code = cli.main([*argv, "--max-trials", str(MAX_TRIALS), "--max-concurrent-trials", "3"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (line,) = [line for line in out.out.splitlines() if line.startswith("Created experiment")]
    return int(line.split()[-1])


def start_container(
    master: MasterDouble,
    runner_id: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    task: RunnerTask | None = None,
) -> RunnerTask:
    """Unpack the runner's upload as its working directory and enter its task."""
    if task is None:
        task = master.register_runner_task(experiment_id=runner_id)
    work = tmp_path / f"container-{task.trial_id}-{len(master.checkpoints(task.task_id))}"
    for name, data in master.experiment(runner_id).model_files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    monkeypatch.chdir(work)
    latest = master.latest_checkpoint(task.task_id)
    enter_cluster_task(monkeypatch, master, task, tmp_path, latest_checkpoint=latest)
    return task


def custom_experiment(master: MasterDouble) -> ExperimentRecord:
    (record,) = [exp for exp in master.experiments() if exp.custom]
    return record


def latest_files(master: MasterDouble, task: RunnerTask, tmp_path: pathlib.Path) -> pathlib.Path:
    """The directory of the runner's newest checkpoint (shared_fs under tmp_path)."""
    uuid = master.latest_checkpoint(task.task_id)
    assert uuid is not None
    (found,) = list((tmp_path / "shared_fs").rglob(uuid))
    return found


def trials_of(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "trials.jsonl").read_text().splitlines()]


def test_submission_uploads_settings_as_json_and_a_valid_runner_config(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runner_id = submit(master, model_dir, monkeypatch, capsys)
    record = master.experiment(runner_id)
    assert record.config["entrypoint"] == f"python3 -m {search_runner.__name__}"
    assert record.config["searcher"]["name"] == "single"
    files = record.model_definition
    assert layout.RUNNER_SETTINGS_FILE in files
    assert "deepspeed.yaml" in files and "core_api/train.py" in files
    assert "determined_dsat/runners/cluster/search_runner.py" in files
    assert not any(name.endswith((".pkl", ".pickle", ".pyc")) for name in files)
    settings = json.loads(record.model_files[layout.RUNNER_SETTINGS_FILE])
    assert settings["model_dir"] == "core_api" and settings["config_path"] == "deepspeed.yaml"
    assert settings["max_trials"] == MAX_TRIALS


def test_bad_input_launches_nothing(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DET_MASTER", master.url)
    argv = ["binary", str(model_dir / "deepspeed.yaml"), str(model_dir), "--max-trials", "1"]
    assert cli.main(argv) == 2
    assert "max-trials" in capsys.readouterr().err
    assert master.experiments() == []


def test_full_search_to_shutdown_with_an_errored_trial(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
) -> None:
    runner_id = submit(master, model_dir, monkeypatch, capsys)
    task = start_container(master, runner_id, monkeypatch, tmp_path)
    assert search_runner.main() == 0

    trials = custom_experiment(master)
    assert trials.state == "COMPLETED"
    assert trials.anomalies == [] and trials.duplicate_creates() == []
    assert len(trials.create_request_ids) == MAX_TRIALS
    assert f"experiment {runner_id}" in trials.config["description"]
    hparams = trials.config["hyperparameters"]
    assert hparams[dsc.USE_DSAT_MODE_KEY] is True
    assert hparams[dsc.OVERWRITE_KEY][dsc.AUTOTUNING_KEY]["enabled"] is True

    files = latest_files(master, task, tmp_path)
    lines = trials_of(files)
    assert sorted(line["request_id"] for line in lines) == sorted(trials.create_request_ids)
    # The crash arrived as trialExitedEarly(ERRORED) and steered the search: the same
    # lineage went on below the micro-batch that crashed.
    (crash,) = [line for line in lines if line["status"] == "error"]
    later = [line for line in lines if line["parent_id"] == crash["request_id"]]
    assert later and all(line["mbs"] < crash["mbs"] for line in later)
    # The best config is complete, trainable and matches the best trial.
    ok = [line for line in lines if line["status"] == "ok" and line["kind"] != "profile"]
    best_line = max(ok, key=lambda line: line["metrics"]["throughput"])
    best = json.loads((files / "best_ds_config.json").read_text())
    metrics = json.loads((files / "best_ds_metrics.json").read_text())
    assert dsc.AUTOTUNING_KEY not in best
    assert best["train_micro_batch_size_per_gpu"] == best_line["mbs"]
    assert best["zero_optimization"]["stage"] == best_line["stage"]
    assert metrics["throughput"] >= best_line["metrics"]["throughput"] * 0.9
    # The runner showed the best value in its own metrics, and checkpointed every event.
    reported = [body for _, kind, body in master.trial_reports() if kind == "metrics"]
    assert reported, master.trial_reports()
    steps = [c.metadata["steps_completed"] for c in master.checkpoints(task.task_id)]
    assert steps == sorted(steps) and len(steps) > MAX_TRIALS


def test_runner_crash_and_restart_resume_without_duplicates(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
) -> None:
    runner_id = submit(master, model_dir, monkeypatch, capsys)
    task = start_container(master, runner_id, monkeypatch, tmp_path)
    # The master refuses the 9th post (nothing applied): the runner process dies.
    master.fail_post_operations(9)
    with pytest.raises(api_errors.APIException):
        search_runner.main()
    before = custom_experiment(master)
    assert 0 < len(before.create_request_ids) < MAX_TRIALS

    start_container(master, runner_id, monkeypatch, tmp_path, task=task)
    assert search_runner.main() == 0
    trials = custom_experiment(master)
    assert trials.id == before.id, "the restarted runner must not create a second experiment"
    assert trials.state == "COMPLETED"
    assert trials.duplicate_creates() == [] and trials.anomalies == []
    assert len(trials.create_request_ids) == MAX_TRIALS
    lines = trials_of(latest_files(master, task, tmp_path))
    ids = [line["request_id"] for line in lines]
    assert len(ids) == len(set(ids)) == MAX_TRIALS


def test_run_full_experiment_trains_the_best_once(
    master: MasterDouble,
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
) -> None:
    monkeypatch.setattr(cli, "main", _with_flags(cli.main, "--run-full-experiment"), raising=True)
    runner_id = submit(master, model_dir, monkeypatch, capsys)
    task = start_container(master, runner_id, monkeypatch, tmp_path)
    assert search_runner.main() == 0
    full = [exp for exp in master.experiments() if exp.config["name"].startswith("(DSAT best)")]
    assert len(full) == 1
    config = full[0].config
    assert dsc.USE_DSAT_MODE_KEY not in config["hyperparameters"]
    assert dsc.AUTOTUNING_KEY not in config["hyperparameters"][dsc.OVERWRITE_KEY]
    best = json.loads((latest_files(master, task, tmp_path) / "best_ds_config.json").read_text())
    overwrites = config["hyperparameters"][dsc.OVERWRITE_KEY]
    assert overwrites["train_micro_batch_size_per_gpu"] == best["train_micro_batch_size_per_gpu"]
    # A restart after the search (the container dies and comes back) creates no second one.
    start_container(master, runner_id, monkeypatch, tmp_path, task=task)
    assert search_runner.main() == 0
    assert len([e for e in master.experiments() if e.config["name"].startswith("(DSAT best)")]) == 1


def _with_flags(main: Any, *flags: str) -> Any:
    def wrapped(argv: list[str]) -> int:
        return int(main([*argv, *flags]))

    return wrapped
