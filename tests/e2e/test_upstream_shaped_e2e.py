"""End to end: experiments shaped like upstream dsat's own examples, through the CLI on CPU.

``upstream_shaped/`` holds our own equivalents of the two kinds of script upstream dsat
users ran (a Core API script and a ``DeepSpeedTrial``; see its README): a
``train_batch_size``-only ds_config, attribute-style hyperparameters, DeepSpeed's own
data loader or DataLoader workers, ``.to(local_rank)`` on GPUs, fp16/bf16 input casts,
a small ResNet-style CNN on random images. Each search must end with a best config that
DeepSpeed accepts (``train_batch_size = mbs x gas x slots``) and trials that reported
what DeepSpeed measured.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
from typing import Any

import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    Runner,
    check_batch,
    check_trial_dir,
    kill_leftovers,
    no_processes_left,
    read_json,
    read_trials,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
)

pytestmark = pytest.mark.slow

FIXTURES = pathlib.Path(__file__).resolve().parent / "upstream_shaped"
SHARED = FIXTURES / "shared"
SHARED_MODEL = SHARED / "tiny_resnet.py"
BF16_CAP_MIB = 4000
FP32_CAP_MIB = 8000  # ZeRO-1's 1e9-element reduce bucket: 4 GB of address space in fp32


def _search(
    tmp: pathlib.Path, name: str, config: str, max_trials: int, cap: int, *extra: str
) -> Runner:
    run_dir = tmp / "run"
    model_dir = FIXTURES / name
    args = search_args("binary", model_dir, run_dir, max_trials, config=config, memory_cap=cap)
    args += ["--include", str(SHARED_MODEL), str(SHARED / "attrdict.py")]
    args += ["--max-concurrent-trials", "1", *extra]
    try:
        return run_dsat(args, run_dir, timeout=900, name="search")
    finally:
        kill_leftovers(run_dir)


@pytest.fixture(scope="module")
def core_api_tbs_only(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """``train_batch_size: 256`` alone, 2 slots, bf16, DeepSpeed's own data loader; the
    search keeps the global batch (``--train-batch-size 256``), so gas = 128 / mbs."""
    extra = ("--train-batch-size", "256")
    return _search(
        tmp_path_factory.mktemp("up-core"), "core_api", "deepspeed.yaml", 4, BF16_CAP_MIB, *extra
    )


@pytest.fixture(scope="module")
def deepspeed_trial(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """A list entrypoint with ``--trial``, fp32, DataLoader workers, 1 slot."""
    return _search(
        tmp_path_factory.mktemp("up-trial"), "deepspeed_trial", "deepspeed.yaml", 3, FP32_CAP_MIB
    )


def _tiny_resnet_params() -> int:
    sys.path.insert(0, str(SHARED_MODEL.parent))
    try:
        import tiny_resnet

        return sum(p.numel() for p in tiny_resnet.build_model("tiny_resnet").parameters())
    finally:
        sys.path.remove(str(SHARED_MODEL.parent))


def _check_search(runner: Runner, max_trials: int, slots: int) -> list[dict[str, Any]]:
    assert runner.proc.returncode == 0, runner.describe()
    run_dir = runner.run_dir
    lines = read_trials(run_dir)
    assert len(lines) == max_trials, runner.describe()
    profile = lines[0]
    assert profile["kind"] == "profile" and profile["status"] == "ok", runner.describe()
    assert profile["metrics"]["num_params"] == _tiny_resnet_params()
    for line in lines:
        check_batch(line, slots)
        trial_dir = check_trial_dir(run_dir, line, slots)
        if line["status"] == "ok" and line["kind"] != "profile":
            measured = read_json(trial_dir / "autotuning_metric.json")
            assert {k: line["metrics"][k] for k in measured} == measured
            assert line["metrics"]["throughput"] > 0
    searched = [line for line in lines if line["kind"] in ("search", "confirm")]
    assert any(line["status"] == "ok" for line in searched), runner.describe()

    best = read_json(run_dir / "best_ds_config.json")
    assert "autotuning" not in best
    mbs, gas = best["train_micro_batch_size_per_gpu"], best["gradient_accumulation_steps"]
    assert best["train_batch_size"] == mbs * gas * slots
    # The pick is a searched config that trained, or the baseline when none beat it.
    candidates = [line for line in lines if line["kind"] in ("search", "confirm", "baseline")]
    assert any(
        (line["mbs"], line["gas"], line["status"]) == (mbs, gas, "ok") for line in candidates
    )
    assert best["prescale_gradients"] is False  # the user's own keys are kept
    no_processes_left(run_dir, within=1.0)
    return lines


def test_core_api_with_a_train_batch_size_only_config(core_api_tbs_only: Runner) -> None:
    lines = _check_search(core_api_tbs_only, 4, 2)
    # DeepSpeed built the engine (and its data loader) from each trial's batch, on 2 ranks.
    for line in lines:
        trial_dir = core_api_tbs_only.run_dir / "trials" / line["request_id"]
        for rank in (0, 1):
            log = (trial_dir / f"rank{rank}.log").read_text(errors="replace")
            engine = f"micro-batch {line['mbs']} x {line['gas']} accumulation on 2 rank(s)"
            assert engine in log and "bf16=True" in log, (rank, log[-3000:])
    best = read_json(core_api_tbs_only.run_dir / "best_ds_config.json")
    assert best["data_types"] == {"buffer_dtype": "bf16"}


def test_core_api_with_gradient_accumulation(core_api_tbs_only: Runner) -> None:
    """Upstream's script counts a step when ``is_gradient_accumulation_boundary()`` holds
    after ``engine.step()``; with gas > 1 a search trial still reaches DeepSpeed's exit."""
    lines = read_trials(core_api_tbs_only.run_dir)
    accumulating = [ln for ln in lines if ln["kind"] == "search" and ln["gas"] > 1]
    assert accumulating, lines
    assert all(ln["status"] == "ok" and ln["metrics"]["throughput"] > 0 for ln in accumulating)


