"""End to end: the HF Trainer example (``examples/hf_trainer``) searched through the CLI on CPU.

Two searches, one per shape of ``searcher.max_length`` (a plain number, and
``{batches: N}`` that differs from ``--max_steps``): before local trials got a cluster's
``custom`` searcher block, Determined's ``DetCallback`` failed on both. The second runs
on 2 CPU slots (HF sees both ranks only through the local stand-in for accelerate) and
then trains with the best config found.

Without transformers these tests skip locally and fail under ``CI=true``
(``pip install -c constraints-cpu.txt -e '.[hf]'``).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hf_support import check_hf_trial, hf_model_line, require_hf
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    EXAMPLES,
    Runner,
    check_batch,
    check_trial_dir,
    copy_example,
    kill_leftovers,
    no_processes_left,
    read_json,
    read_trials,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
)

from determined_dsat.space.hf_args import resolve_hf_batch

pytestmark = pytest.mark.slow

EXAMPLE = EXAMPLES / "hf_trainer"
TRAIN_BATCH_SIZE = 16  # small micro-batches keep each trial to seconds
# fp32 on CPU (HF refuses bf16 without a GPU): ZeRO-1's 1e9-element reduce bucket takes
# 4 GB of address space, though little of it is ever touched.
MEMORY_CAP_MIB = 8000
MAX_STEPS = 20  # --max_steps of the example


def _set(max_length: Any, slots: int) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["searcher"]["max_length"] = max_length
        config["resources"]["slots_per_trial"] = slots

    return edit


SUBDIR_CONFIG = "ds_configs/ds_config.json"


def _config_in_a_subdirectory(config: dict[str, Any]) -> None:
    """The ds_config in ``ds_configs/`` of the model dir, as upstream's HF examples had it."""
    config["hyperparameters"]["deepspeed_config"] = SUBDIR_CONFIG
    config["entrypoint"] = config["entrypoint"].replace(
        "--deepspeed ds_config.json", f"--deepspeed {SUBDIR_CONFIG}"
    )


def _search(
    tmp: pathlib.Path,
    max_length: Any,
    slots: int,
    max_trials: int,
    *extra: str,
    subdir: bool = False,
) -> Runner:
    require_hf()

    def edit(config: dict[str, Any]) -> None:
        _set(max_length, slots)(config)
        if subdir:
            _config_in_a_subdirectory(config)

    model_dir = copy_example("hf_trainer", tmp / "model", edit=edit)
    if subdir:
        (model_dir / "ds_configs").mkdir()
        (model_dir / "ds_config.json").rename(model_dir / SUBDIR_CONFIG)
    run_dir = tmp / "run"
    args = search_args("binary", model_dir, run_dir, max_trials, memory_cap=MEMORY_CAP_MIB)
    args += ["--max-concurrent-trials", "1", "--train-batch-size", str(TRAIN_BATCH_SIZE)]
    try:
        return run_dsat([*args, *extra], run_dir, timeout=900, name="search")
    finally:
        kill_leftovers(run_dir)


