"""End to end: real DeepSpeed searches on CPU through the CLI (``--backend local``).

Both examples: the Core API script (``examples/core_api``, 1 and 2 slots per trial)
and the ``DeepSpeedTrial`` class (``examples/deepspeed_trial``, run by our trial
driver). Each search runs once per module; the tests check what it left.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    EXAMPLES,
    MEMORY_CAP_MIB,
    Runner,
    check_finished_search,
    copy_example,
    kill_leftovers,
    no_processes_left,
    read_json,
    read_trials,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
)

from determined_dsat import cli
from determined_dsat.runners.cluster.configs import custom_experiment_config
from determined_dsat.space.experiment import load_experiment

pytestmark = pytest.mark.slow

ROOMY_CAP_MIB = 4000


def _search(
    tmp: pathlib.Path, model_dir: pathlib.Path, max_trials: int, cap: int, *extra: str
) -> Runner:
    run_dir = tmp / "run"
    try:
        args = search_args("binary", model_dir, run_dir, max_trials, *extra, memory_cap=cap)
        return run_dsat(args, run_dir, timeout=300, name="search")
    finally:
        kill_leftovers(run_dir)


@pytest.fixture(scope="module")
def core_api_1(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """Free global batch: micro-batches from the memory model (about 130 at most). No
    baseline, so 5 trials leave one to confirm the winner (a quarter of those left)."""
    tmp, model_dir = tmp_path_factory.mktemp("core1"), EXAMPLES / "core_api"
    return _search(tmp, model_dir, 5, MEMORY_CAP_MIB, "--no-baseline")


@pytest.fixture(scope="module")
def core_api_2(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """Two ranks per trial, then ``--run-full-experiment`` with the best config."""
    tmp = tmp_path_factory.mktemp("core2")

    def two_slots(config: dict[str, Any]) -> None:
        config["resources"]["slots_per_trial"] = 2

    model_dir = copy_example("core_api", tmp / "model", edit=two_slots)
    # A fixed global batch keeps micro-batches small (divisors of 16), so the cap can leave
    # room for ZeRO-1's 2 GB reduce bucket and every trial fits.
    # --no-baseline: with one trial at a time the baseline ends the search (see
    # test_baseline_with_one_trial_at_a_time_leaves_room_to_search).
    args = ("--train-batch-size", "32", "--run-full-experiment", "--no-baseline")
    return _search(tmp, model_dir, 3, ROOMY_CAP_MIB, *args)


@pytest.fixture(scope="module")
def deepspeed_trial_1(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """A fixed global batch: the controller accumulates ``gas`` micro-batches per step."""
    tmp, model_dir = tmp_path_factory.mktemp("dstrial"), EXAMPLES / "deepspeed_trial"
    return _search(tmp, model_dir, 3, ROOMY_CAP_MIB, "--train-batch-size", "64")


def test_core_api_one_slot_search(core_api_1: Runner) -> None:
    lines = check_finished_search(core_api_1, max_trials=5, slots=1)
    profile_log = core_api_1.run_dir / "trials" / lines[0]["request_id"] / "rank0.log"
    assert "ZeRO stage 1, micro-batch 1 x 1" in profile_log.read_text()
    kinds = [line["kind"] for line in lines]
    assert "baseline" not in kinds and kinds.count("confirm") == 1, kinds
    no_processes_left(core_api_1.run_dir, within=1.0)


def test_core_api_two_slot_search(core_api_2: Runner) -> None:
    lines = check_finished_search(core_api_2, 3, 2, ROOMY_CAP_MIB, train_batch_size=32)
    assert [line["kind"] for line in lines] == ["profile", "search", "search"]
    # Both ranks trained: each logged the model line of train.py.
    for line in lines:
        trial_dir = core_api_2.run_dir / "trials" / line["request_id"]
        for rank in (0, 1):
            log = (trial_dir / f"rank{rank}.log").read_text()
            assert f"micro-batch {line['mbs']} x {line['gas']}" in log, (rank, log[-2000:])
    no_processes_left(core_api_2.run_dir, within=1.0)


def test_full_experiment_trains_with_best_config(core_api_2: Runner) -> None:
    run_dir = core_api_2.run_dir
    assert "Full experiment done" in core_api_2.stdout, core_api_2.describe()
    trial_dir = run_dir / "trials" / "full-experiment"
    sheet = read_json(trial_dir / "dsat_trial.json")
    assert sheet["length"] == 20  # searcher.max_length of the experiment
    hparams = sheet["hparams"]
    assert "_use_dsat_mode" not in hparams
    overwrites = hparams["overwrite_deepspeed_args"]
    assert "autotuning" not in overwrites
    best = read_json(run_dir / "best_ds_config.json")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert overwrites[key] == best[key]
    assert overwrites["zero_optimization"] == best["zero_optimization"]
    # Trained to the end and validated: train.py's val_loss and losses reported.
    reported = [json.loads(raw) for raw in (trial_dir / "dsat_metrics.jsonl").open()]
    validation = [r for r in reported if r["group"] == "validation"]
    assert validation and validation[-1]["steps_completed"] == 20
    assert validation[-1]["metrics"]["val_loss"] > 0
    # A sharded DeepSpeed checkpoint: both ranks' ZeRO optimizer partitions.
    checkpoints = trial_dir / "checkpoints"
    names = [p.name for p in checkpoints.rglob("*") if p.is_file()]
    assert "mp_rank_00_model_states.pt" in names, names
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in n and n.endswith("optim_states.pt") for n in names)
    for rank in (0, 1):
        assert (trial_dir / f"rank{rank}.log").stat().st_size > 0
    # The search itself is untouched by the full run.
    assert len(read_trials(run_dir)) == 3


def test_deepspeed_trial_one_slot_search(deepspeed_trial_1: Runner) -> None:
    lines = check_finished_search(deepspeed_trial_1, 3, 1, ROOMY_CAP_MIB, train_batch_size=64)
    assert sorted(line["kind"] for line in lines) == ["baseline", "profile", "search"]
    # The trial class ran through our driver, under Determined's DeepSpeed controller.
    sheet = read_json(
        deepspeed_trial_1.run_dir / "trials" / lines[0]["request_id"] / "dsat_trial.json"
    )
    assert sheet["experiment_config"]["entrypoint"].endswith("--trial model_def:GPTTrial")
    no_processes_left(deepspeed_trial_1.run_dir, within=1.0)


@pytest.fixture(scope="module")
def deepspeed_trial_cluster_entrypoint(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """The DeepSpeedTrial example with the entrypoint its ``custom`` experiment gets on a
    cluster (our dsat-mode driver under Determined's DeepSpeed launcher)."""
    tmp = tmp_path_factory.mktemp("dstrial-cluster")
    user = copy_example("deepspeed_trial", tmp / "user")
    settings = cli.parse_settings(
        ["binary", str(user / "deepspeed-cpu.yaml"), str(user), "--backend", "determined"]
    )
    experiment = load_experiment(settings.config_path, settings.model_dir)
    custom = custom_experiment_config(settings, experiment.raw, {}, runner_experiment_id=1)

    def use_cluster_entrypoint(config: dict[str, Any]) -> None:
        config["entrypoint"] = custom["entrypoint"]

    model_dir = copy_example("deepspeed_trial", tmp / "model", edit=use_cluster_entrypoint)
    return _search(tmp, model_dir, 2, ROOMY_CAP_MIB, "--train-batch-size", "64", "--no-baseline")


def test_deepspeed_trial_runs_through_the_cluster_entrypoint(
    deepspeed_trial_cluster_entrypoint: Runner,
) -> None:
    runner = deepspeed_trial_cluster_entrypoint
    lines = check_finished_search(runner, 2, 1, ROOMY_CAP_MIB, train_batch_size=64)
    assert [line["kind"] for line in lines] == ["profile", "search"]
    assert lines[1]["status"] == "ok" and lines[1]["metrics"]["throughput"] > 0
    sheet = read_json(runner.run_dir / "trials" / lines[1]["request_id"] / "dsat_trial.json")
    assert sheet["experiment_config"]["entrypoint"] == (
        "python3 -m determined.launch.deepspeed python3 -m "
        "determined_dsat.integration.trial_driver model_def:GPTTrial"
    )
    no_processes_left(runner.run_dir, within=1.0)


def test_search_leaves_no_shared_memory_behind(core_api_2: Runner) -> None:
    """Finished trials leave no DeepSpeed shared memory in /dev/shm (DeepSpeed 0.19.8's CPU
    allreduce never unlinks its 66 MiB per-rank segment; the runner must)."""
    # 3 search trials + the full experiment, 2 ranks each.
    assert core_api_2.leaked_shm == set(), sorted(core_api_2.leaked_shm)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """The baseline on, one trial at a time (as with slots_per_trial = every slot)."""
    tmp, model_dir = tmp_path_factory.mktemp("mct1"), EXAMPLES / "core_api"
    extra = ("--train-batch-size", "32", "--max-concurrent-trials", "1")
    return _search(tmp, model_dir, 3, ROOMY_CAP_MIB, *extra)


def test_baseline_with_one_trial_at_a_time_leaves_room_to_search(one_at_a_time: Runner) -> None:
    """With one trial at a time, the baseline holding the only slot is not the end of the
    search (it used to end with 'the search space is exhausted' and no search trial)."""
    kinds = [line["kind"] for line in read_trials(one_at_a_time.run_dir)]
    # The baseline runs after the first search results (here: the one search trial).
    assert kinds == ["profile", "search", "baseline"], one_at_a_time.describe()
    assert one_at_a_time.proc.returncode == 0
