"""``dsat model``: its flag, its validation and what reaches the settings."""

from __future__ import annotations

import pathlib

import pytest
from cli_support import Launch

from determined_dsat import cli
from determined_dsat.methods.model_based import ModelOptions
from determined_dsat.settings import SearchSettings


def run(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = cli.main(["model", "model/deepspeed.yaml", "model", *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("value", ["-0.01", "1", "1.5", "nan", "inf", "-inf"])
def test_bad_min_improvement_exits_2_with_one_line(
    value: str, capsys: pytest.CaptureFixture[str], launch: Launch, project: pathlib.Path
) -> None:
    code, err = run(capsys, f"--min-improvement={value}")
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dsat: error: --min-improvement must be a fraction in [0, 1)")
    assert value.lstrip("-") in err.lower()
    assert "Traceback" not in err and not launch.calls


def test_min_improvement_that_is_not_a_number(
    capsys: pytest.CaptureFixture[str], launch: Launch, project: pathlib.Path
) -> None:
    code, err = run(capsys, "--min-improvement", "tiny")
    assert code == 2 and "--min-improvement" in err and "tiny" in err and not launch.calls


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], 0.005), (["--min-improvement", "0"], 0.0), (["--min-improvement", "0.02"], 0.02)],
)
def test_min_improvement_reaches_settings(
    flags: list[str],
    expected: float,
    capsys: pytest.CaptureFixture[str],
    launch: Launch,
    project: pathlib.Path,
) -> None:
    assert run(capsys, *flags)[0] == 0
    [(settings, _)] = launch.calls
    assert settings.method == "model"
    assert settings.method_options == ModelOptions(min_improvement=expected)
    assert SearchSettings.from_json(settings.to_json()) == settings


def test_other_methods_do_not_take_the_flag(
    capsys: pytest.CaptureFixture[str], launch: Launch, project: pathlib.Path
) -> None:
    code = cli.main(["binary", "model/deepspeed.yaml", "model", "--min-improvement", "0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized" in err and "--min-improvement" in err


def test_help_shows_flag_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["model", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--min-improvement FRACTION" in out and "(default: 0.005)" in out
    assert cli.main(["--help"]) == 0
    assert "model-based" in capsys.readouterr().out
