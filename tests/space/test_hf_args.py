"""The batch an HF Trainer command resolves (determined_dsat.space.hf_args)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.errors import ConfigError
from determined_dsat.space.hf_args import (
    HF_DEFAULT_GAS,
    HF_DEFAULT_MBS,
    HfBatch,
    resolve_hf_batch,
)

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "hf_trainer"
LAUNCH = "python3 -m determined.launch.deepspeed python3 train.py"
NO_HPARAMS: dict[str, Any] = {}


def hf(args: str) -> str:
    return f"{LAUNCH} --deepspeed ds_config.json {args}"


def test_flags_as_written() -> None:
    command = hf("--per_device_train_batch_size 4 --gradient_accumulation_steps 3")
    assert resolve_hf_batch(command, NO_HPARAMS) == HfBatch(mbs=4, gas=3)


def test_hf_defaults_without_the_flags() -> None:
    assert resolve_hf_batch(hf("--max_steps 20"), NO_HPARAMS) == HfBatch(
        HF_DEFAULT_MBS, HF_DEFAULT_GAS
    )
    assert (HF_DEFAULT_MBS, HF_DEFAULT_GAS) == (8, 1)


def test_equals_form_kebab_case_and_last_one_wins() -> None:
    command = hf(
        "--per_device_train_batch_size=2 --gradient-accumulation-steps 5 "
        "--per-device-train-batch-size=6 --gradient_accumulation_steps=7"
    )
    assert resolve_hf_batch(command, NO_HPARAMS) == HfBatch(mbs=6, gas=7)


def test_list_entrypoint_is_an_argv() -> None:
    argv = ["python3", "train.py", "--deepspeed=ds.json", "--per_device_train_batch_size", "16"]
    assert resolve_hf_batch(argv, NO_HPARAMS) == HfBatch(mbs=16, gas=1)


@pytest.mark.parametrize(
    "command",
    [
        f"{LAUNCH} --per_device_train_batch_size 4",  # no ds_config at all
        "python3 train.py --deepspeed --deepspeed_config ds.json",  # DeepSpeed's switch
        "python3 train.py --deepspeed",
        "python3 train.py -- --deepspeed ds.json",  # after "--": positional
    ],
)
def test_not_an_hf_trainer_command(command: str) -> None:
    assert resolve_hf_batch(command, NO_HPARAMS) is None


def test_options_end_at_a_bare_double_dash() -> None:
    command = hf("--per_device_train_batch_size 4 -- --per_device_train_batch_size 9")
    assert resolve_hf_batch(command, NO_HPARAMS) == HfBatch(mbs=4, gas=1)


def test_numbers_in_overwrites_and_ds_config_win_over_flags() -> None:
    command = hf("--per_device_train_batch_size 4 --gradient_accumulation_steps 2")
    ds_config = {"train_micro_batch_size_per_gpu": 10, "gradient_accumulation_steps": "auto"}
    assert resolve_hf_batch(command, NO_HPARAMS, ds_config) == HfBatch(mbs=10, gas=2)
    hparams = {"overwrite_deepspeed_args": {"gradient_accumulation_steps": 3}}
    assert resolve_hf_batch(command, hparams, ds_config) == HfBatch(mbs=10, gas=3)
    overrides = {"overwrite_deepspeed_args": {"train_micro_batch_size_per_gpu": 12}}
    assert resolve_hf_batch(command, overrides, ds_config) == HfBatch(mbs=12, gas=2)


@pytest.mark.parametrize("value", ["auto", None, 0, True, "8"])
def test_non_numbers_in_the_config_leave_the_flags(value: Any) -> None:
    command = hf("--per_device_train_batch_size 4")
    hparams = {"overwrite_deepspeed_args": {"train_micro_batch_size_per_gpu": value}}
    ds_config = {"train_micro_batch_size_per_gpu": value}
    assert resolve_hf_batch(command, hparams, ds_config) == HfBatch(mbs=4, gas=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--per_device_train_batch_size", "--per_device_train_batch_size is not followed by"),
        ("--per_device_train_batch_size --max_steps 3", "is not followed by a value"),
        ("--gradient_accumulation_steps=x", "--gradient_accumulation_steps must be followed"),
        ("--per_device_train_batch_size 0", "got '0'"),
        ("--gradient_accumulation_steps -2", "got '-2'"),
        ("--output_dir 'unbalanced", "cannot split the entrypoint"),
    ],
)
def test_bad_command_lines_are_config_errors(args: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^deepspeed.yaml: entrypoint: ") as info:
        resolve_hf_batch(hf(args), NO_HPARAMS, where="deepspeed.yaml: entrypoint")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_overwrites_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="overwrite_deepspeed_args must be a mapping"):
        resolve_hf_batch(hf(""), {"overwrite_deepspeed_args": [1, 2]})


def test_the_examples_command_line() -> None:
    config = yaml.safe_load((EXAMPLE / "deepspeed-cpu.yaml").read_text())
    hparams = config["hyperparameters"]
    assert resolve_hf_batch(config["entrypoint"], hparams) == HfBatch(mbs=4, gas=1)


# ----- against HF's own parser ------------------------------------------------------------


def training_arguments_parser() -> Any:
    """HF's parser of TrainingArguments; a skip without transformers, a failure under CI."""
    try:
        import transformers
    except ImportError:
        reason = "transformers is not installed (pip install -e '.[hf]')"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return transformers.HfArgumentParser(transformers.TrainingArguments)


