"""What the end-to-end tests of HF Trainer searches share (no tests in here)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import pytest
from test_local_e2e_support import read_json

HF_PACKAGES = ("transformers", "accelerate")
INSTALL_LINE = "pip install -c constraints-cpu.txt -e '.[hf]'"
# What a cluster's custom experiment gives its trials (runners/cluster/configs.py), for
# the default metric.
CUSTOM_SEARCHER = {"name": "custom", "metric": "throughput", "smaller_is_better": False}


def require_hf() -> None:
    """Skip without transformers/accelerate; under ``CI=true`` fail instead."""
    missing = [name for name in HF_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed ({INSTALL_LINE})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def hf_model_line(mbs: int, gas: int, world_size: int) -> str:
    """The line examples/hf_trainer/train.py logs once HF has parsed its arguments."""
    return f"micro-batch {mbs} x {gas} accumulation; world size {world_size}"


def check_hf_trial(
    trial_dir: pathlib.Path, line: Mapping[str, Any], slots: int, config: str = "ds_config.json"
) -> None:
    """A trial ran the batch the search chose, on every rank, and reported DeepSpeed's own
    measurements (not HF's losses); ``config``: the ds_config's path in the model dir."""
    for rank in range(slots):
        log = (trial_dir / f"rank{rank}.log").read_text(errors="replace")
        assert hf_model_line(line["mbs"], line["gas"], slots) in log, (rank, log[-3000:])
    sheet = read_json(trial_dir / "dsat_trial.json")
    assert sheet["experiment_config"]["searcher"] == CUSTOM_SEARCHER
    # get_hf_args_with_overwrites rewrote the trial's own copy of the ds_config...
    ds_config = trial_dir / config
    assert not ds_config.is_symlink()
    written = json.loads(ds_config.read_text())
    assert written["train_micro_batch_size_per_gpu"] == line["mbs"]
    assert written["autotuning"] == line["overwrites"]["autotuning"]
    if line["status"] != "ok":
        return
    kind_file = "model_info.json" if line["kind"] == "profile" else "autotuning_metric.json"
    measured = read_json(trial_dir / kind_file)
    for key, value in measured.items():
        assert line["metrics"][key] == value, (key, line["metrics"])
