"""The experiment configs a cluster search generates, for both examples, are what a
Determined 0.37 master accepts, and carry what the search needs."""

from __future__ import annotations

import copy
import pathlib
import shutil
from typing import Any

import pytest
import yaml
from expconf import SEARCHER_SCHEMA_URL, ExpconfValidator, default_validator

from determined_dsat import cli
from determined_dsat.build import build_space
from determined_dsat.errors import ConfigError
from determined_dsat.runners.cluster import configs, submit
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space import ds_config as dsc
from determined_dsat.space.experiment import Experiment, load_experiment
from determined_dsat.trials.records import TrialKind, TrialSpec
from determined_dsat.trials.specs import hparams_of

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = [
    ("core_api", "deepspeed.yaml"),
    ("core_api", "deepspeed-cpu.yaml"),
    ("deepspeed_trial", "deepspeed.yaml"),
    ("deepspeed_trial", "deepspeed-cpu.yaml"),
]
IDS = [f"{example}/{name}" for example, name in EXAMPLES]
# What a user's config may carry that the generated configs must keep.
USER_EXTRAS: dict[str, Any] = {
    "workspace": "research",
    "project": "llm-tuning",
    "environment": {
        "image": "determinedai/pytorch-ngc:0.37.0",
        "environment_variables": ["NCCL_DEBUG=INFO"],
    },
    "description": "GPT pretraining",
}


@pytest.fixture(scope="module")
def validator() -> ExpconfValidator:
    found = default_validator()
    if found is None:
        pytest.skip("the Determined 0.37 expconf schemas are not beside the checkout")
    return found


def _example(tmp_path: pathlib.Path, example: str, name: str, extras: bool) -> pathlib.Path:
    model_dir = tmp_path / example
    shutil.copytree(ROOT / "examples" / example, model_dir)
    if extras:
        config_path = model_dir / name
        config = yaml.safe_load(config_path.read_text())
        config.update(copy.deepcopy(USER_EXTRAS))
        config_path.write_text(yaml.safe_dump(config))
    return model_dir / name


def _load(
    tmp_path: pathlib.Path, example: str, name: str, *flags: str, extras: bool = True
) -> tuple[SearchSettings, Experiment]:
    config_path = _example(tmp_path, example, name, extras)
    argv = ["binary", str(config_path), str(config_path.parent), "--backend", "determined"]
    settings = cli.parse_settings([*argv, *flags])
    return settings, load_experiment(settings.config_path, settings.model_dir)


def _assert_accepted(validator: ExpconfValidator, config: dict[str, Any]) -> None:
    """Sane as submitted; the searcher (which the master never fills in) also complete."""
    validator.assert_sane(config)
    assert validator.completeness_errors(config["searcher"], SEARCHER_SCHEMA_URL) == []


def _autotuning(settings: SearchSettings) -> dict[str, Any]:
    return dsc.autotuning_section(settings.start_profile_step, settings.end_profile_step)


def _best_hparams(settings: SearchSettings, experiment: Experiment) -> dict[str, Any]:
    space = build_space(settings, experiment)
    spec = TrialSpec(
        request_id="r", kind=TrialKind.SEARCH, mbs=4, gas=1, zero={"stage": 2, "overlap_comm": True}
    )
    return hparams_of(space, spec)


@pytest.mark.parametrize(("example", "name"), EXAMPLES, ids=IDS)
def test_search_runner_config_is_valid_and_keeps_the_users_place(
    tmp_path: pathlib.Path, validator: ExpconfValidator, example: str, name: str
) -> None:
    settings, experiment = _load(tmp_path, example, name, "--max-search-runner-restarts", "7")
    config = configs.search_runner_config(settings, experiment.raw)
    _assert_accepted(validator, config)
    assert config["searcher"]["name"] == "single"
    assert config["searcher"]["metric"] == settings.metric.value
    assert config["resources"]["slots_per_trial"] == 0
    assert config["entrypoint"] == f"python3 -m {configs.RUNNER_MODULE}"
    assert config["max_restarts"] == 7
    assert config["name"].startswith("(DSAT) ")
    for key in ("workspace", "project", "environment"):
        assert config[key] == USER_EXTRAS[key]


@pytest.mark.parametrize(("example", "name"), EXAMPLES, ids=IDS)
def test_custom_config_is_valid_and_drives_dsat_trials(
    tmp_path: pathlib.Path, validator: ExpconfValidator, example: str, name: str
) -> None:
    settings, experiment = _load(tmp_path, example, name, "--metric", "latency")
    config = configs.custom_experiment_config(
        settings, experiment.raw, _autotuning(settings), runner_experiment_id=12
    )
    _assert_accepted(validator, config)
    assert config["searcher"] == {"name": "custom", "metric": "latency", "smaller_is_better": True}
    hparams = config["hyperparameters"]
    assert hparams[dsc.USE_DSAT_MODE_KEY] is True
    assert hparams[dsc.OVERWRITE_KEY][dsc.AUTOTUNING_KEY] == _autotuning(settings)
    assert hparams[dsc.CONFIG_KEY] == experiment.hparams[dsc.CONFIG_KEY]
    assert "12" in config["description"] and USER_EXTRAS["description"] in config["description"]
    assert config["workspace"] == USER_EXTRAS["workspace"]
    if example == "deepspeed_trial":
        assert config["entrypoint"] == (
            "python3 -m determined.launch.deepspeed python3 -m "
            "determined_dsat.integration.trial_driver model_def:GPTTrial"
        )
    else:
        assert config["entrypoint"] == experiment.raw["entrypoint"]