def test_deepspeed_trial_with_dataloader_workers(deepspeed_trial: Runner) -> None:
    lines = _check_search(deepspeed_trial, 3, 1)
    trial_dir = deepspeed_trial.run_dir / "trials" / lines[0]["request_id"]
    sheet = read_json(trial_dir / "dsat_trial.json")
    assert sheet["experiment_config"]["entrypoint"][-1] == "model_def:TinyResNetTrial"
    assert sheet["hparams"]["dataloader_workers"] == 2
    best = read_json(deepspeed_trial.run_dir / "best_ds_config.json")
    assert best["zero_optimization"]["cpu_offload"] is False  # upstream's deprecated key kept


def test_baseline_of_a_train_batch_size_only_config(core_api_tbs_only: Runner) -> None:
    """DeepSpeed turns train_batch_size 256 on 2 ranks into micro-batch 128, gas 1."""
    (baseline,) = [
        line for line in read_trials(core_api_tbs_only.run_dir) if line["kind"] == "baseline"
    ]
    assert (baseline["mbs"], baseline["gas"]) == (128, 1)
    assert baseline["overwrites"]["train_batch_size"] == 256


def test_fp16_config_is_refused_on_cpu(tmp_path: pathlib.Path) -> None:
    """Upstream's configs enable fp16; on a CPU the search refuses it before any trial."""
    model_dir = tmp_path / "model"
    shutil.copytree(FIXTURES / "deepspeed_trial", model_dir)
    ds_config = json.loads((model_dir / "ds_config.json").read_text())
    ds_config["fp16"] = {"enabled": True}
    (model_dir / "ds_config.json").write_text(json.dumps(ds_config))
    run_dir = tmp_path / "run"
    args = search_args("binary", model_dir, run_dir, 3, config="deepspeed.yaml")
    runner = run_dsat(args, run_dir, timeout=120, name="fp16")
    assert runner.proc.returncode == 2, runner.describe()
    message = runner.stderr.strip().splitlines()[-1]  # the error is one line, the last
    assert message.startswith("dsat: error: ds_config.json: fp16 is enabled"), runner.stderr
    assert "CPU" in message
    assert not (run_dir / "trials").exists()