@pytest.fixture(scope="module")
def plain_number(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """``max_length: 20`` (DetCallback read ``.keys()`` of it), one slot, the ds_config in
    a subfolder of the model dir."""
    return _search(tmp_path_factory.mktemp("hf-number"), MAX_STEPS, 1, 4, subdir=True)


@pytest.fixture(scope="module")
def batches_two_slots(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """``max_length: {batches: 50}`` against ``--max_steps 20`` (DetCallback refused the
    mismatch), two slots, then the full experiment with the best config."""
    tmp = tmp_path_factory.mktemp("hf-batches")
    return _search(tmp, {"batches": 50}, 2, 3, "--run-full-experiment")


def _check_search(
    runner: Runner, max_trials: int, slots: int, config: str = "ds_config.json"
) -> list[dict[str, Any]]:
    """Every trial ran HF with the search's batch and reported DeepSpeed's measurements;
    the best config is the fastest trial's, consistent and ready for HF."""
    assert runner.proc.returncode == 0, runner.describe()
    lines = read_trials(runner.run_dir)
    assert len(lines) == max_trials, runner.describe()
    assert lines[0]["kind"] == "profile" and lines[0]["status"] == "ok", runner.describe()
    assert lines[0]["metrics"]["num_params"] > 0
    for line in lines:
        check_batch(line, slots)
        check_hf_trial(check_trial_dir(runner.run_dir, line, slots), line, slots, config)
    measured = [line for line in lines[1:] if line["status"] == "ok"]
    assert {line["kind"] for line in measured} & {"search", "confirm"}, runner.describe()
    for line in measured:
        assert line["metrics"]["throughput"] > 0
    best = read_json(runner.run_dir / "best_ds_config.json")
    if not any(line["kind"] == "confirm" for line in lines):  # else a median decides
        # The user's own config (the baseline) is the pick when no searched one beat it,
        # if it keeps --train-batch-size.
        eligible = [
            line
            for line in measured
            if line["kind"] != "baseline" or line["mbs"] * line["gas"] * slots == TRAIN_BATCH_SIZE
        ]
        fastest = max(eligible, key=lambda line: line["metrics"]["throughput"])
        assert best["train_micro_batch_size_per_gpu"] == fastest["mbs"]
        assert best["gradient_accumulation_steps"] == fastest["gas"]
        best_metrics = read_json(runner.run_dir / "best_ds_metrics.json")
        assert best_metrics["throughput"] == fastest["metrics"]["throughput"]
        assert f"(trial #{fastest['trial_id']})" in runner.stdout
    # The baseline's overwrites leave the user's own ZeRO block as it is.
    user_zero = json.loads((EXAMPLE / "ds_config.json").read_text())["zero_optimization"]
    assert any(
        (line["mbs"], line["gas"], line["overwrites"].get("zero_optimization", user_zero))
        == (
            best["train_micro_batch_size_per_gpu"],
            best["gradient_accumulation_steps"],
            best["zero_optimization"],
        )
        for line in measured
    )
    assert "autotuning" not in best
    assert best["train_batch_size"] == TRAIN_BATCH_SIZE
    assert best["train_batch_size"] == (
        best["train_micro_batch_size_per_gpu"] * best["gradient_accumulation_steps"] * slots
    )
    # What HF fills in itself stays "auto"; the user's file is untouched.
    assert best["optimizer"]["params"]["lr"] == "auto"
    assert json.loads((EXAMPLE / "ds_config.json").read_text())["train_batch_size"] == "auto"
    no_processes_left(runner.run_dir, within=1.0)
    return lines


def _check_bisection(lines: list[dict[str, Any]]) -> None:
    """Each lineage moved on from what its last trial showed: up after a success, down
    after running out of memory."""
    previous: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line["kind"] != "search":
            continue
        before = previous.get(line["lineage_id"])
        if before is not None and before["status"] == "ok":
            assert line["mbs"] > before["mbs"], (before, line)
        elif before is not None and before["status"] == "oom":
            assert line["mbs"] < before["mbs"], (before, line)
        previous[line["lineage_id"]] = line


def test_plain_number_max_length(plain_number: Runner) -> None:
    _check_bisection(_check_search(plain_number, 4, 1, SUBDIR_CONFIG))


def test_batches_max_length_on_two_slots(batches_two_slots: Runner) -> None:
    _check_bisection(_check_search(batches_two_slots, 3, 2))


def test_full_experiment_trains_with_the_best_config(batches_two_slots: Runner) -> None:
    runner = batches_two_slots
    assert "Full experiment done" in runner.stdout, runner.describe()
    best = read_json(runner.run_dir / "best_ds_config.json")
    trial_dir = runner.run_dir / "trials" / "full-experiment"
    mbs, gas = best["train_micro_batch_size_per_gpu"], best["gradient_accumulation_steps"]
    for rank in (0, 1):
        log = (trial_dir / f"rank{rank}.log").read_text(errors="replace")
        assert hf_model_line(mbs, gas, 2) in log, log[-3000:]
    assert "autotuning" not in json.loads((trial_dir / "ds_config.json").read_text())
    # DetCallback reported HF's evaluation at --max_steps.
    reported = [json.loads(raw) for raw in (trial_dir / "dsat_metrics.jsonl").open()]
    evaluations = [r for r in reported if r["group"] == "validation"]
    assert evaluations and evaluations[-1]["steps_completed"] == MAX_STEPS, reported
    assert evaluations[-1]["metrics"]["eval_loss"] > 0


def test_baseline_runs_the_batch_of_the_scripts_flags(plain_number: Runner) -> None:
    config = yaml.safe_load((EXAMPLE / "deepspeed-cpu.yaml").read_text())
    expected = resolve_hf_batch(config["entrypoint"], config["hyperparameters"])
    assert expected is not None
    (baseline,) = [line for line in read_trials(plain_number.run_dir) if line["kind"] == "baseline"]
    assert (baseline["mbs"], baseline["gas"]) == (expected.mbs, expected.gas)


def test_a_config_in_a_subdirectory_stays_the_users(plain_number: Runner) -> None:
    runner = plain_number
    assert runner.proc.returncode == 0, runner.describe()
    user_file = runner.run_dir.parent / "model" / SUBDIR_CONFIG
    assert json.loads(user_file.read_text()) == json.loads((EXAMPLE / "ds_config.json").read_text())