_MBS_FLAGS = ("--per_device_train_batch_size", "--per-device-train-batch-size")
_GAS_FLAGS = ("--gradient_accumulation_steps", "--gradient-accumulation-steps")
_OTHER = (["--learning_rate", "0.001"], ["--max_steps", "7"], ["--seed=3"], ["--bf16"])


@st.composite
def hf_argvs(draw: st.DrawFn) -> list[str]:
    """Argument lists mixing batch flags (both spellings, both forms) with other options."""
    pieces: list[list[str]] = [["--output_dir", "out"], ["--deepspeed", "ds.json"]]
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.sampled_from(_MBS_FLAGS + _GAS_FLAGS))
        value = str(draw(st.integers(1, 512)))
        pieces.append([f"{flag}={value}"] if draw(st.booleans()) else [flag, value])
    pieces += draw(st.lists(st.sampled_from(_OTHER), max_size=3))
    order = draw(st.permutations(range(len(pieces))))
    return [token for i in order for token in pieces[i]]


@given(argv=hf_argvs())
def test_agrees_with_hf_argument_parser(argv: list[str]) -> None:
    namespace, _ = training_arguments_parser().parse_known_args(argv)
    expected = HfBatch(namespace.per_device_train_batch_size, namespace.gradient_accumulation_steps)
    assert resolve_hf_batch(["python3", "train.py", *argv], NO_HPARAMS) == expected


def test_the_search_space_takes_auto_values_from_the_example_command(
    tmp_path: pathlib.Path,
) -> None:
    """build_space feeds the command's batch into the user's baseline batch."""
    from determined_dsat.build import build_space
    from determined_dsat.methods.binary import BinaryOptions
    from determined_dsat.settings import Backend, SearchSettings
    from determined_dsat.space.experiment import load_experiment

    config = yaml.safe_load((EXAMPLE / "deepspeed-cpu.yaml").read_text())
    config["entrypoint"] = hf("--per_device_train_batch_size 3 --gradient_accumulation_steps 2")
    (tmp_path / "deepspeed.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "ds_config.json").write_text((EXAMPLE / "ds_config.json").read_text())
    experiment = load_experiment(tmp_path / "deepspeed.yaml", tmp_path)
    settings = SearchSettings(
        method="binary",
        config_path=tmp_path / "deepspeed.yaml",
        model_dir=tmp_path,
        backend=Backend.REPLAY,
        run_dir=tmp_path / "run",
        method_options=BinaryOptions(),
    )
    space = build_space(settings, experiment)
    assert space.user_batch == (3, 2)
    config["entrypoint"] = "python3 train.py"  # not an HF command: the ds_config decides
    (tmp_path / "deepspeed.yaml").write_text(yaml.safe_dump(config))
    plain = build_space(settings, load_experiment(tmp_path / "deepspeed.yaml", tmp_path))
    assert plain.hf_batch is None
