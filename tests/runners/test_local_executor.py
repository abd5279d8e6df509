"""What the local executor gives its ranks: their devices, the op cache, CPU pinning."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import pytest
from local_support import fake_executor

from determined_dsat.errors import ConfigError
from determined_dsat.runners.devices import Slots
from determined_dsat.runners.ext_cache import extensions_root
from determined_dsat.trials.records import Outcome

UUIDS = ("GPU-8f3c2b1e-4d5a-6b7c-8d9e-0f1a2b3c4d5e", "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")


def _rank_env(tmp_path: pathlib.Path, request_id: str, rank: int) -> dict[str, Any]:
    log = tmp_path / "run" / "trials" / request_id / f"rank{rank}.log"
    line = next(x for x in log.read_text().splitlines() if x.startswith("env "))
    return dict(json.loads(line[4:]))


def _run_one(tmp_path: pathlib.Path, slots: Slots, slots_per_trial: int = 1) -> None:
    executor = fake_executor(tmp_path, "bind", "0", slots=slots, slots_per_trial=slots_per_trial)
    executor.launch("t", {}, 1)
    result = executor.next_completion().result
    assert result.outcome is Outcome.OK, result.detail


def test_gpu_uuids_reach_the_ranks(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    _run_one(tmp_path, Slots(ids=UUIDS, gpu=True), slots_per_trial=2)
    for rank in (0, 1):
        env = _rank_env(tmp_path, "t", rank)
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(UUIDS)
        assert env["DS_ACCELERATOR"] is None
    assert _rank_env(tmp_path, "t", 0)["MASTER_PORT"] == _rank_env(tmp_path, "t", 1)["MASTER_PORT"]


def test_mig_slots_refuse_multi_rank_trials(tmp_path: pathlib.Path) -> None:
    mig = Slots(ids=("MIG-aaaa", "MIG-bbbb"), gpu=True)
    with pytest.raises(ConfigError, match="MIG"):
        fake_executor(tmp_path, "bind", slots=mig, slots_per_trial=2)


@pytest.mark.parametrize("user_dir", [None, "mine"])
def test_ranks_share_the_environments_op_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, user_dir: str | None
) -> None:
    if user_dir is None:
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        expected = str(extensions_root())
        assert "dsat-py" in expected
    else:
        expected = str(tmp_path / user_dir)
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", expected)
    _run_one(tmp_path, Slots(ids=(0,), gpu=True))
    assert _rank_env(tmp_path, "t", 0)["TORCH_EXTENSIONS_DIR"] == expected


def test_a_core_that_cannot_be_pinned_is_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = max(os.sched_getaffinity(0)) + 4096
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        _run_one(tmp_path, Slots(ids=(missing,), gpu=False))
    assert any(f"pin a trial rank to CPU core {missing}" in r.getMessage() for r in caplog.records)
    assert _rank_env(tmp_path, "t", 0)["DS_ACCELERATOR"] == "cpu"


def test_a_trial_rewrites_only_its_own_ds_config_in_a_subfolder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ds_config in ``configs/`` of the model dir: the trial's folders on the way to it
    are its own, so ``get_hf_args_with_overwrites`` leaves the user's file as it was."""
    from local_support import FAKE_RANK

    from determined_dsat.integration.hparams import get_hf_args_with_overwrites
    from determined_dsat.runners.entrypoint import LocalCommand
    from determined_dsat.runners.local import LocalExecutor, LocalTrialOptions

    model = tmp_path / "model"
    (model / "configs" / "deep").mkdir(parents=True)
    (model / "data").mkdir()
    (model / "data" / "train.txt").write_text("data")
    user = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 1}}
    (model / "configs" / "deep" / "ds.json").write_text(json.dumps(user))
    (model / "configs" / "other.json").write_text("{}")
    options = LocalTrialOptions(
        experiment_config={"hyperparameters": {"deepspeed_config": "configs/deep/ds.json"}},
        model_dir=model,
        command=LocalCommand(argv=(FAKE_RANK.name,)),
        slots_per_trial=1,
    )
    trials = tmp_path / "run" / "trials"
    executor = LocalExecutor(options, Slots(ids=(0,), gpu=False), lambda rid: trials / rid)
    trial_dir = executor._prepare_dir("t1")
    assert (trial_dir / "data").is_symlink()  # the rest stays linked, not copied
    assert not (trial_dir / "configs").is_symlink()
    assert not (trial_dir / "configs" / "deep").is_symlink()
    assert (trial_dir / "configs" / "other.json").is_symlink()
    monkeypatch.chdir(trial_dir)
    hparams = {"overwrite_deepspeed_args": {"train_micro_batch_size_per_gpu": 4}}
    args = get_hf_args_with_overwrites(["--deepspeed", "configs/deep/ds.json"], hparams)
    assert args[args.index("--per_device_train_batch_size") + 1] == "4"
    written = json.loads((trial_dir / "configs" / "deep" / "ds.json").read_text())
    assert written["train_micro_batch_size_per_gpu"] == 4
    assert json.loads((model / "configs" / "deep" / "ds.json").read_text()) == user