@pytest.mark.parametrize(("example", "name"), EXAMPLES, ids=IDS)
def test_full_experiment_config_is_valid_and_trains_the_best(
    tmp_path: pathlib.Path, validator: ExpconfValidator, example: str, name: str
) -> None:
    settings, experiment = _load(tmp_path, example, name, "--run-full-experiment")
    best = _best_hparams(settings, experiment)
    config = configs.full_experiment_config(experiment.raw, best, runner_experiment_id=3)
    _assert_accepted(validator, config)
    hparams = config["hyperparameters"]
    assert dsc.USE_DSAT_MODE_KEY not in hparams
    assert dsc.AUTOTUNING_KEY not in hparams[dsc.OVERWRITE_KEY]
    assert hparams[dsc.OVERWRITE_KEY]["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert hparams[dsc.OVERWRITE_KEY]["train_micro_batch_size_per_gpu"] == 4
    assert config["searcher"]["name"] == "single"
    assert config["searcher"]["max_length"] == experiment.raw["searcher"]["max_length"]
    assert config["entrypoint"] == experiment.raw["entrypoint"]


def test_a_broken_generated_config_fails_the_validator(
    tmp_path: pathlib.Path, validator: ExpconfValidator
) -> None:
    settings, experiment = _load(tmp_path, "core_api", "deepspeed.yaml")
    config = configs.custom_experiment_config(settings, experiment.raw, _autotuning(settings), 1)
    config["searcher"]["smaller_is_better"] = "yes"
    problems = validator.sanity_errors(config)
    assert problems and any("smaller_is_better" in p for p in problems), problems


def test_users_own_max_restarts_is_kept_for_trials(tmp_path: pathlib.Path) -> None:
    settings, experiment = _load(tmp_path, "core_api", "deepspeed.yaml")
    raw = {k: v for k, v in experiment.raw.items() if k != "max_restarts"}
    assert configs.custom_experiment_config(settings, raw, {}, 1)["max_restarts"] == 0
    raw["max_restarts"] = 2
    assert configs.custom_experiment_config(settings, raw, {}, 1)["max_restarts"] == 2


def test_full_experiment_needs_a_length(tmp_path: pathlib.Path) -> None:
    settings, experiment = _load(tmp_path, "core_api", "deepspeed.yaml")
    raw = copy.deepcopy(dict(experiment.raw))
    del raw["searcher"]["max_length"]
    with pytest.raises(ConfigError, match="max_length"):
        configs.full_experiment_config(raw, _best_hparams(settings, experiment), 1)


def test_settings_travel_relative_to_the_upload(tmp_path: pathlib.Path) -> None:
    extra = tmp_path / "data.txt"
    extra.write_text("x")
    settings, _ = _load(tmp_path, "core_api", "deepspeed.yaml", "--include", str(extra))
    moved = submit.relocated(settings)
    assert moved.config_path == pathlib.Path("deepspeed.yaml")
    assert moved.model_dir == pathlib.Path("core_api")
    assert moved.include == (pathlib.Path("data.txt"),)
    assert moved.backend is Backend.DETERMINED
    assert SearchSettings.from_json(moved.to_json()) == moved
    names = [p.name for p in submit.uploads(settings)]
    assert names == ["core_api", "deepspeed.yaml", "data.txt", "determined_dsat"]


def test_upload_names_must_not_collide(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "elsewhere" / "core_api"
    other.mkdir(parents=True)
    settings, _ = _load(tmp_path, "core_api", "deepspeed.yaml", "--include", str(other))
    with pytest.raises(ConfigError, match="core_api"):
        submit.uploads(settings)


def test_search_runner_config_flag_replaces_the_generated_one(tmp_path: pathlib.Path) -> None:
    own = tmp_path / "runner.yaml"
    own.write_text(yaml.safe_dump({"name": "mine", "entrypoint": "python3 -m x"}))
    settings, experiment = _load(
        tmp_path, "core_api", "deepspeed.yaml", "--search-runner-config", str(own)
    )
    assert submit.runner_config(settings, experiment) == {
        "name": "mine",
        "entrypoint": "python3 -m x",
    }
    own.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        submit.runner_config(settings, experiment)


def test_shell_entrypoints_run_as_given(tmp_path: pathlib.Path) -> None:
    settings, experiment = _load(tmp_path, "core_api", "deepspeed.yaml")
    raw = {**experiment.raw, "entrypoint": ["bash", "run.sh"]}
    assert configs.custom_experiment_config(settings, raw, {}, 1)["entrypoint"] == [
        "bash",
        "run.sh",
    ]


def test_entrypoint_problems_show_before_submitting(tmp_path: pathlib.Path) -> None:
    settings, experiment = _load(tmp_path, "core_api", "deepspeed.yaml")
    raw = {**experiment.raw, "entrypoint": ""}
    broken = Experiment(
        config_path=experiment.config_path,
        model_dir=experiment.model_dir,
        raw=raw,
        ds_config_path=experiment.ds_config_path,
        ds_config=experiment.ds_config,
    )
    with pytest.raises(ConfigError, match="entrypoint"):
        submit.check_before_submitting(settings, broken)
