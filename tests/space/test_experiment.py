"""Loading and validating the user's experiment config and ds_config.json."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from determined_dsat.errors import ConfigError
from determined_dsat.space.experiment import (
    Experiment,
    entrypoint_ds_config_paths,
    load_ds_config,
    load_experiment,
)

DS_CONFIG = {"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "Adam"}}


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "gpt2",
        "entrypoint": "python3 -m determined.launch.deepspeed python3 train.py",
        "hyperparameters": {"deepspeed_config": "ds_config.json", "lr": 0.1},
        "resources": {"slots_per_trial": 2},
        "searcher": {"name": "single", "metric": "loss", "max_length": 100},
    }
    config.update(overrides)
    return config


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "ds_config.json").write_text(json.dumps(DS_CONFIG))
    return d


def write_config(
    model_dir: pathlib.Path, config: Any, name: str = "deepspeed.yaml"
) -> pathlib.Path:
    path = model_dir / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def load_error(config_path: pathlib.Path, model_dir: pathlib.Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(config_path, model_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- happy paths ---------------------------------------------------------------------------


def test_loads_experiment(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config())
    exp = load_experiment(config, model_dir)
    assert isinstance(exp, Experiment)
    assert exp.config_path == config
    assert exp.model_dir == model_dir
    assert exp.ds_config_path == (model_dir / "ds_config.json").resolve()
    assert exp.ds_config == DS_CONFIG
    assert exp.slots_per_trial == 2
    assert exp.max_length == 100
    assert exp.hparams["lr"] == 0.1
    assert exp.raw["name"] == "gpt2"


def test_relative_paths_become_absolute(
    model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(model_dir, base_config())
    monkeypatch.chdir(model_dir.parent)
    exp = load_experiment(pathlib.Path("model/deepspeed.yaml"), pathlib.Path("model"))
    assert exp.config_path.is_absolute() and exp.model_dir.is_absolute()
    assert exp.ds_config_path.is_absolute()
    assert exp.model_dir == model_dir


def test_defaults_without_resources_or_searcher(model_dir: pathlib.Path) -> None:
    config = base_config()
    del config["resources"], config["searcher"], config["entrypoint"]
    exp = load_experiment(write_config(model_dir, config), model_dir)
    assert exp.slots_per_trial == 1
    assert exp.max_length is None


def test_resources_without_slots_means_one(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config(resources={"resource_pool": "a100"}))
    assert load_experiment(config, model_dir).slots_per_trial == 1


@pytest.mark.parametrize(
    ("max_length", "expected"),
    [(7, 7), (0, 0), ({"batches": 50}, 50), ({"epochs": 2}, 2), ({"records": 640}, 640)],
)
def test_max_length_forms(model_dir: pathlib.Path, max_length: Any, expected: int) -> None:
    searcher = {"name": "single", "metric": "loss", "max_length": max_length}
    config = write_config(model_dir, base_config(searcher=searcher))
    assert load_experiment(config, model_dir).max_length == expected


@pytest.mark.parametrize(
    "max_length",
    ["100", -1, True, 1.5, {"steps": 5}, {"batches": 5, "epochs": 1}, {"batches": "5"}, []],
)
def test_bad_max_length(model_dir: pathlib.Path, max_length: Any) -> None:
    config = write_config(model_dir, base_config(searcher={"max_length": max_length}))
    message = load_error(config, model_dir)
    assert message.startswith("deepspeed.yaml: searcher.max_length")


def test_searcher_not_a_mapping(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config(searcher="single"))
    assert "searcher must be a mapping" in load_error(config, model_dir)


def test_ds_config_found_next_to_config_file(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    conf_dir = tmp_path / "configs"
    conf_dir.mkdir()
    (conf_dir / "ds_config.json").write_text(json.dumps(DS_CONFIG))
    config = write_config(conf_dir, base_config())
    exp = load_experiment(config, model_dir)
    assert exp.ds_config_path == (conf_dir / "ds_config.json").resolve()


def test_model_dir_wins_over_config_dir(tmp_path: pathlib.Path, model_dir: pathlib.Path) -> None:
    conf_dir = tmp_path / "configs"
    conf_dir.mkdir()
    (conf_dir / "ds_config.json").write_text(json.dumps({"other": True}))
    exp = load_experiment(write_config(conf_dir, base_config()), model_dir)
    assert exp.ds_config_path == (model_dir / "ds_config.json").resolve()
    assert exp.ds_config == DS_CONFIG


def test_absolute_ds_config_path(tmp_path: pathlib.Path, model_dir: pathlib.Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    hparams = {"deepspeed_config": str(elsewhere)}
    config = write_config(model_dir, base_config(hyperparameters=hparams, entrypoint="x"))
    exp = load_experiment(config, model_dir)
    assert exp.ds_config_path == elsewhere.resolve()


def test_ds_config_in_subdirectory(model_dir: pathlib.Path) -> None:
    (model_dir / "conf").mkdir()
    (model_dir / "conf" / "ds.json").write_text("{}")
    entrypoint = "python3 train.py --deepspeed --deepspeed_config ./conf/../conf/ds.json"
    config = base_config(
        hyperparameters={"deepspeed_config": "conf/ds.json"}, entrypoint=entrypoint
    )
    exp = load_experiment(write_config(model_dir, config), model_dir)
    assert exp.ds_config_path == (model_dir / "conf" / "ds.json").resolve()
    assert exp.ds_config == {}


# --- the YAML file -------------------------------------------------------------------------


def test_missing_config(model_dir: pathlib.Path) -> None:
    message = load_error(model_dir / "nope.yaml", model_dir)
    assert message.startswith("nope.yaml:") and "not found" in message


def test_config_is_a_directory(model_dir: pathlib.Path) -> None:
    (model_dir / "dir.yaml").mkdir()
    assert "is a directory" in load_error(model_dir / "dir.yaml", model_dir)


def test_invalid_yaml_names_the_line(model_dir: pathlib.Path) -> None:
    text = "name: x\nhyperparameters:\n  deepspeed_config: ds_config.json\n  bad: [1, 2\n"
    message = load_error(write_config(model_dir, text), model_dir)
    assert message.startswith("deepspeed.yaml: line ")
    assert "invalid YAML" in message


def test_invalid_yaml_line_number(model_dir: pathlib.Path) -> None:
    text = "name: x\nentrypoint: a\nhyperparameters:\n\tdeepspeed_config: x\n"
    message = load_error(write_config(model_dir, text), model_dir)
    assert message.startswith("deepspeed.yaml: line 4: invalid YAML: ")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("42\n", "a number")])
def test_yaml_not_a_mapping(model_dir: pathlib.Path, text: str, kind: str) -> None:
    message = load_error(write_config(model_dir, text), model_dir)
    assert message == f"deepspeed.yaml: the experiment config must be a YAML mapping, got {kind}"


def test_empty_yaml(model_dir: pathlib.Path) -> None:
    assert "is empty" in load_error(write_config(model_dir, "# nothing\n"), model_dir)


def test_non_utf8_yaml(model_dir: pathlib.Path) -> None:
    path = model_dir / "deepspeed.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert "not UTF-8" in load_error(path, model_dir)


def test_unreadable_yaml(model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 0 proves nothing as root (CI runs as root): fail the read itself instead.
    path = write_config(model_dir, base_config())
    real_read_text = pathlib.Path.read_text

    def read_text(self: pathlib.Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    message = load_error(path, model_dir)
    assert message == f"deepspeed.yaml: cannot read experiment config: Permission denied ({path})"


# --- hyperparameters.deepspeed_config ---------------------------------------------------


def test_missing_hyperparameters(model_dir: pathlib.Path) -> None:
    config = base_config()
    del config["hyperparameters"]
    message = load_error(write_config(model_dir, config), model_dir)
    assert message.startswith("deepspeed.yaml: hyperparameters is missing")


def test_empty_hyperparameters(model_dir: pathlib.Path) -> None:
    message = load_error(write_config(model_dir, base_config(hyperparameters=None)), model_dir)
    assert message.startswith("deepspeed.yaml: hyperparameters is empty")


def test_hyperparameters_not_a_mapping(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config(hyperparameters=["ds_config.json"]))
    assert "hyperparameters must be a mapping, got a list" in load_error(config, model_dir)


def test_missing_deepspeed_config(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config(hyperparameters={"lr": 1}))
    assert load_error(config, model_dir) == (
        "deepspeed.yaml: hyperparameters.deepspeed_config is missing (DeepSpeed Autotune "
        "needs the path of your ds_config.json there)"
    )


@pytest.mark.parametrize("value", [3, None, {"type": "const", "val": "x.json"}, "", "  ", True])
def test_deepspeed_config_not_a_string(model_dir: pathlib.Path, value: Any) -> None:
    config = write_config(model_dir, base_config(hyperparameters={"deepspeed_config": value}))
    message = load_error(config, model_dir)
    assert message.startswith("deepspeed.yaml: hyperparameters.deepspeed_config must be")


# --- the ds_config ------------------------------------------------------------------------


def test_ds_config_missing(model_dir: pathlib.Path) -> None:
    (model_dir / "ds_config.json").unlink()
    message = load_error(write_config(model_dir, base_config()), model_dir)
    assert message.startswith("deepspeed.yaml: hyperparameters.deepspeed_config names")
    assert "ds_config.json" in message and str(model_dir) in message


def test_ds_config_invalid_json(model_dir: pathlib.Path) -> None:
    (model_dir / "ds_config.json").write_text('{\n  "a": 1,\n    oops\n}\n')
    message = load_error(write_config(model_dir, base_config()), model_dir)
    assert message.startswith("ds_config.json: invalid JSON at line 3 column 5: ")


def test_ds_config_not_an_object(model_dir: pathlib.Path) -> None:
    (model_dir / "ds_config.json").write_text("[1, 2]")
    message = load_error(write_config(model_dir, base_config()), model_dir)
    assert message == "ds_config.json: a DeepSpeed config must be a JSON object, got a list"


def test_ds_config_is_a_directory(model_dir: pathlib.Path) -> None:
    (model_dir / "ds_config.json").unlink()
    (model_dir / "ds_config.json").mkdir()
    message = load_error(write_config(model_dir, base_config()), model_dir)
    assert "ds_config.json" in message and "not a file" in message


def test_load_ds_config(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(DS_CONFIG))
    assert load_ds_config(path, "ds.json") == DS_CONFIG


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "ds.json: invalid JSON at line 1 column 1: Expecting value"),
        ('"x"', "ds.json: a DeepSpeed config must be a JSON object, got a string"),
        ("null", "ds.json: a DeepSpeed config must be a JSON object, got null"),
        ('{"a": 1, "a": 2}', "ds.json: invalid DeepSpeed config: duplicate key 'a'"),
    ],
)
def test_load_ds_config_errors(tmp_path: pathlib.Path, text: str, expected: str) -> None:
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_ds_config(path, "ds.json")
    assert str(info.value) == expected


def test_load_ds_config_missing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"^where: DeepSpeed config not found"):
        load_ds_config(tmp_path / "none.json", "where")


# --- resources, model dir ---------------------------------------------------------------


@pytest.mark.parametrize("slots", [0, -2, "2", 1.5, True, None])
def test_bad_slots_per_trial(model_dir: pathlib.Path, slots: Any) -> None:
    config = write_config(model_dir, base_config(resources={"slots_per_trial": slots}))
    message = load_error(config, model_dir)
    assert message.startswith("deepspeed.yaml: resources.slots_per_trial must be a positive")


def test_resources_not_a_mapping(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config(resources=4))
    assert "resources must be a mapping" in load_error(config, model_dir)


def test_model_dir_missing(tmp_path: pathlib.Path, model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config())
    message = load_error(config, tmp_path / "nowhere")
    assert "model directory not found" in message and "nowhere" in message


def test_model_dir_is_a_file(model_dir: pathlib.Path) -> None:
    config = write_config(model_dir, base_config())
    message = load_error(config, model_dir / "ds_config.json")
    assert "not a directory" in message


# --- entrypoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [
        ("python3 train.py", []),
        ("python3 train.py --deepspeed_config ds.json", ["ds.json"]),
        ("python3 train.py --deepspeed ds.json", ["ds.json"]),
        ("python3 train.py --deepspeed_config=ds.json", ["ds.json"]),
        ("python3 train.py --deepspeed=conf/ds.json --lr 1", ["conf/ds.json"]),
        ("python3 train.py --deepspeed --deepspeed_config ds.json", ["ds.json"]),
        ("python3 train.py --deepspeed", []),
        ("python3 train.py --deepspeed --lr 3", []),
        ("python3 train.py --deepspeed_config", []),
        ("python3 train.py --deepspeed_config=", []),
        ("python3 train.py --deepspeed-config x.json --deepspeed_configs y", []),
        ("python3   train.py\t--deepspeed_config  'my ds.json'", ["my ds.json"]),
        ("python3 train.py --deepspeed_config 'unbalanced", ["'unbalanced"]),
        (["python3", "train.py", "--deepspeed_config", "ds.json"], ["ds.json"]),
        (["python3 train.py --deepspeed", "ds.json"], ["ds.json"]),
        (["python3", "train.py", "--deepspeed", "--deepspeed_config=a.json"], ["a.json"]),
        ("x --deepspeed_config a.json --deepspeed b.json", ["a.json", "b.json"]),
    ],
)
def test_entrypoint_ds_config_paths(entrypoint: Any, expected: list[str]) -> None:
    assert entrypoint_ds_config_paths(entrypoint) == expected


@pytest.mark.parametrize(
    "entrypoint",
    [
        "python3 train.py --deepspeed --deepspeed_config ds_config.json",
        "python3 train.py --deepspeed_config ./ds_config.json",
        "python3 train.py --deepspeed=sub/../ds_config.json",
        ["python3", "train.py", "--deepspeed", "--deepspeed_config", "ds_config.json"],
        "python3 train.py --deepspeed",
        "python3 train.py --deepspeed --lr 0.1",
    ],
)
def test_entrypoint_matching_hparam(model_dir: pathlib.Path, entrypoint: Any) -> None:
    config = write_config(model_dir, base_config(entrypoint=entrypoint))
    assert load_experiment(config, model_dir).ds_config == DS_CONFIG


def test_entrypoint_names_another_file(model_dir: pathlib.Path) -> None:
    entrypoint = "python3 train.py --deepspeed --deepspeed_config other.json"
    config = write_config(model_dir, base_config(entrypoint=entrypoint))
    assert load_error(config, model_dir) == (
        "deepspeed.yaml: entrypoint passes --deepspeed_config other.json but "
        "hyperparameters.deepspeed_config is ds_config.json; they must name the same file"
    )


def test_entrypoint_hf_deepspeed_names_another_file(model_dir: pathlib.Path) -> None:
    config = write_config(
        model_dir, base_config(entrypoint=["python3", "hf.py", "--deepspeed=b.json"])
    )
    message = load_error(config, model_dir)
    assert "entrypoint passes --deepspeed b.json" in message


@pytest.mark.parametrize("entrypoint", [42, {"cmd": "x"}, ["python3", 3]])
def test_entrypoint_wrong_type(model_dir: pathlib.Path, entrypoint: Any) -> None:
    config = write_config(model_dir, base_config(entrypoint=entrypoint))
    assert "entrypoint must be a string or a list of strings" in load_error(config, model_dir)
