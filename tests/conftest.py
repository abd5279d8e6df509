"""Shared test configuration, and the fixtures of the CLI tests."""

from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest
import yaml
from ci_support import (  # noqa: F401 (pytest hooks: under CI=true a skip fails)
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
from cli_support import Launch
from hypothesis import settings

# Hypothesis' per-example deadline measures wall time; on a loaded 2-core CI machine it
# fails correct code. Properties are still checked on every example.
settings.register_profile("dsat", deadline=None)
settings.load_profile("dsat")


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch) -> Launch:
    fake = Launch()
    module = types.ModuleType("determined_dsat.runners.launch")
    module.run_search = fake.run_search  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "determined_dsat.runners.launch", module)
    return fake


@pytest.fixture
def project(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A model dir with deepspeed.yaml and ds_config.json; the cwd is its parent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DET_MASTER", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "ds_config.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    config = {
        "name": "demo",
        "entrypoint": "python3 -m determined.launch.deepspeed python3 train.py",
        "hyperparameters": {"deepspeed_config": "ds_config.json"},
        "resources": {"slots_per_trial": 2},
        "searcher": {"name": "single", "metric": "loss", "max_length": 10},
    }
    (model / "deepspeed.yaml").write_text(yaml.safe_dump(config))
    return model
