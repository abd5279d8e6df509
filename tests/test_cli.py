"""The ``dsat`` command line: flags, validation, exit codes, and the hand-off to ``run_search``."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
import yaml
from cli_support import Launch

from determined_dsat import cli
from determined_dsat.errors import ConfigError, SearchError
from determined_dsat.methods import registry
from determined_dsat.methods.asha import AshaOptions
from determined_dsat.methods.binary import BinaryOptions
from determined_dsat.methods.random_search import RandomOptions
from determined_dsat.settings import Backend, OffloadTarget, SearchSettings
from determined_dsat.space.metric import Metric

USAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def documented_flags() -> tuple[list[str], dict[str, list[str]]]:
    """The flags docs/usage.md documents: those of every method (its flag table: short and
    long names) and each method's own (the ``METHOD``: paragraphs under the table)."""
    text = USAGE.read_text()
    common = [
        name
        for cell in re.findall(r"^\| `(-[^` ]+)[^`]*` \|", text, re.MULTILINE)
        for name in cell.split("/")
    ]
    own = {
        method: sorted({f for f in re.findall(r"`(--[a-z-]+)", body)} - set(common))
        for method, body in re.findall(
            r"^`(\w+)`: (.*?)(?:\n\n|\Z)", text, re.MULTILINE | re.DOTALL
        )
    }
    return common, own


COMMON_FLAGS, METHOD_FLAGS = documented_flags()


def parser_flags(method: str) -> set[str]:
    """Every option string the ``method`` subcommand accepts, but -h/--help."""
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name
        for action in subparsers.choices[method]._actions
        for name in action.option_strings
        if name not in ("-h", "--help")
    }


BASE = ["model/deepspeed.yaml", "model"]

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], launch: Launch, project: pathlib.Path) -> Run:
    def _run(method: str, *flags: str, paths: list[str] | None = None) -> tuple[int, str]:
        code = cli.main([method, *(BASE if paths is None else paths), *flags])
        return code, capsys.readouterr().err

    return _run


def assert_error(result: tuple[int, str], launch: Launch, *words: str) -> str:
    code, err = result
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dsat: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert launch.calls == []
    return err


# --- validation: every case ends with exit 2, one line, nothing launched ------------------


@pytest.mark.parametrize(
    ("method", "flags", "words"),
    [
        ("binary", ["-m", "speed"], ["--metric", "speed"]),
        ("binary", ["-z", "1", "4"], ["--zero-stages", "4"]),
        ("binary", ["-z", "-1"], ["--zero-stages", "-1"]),
        ("binary", ["--max-trials", "1"], ["--max-trials", "profiling"]),
        ("binary", ["-mt", "0"], ["--max-trials"]),
        ("binary", ["--max-concurrent-trials", "0"], ["--max-concurrent-trials"]),
        ("binary", ["-mct", "-3"], ["--max-concurrent-trials"]),
        ("binary", ["--max-slots", "0"], ["--max-slots"]),
        ("random", ["--trials-per-random-config", "0"], ["--trials-per-random-config"]),
        ("random", ["--early-stopping", "0"], ["--early-stopping"]),
        ("asha", ["--max-rungs", "0"], ["--max-rungs"]),
        ("asha", ["--min-binary-search-trials", "0"], ["--min-binary-search-trials"]),
        ("asha", ["--divisor", "1"], ["--divisor", "at least 2"]),
        ("asha", ["--asha-early-stopping", "-1"], ["--asha-early-stopping"]),
        ("asha", ["--search-range-factor", "0"], ["--search-range-factor"]),
        ("binary", ["--search-range-factor", "-0.5"], ["--search-range-factor"]),
        ("binary", ["--search-range-factor", "nan"], ["--search-range-factor"]),
        ("binary", ["--search-range-factor", "inf"], ["--search-range-factor"]),
        ("binary", ["--train-batch-size", "0"], ["--train-batch-size"]),
        ("binary", ["--divisible-by", "0"], ["--divisible-by"]),
        ("binary", ["--max-search-runner-restarts", "-1"], ["--max-search-runner-restarts"]),
        ("binary", ["--start-profile-step", "0"], ["--start-profile-step"]),
        ("binary", ["--start-profile-step", "5"], ["--end-profile-step", "--start-profile-step"]),
        ("binary", ["--end-profile-step", "2"], ["--end-profile-step"]),
        ("binary", ["--search-runner-config", "nope.yaml"], ["--search-runner-config", "nope"]),
        ("binary", ["--search-runner-config", "model"], ["--search-runner-config", "model"]),
        ("binary", ["-i", "model/ds_config.json", "ghost.py"], ["--include", "ghost.py"]),
        ("binary", ["--offload", "param", "-z", "1", "2"], ["--offload", "param", "stage 3"]),
        ("binary", ["--offload", "optimizer", "-z", "0"], ["--offload"]),
        ("binary", ["--replay-source", "r.json"], ["--replay-source", "--backend replay"]),
        ("binary", ["--backend", "replay"], ["--replay-source"]),
        ("binary", ["--backend", "replay", "--replay-source", "no.json"], ["--replay-source"]),
        ("binary", ["--resume", "model", "--run-dir", "x"], ["--resume", "--run-dir"]),
        ("binary", ["--resume", "model"], ["--resume", "state.json"]),
        ("binary", ["--resume", "nowhere"], ["--resume", "state.json"]),
        # argparse's own errors
        ("binary", ["--max-trials", "many"], ["--max-trials", "many"]),
        ("binary", ["--divisor", "2"], ["unrecognized", "--divisor", "dsat binary --help"]),
        ("binary", ["--bogus"], ["unrecognized", "--bogus"]),
        ("asha", ["--max-rungs", "2.5"], ["--max-rungs", "2.5"]),
        ("binary", ["--backend", "slurm"], ["--backend", "slurm"]),
        ("binary", ["--offload", "gpu"], ["--offload", "gpu"]),
        ("binary", ["--search-range-factor", "wide"], ["--search-range-factor"]),
        ("binary", ["-z"], ["--zero-stages"]),
    ],
)
def test_flag_validation(
    run: Run, launch: Launch, method: str, flags: list[str], words: list[str]
) -> None:
    assert_error(run(method, *flags), launch, *words)


def test_replay_source_py_forms(run: Run, launch: Launch, project: pathlib.Path) -> None:
    (project / "table.py").write_text("def rows():\n    return []\n")
    replay = ["--backend", "replay", "--replay-source"]
    assert_error(run("binary", *replay, "model/table.py"), launch, "--replay-source", "function")
    assert_error(run("binary", *replay, "model/table.py:1x"), launch, "--replay-source", "1x")
    assert_error(run("binary", *replay, "model/gone.py:rows"), launch, "gone.py")


def test_missing_config_path(run: Run, launch: Launch) -> None:
    assert_error(run("binary", paths=["missing.yaml", "model"]), launch, "missing.yaml")


def test_config_path_is_a_directory(run: Run, launch: Launch) -> None:
    assert_error(run("binary", paths=["model", "model"]), launch, "not a file", "model")


def test_missing_model_dir(run: Run, launch: Launch) -> None:
    err = assert_error(run("binary", paths=["model/deepspeed.yaml", "gone"]), launch)
    assert "model directory" in err and "gone" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["--bogus"], ["bayes", "a.yaml", "."], ["binary"], ["binary", "model/deepspeed.yaml"]],
)
def test_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str], launch: Launch, project: pathlib.Path
) -> None:
    code = cli.main(argv)
    assert_error((code, capsys.readouterr().err), launch, "dsat")


def test_experiment_errors_are_reported(run: Run, launch: Launch, project: pathlib.Path) -> None:
    (project / "deepspeed.yaml").write_text(yaml.safe_dump({"name": "x", "hyperparameters": {}}))
    assert_error(run("binary"), launch, "deepspeed.yaml", "hyperparameters.deepspeed_config")


def test_bad_ds_config_is_reported(run: Run, launch: Launch, project: pathlib.Path) -> None:
    (project / "ds_config.json").write_text("{\n  nope\n}")
    assert_error(run("binary"), launch, "ds_config.json", "invalid JSON at line 2")


def test_unreachable_train_batch_size(run: Run, launch: Launch) -> None:
    # slots_per_trial is 2: an odd global batch cannot be split across the slots.
    assert_error(run("binary", "--train-batch-size", "3"), launch, "--train-batch-size 3")
    assert_error(
        run("binary", "--train-batch-size", "8", "--divisible-by", "8"),
        launch, "--train-batch-size 8", "divisible by 8",
    )  # fmt: skip


def test_max_slots_below_slots_per_trial(run: Run, launch: Launch) -> None:
    assert_error(run("binary", "-ms", "1"), launch, "--max-slots", "slots_per_trial")


def test_run_dir_holding_a_search(run: Run, launch: Launch, tmp_path: pathlib.Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text("{}")
    assert_error(run("binary", "--run-dir", "old"), launch, "--run-dir", "--resume")


def test_run_dir_is_a_file(run: Run, launch: Launch) -> None:
    assert_error(run("binary", "--run-dir", "model/ds_config.json"), launch, "--run-dir")


def test_parse_settings_raises_config_error(project: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="--max-trials"):
        cli.parse_settings(["binary", *BASE, "--max-trials", "1"])
    with pytest.raises(ConfigError, match="invalid int value"):
        cli.parse_settings(["binary", *BASE, "--max-trials", "x"])


# --- happy paths ---------------------------------------------------------------------------


def test_binary_defaults(run: Run, launch: Launch, project: pathlib.Path) -> None:
    code, err = run("binary")
    assert code == 0
    s = launch.settings
    assert s.method == "binary"
    assert s.method_options == BinaryOptions()
    assert s.config_path == project / "deepspeed.yaml"
    assert s.model_dir == project
    assert s.backend is Backend.LOCAL
    assert (s.max_trials, s.max_concurrent_trials, s.max_slots) == (64, 16, None)
    assert s.metric is Metric.THROUGHPUT
    assert s.zero_stages == (1, 2, 3)
    assert (s.start_profile_step, s.end_profile_step, s.random_seed) == (3, 5, 42)
    assert (s.search_runner_config, s.max_search_runner_restarts) == (None, 5)
    assert (s.replay_source, s.train_batch_size, s.divisible_by) == (None, None, 1)
    assert (s.include, s.offload, s.resume) == ((), frozenset(), False)
    assert not s.run_full_experiment
    assert s.run_dir.parent == project.parent / "dsat-runs"
    assert re.fullmatch(r"\d{8}-\d{6}-binary", s.run_dir.name)
    assert not s.run_dir.exists()
    experiment = launch.calls[0][1]
    assert experiment.slots_per_trial == 2 and experiment.max_length == 10
    shown = f"./dsat-runs/{s.run_dir.name}"
    assert err == f"dsat: backend local (no DET_MASTER set); run directory {shown}\n"


def test_run_search_exit_code_is_returned(run: Run, launch: Launch) -> None:
    launch.result = 3
    assert run("binary")[0] == 3


def test_backend_from_det_master(run: Run, launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DET_MASTER", "http://master:8080")
    code, err = run("random")
    assert code == 0
    assert launch.settings.backend is Backend.DETERMINED
    assert "backend determined (DET_MASTER set)" in err


def test_empty_det_master_means_local(
    run: Run, launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DET_MASTER", "")
    assert run("random")[0] == 0
    assert launch.settings.backend is Backend.LOCAL


def test_backend_flag_wins(run: Run, launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DET_MASTER", "http://master:8080")
    code, err = run("binary", "--backend", "local")
    assert code == 0
    assert launch.settings.backend is Backend.LOCAL
    assert "backend local (--backend)" in err


def test_asha_options(run: Run, launch: Launch) -> None:
    flags = ["--max-rungs", "3", "--min-binary-search-trials", "4", "--asha-early-stopping", "1",
             "--divisor", "3", "--search-range-factor", "1.5"]  # fmt: skip
    assert run("asha", *flags)[0] == 0
    assert launch.settings.method_options == AshaOptions(3, 4, 1, 3, 1.5)


def test_random_options(run: Run, launch: Launch) -> None:
    assert run("random", "--trials-per-random-config", "2", "--early-stopping", "7")[0] == 0
    assert launch.settings.method == "random"
    assert launch.settings.method_options == RandomOptions(2, 7)


def test_random_defaults(run: Run, launch: Launch) -> None:
    assert run("random")[0] == 0
    assert launch.settings.method_options == RandomOptions()


def test_asha_defaults(run: Run, launch: Launch) -> None:
    assert run("asha")[0] == 0
    assert launch.settings.method_options == AshaOptions()


def test_every_common_flag(
    run: Run, launch: Launch, project: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "runner.yaml").write_text("name: runner\n")
    (tmp_path / "data").mkdir()
    flags = [
        "-i", "data", "model/ds_config.json", "-mt", "10", "-ms", "8", "-mct", "3",
        "-m", "latency", "--run-full-experiment", "-z", "3", "0", "3", "--start-profile-step",
        "1", "--end-profile-step", "2", "-r", "7", "--search-runner-config", "runner.yaml",
        "--max-search-runner-restarts", "0", "--train-batch-size", "32", "--divisible-by", "2",
        "--offload", "param", "optimizer", "param", "--run-dir", "out/run1",
    ]  # fmt: skip
    code, err = run("binary", *flags)
    assert code == 0
    s = launch.settings
    assert s.include == (tmp_path / "data", project / "ds_config.json")
    assert (s.max_trials, s.max_slots, s.max_concurrent_trials) == (10, 8, 3)
    assert s.metric is Metric.LATENCY and s.run_full_experiment
    assert s.zero_stages == (0, 3)
    assert (s.start_profile_step, s.end_profile_step, s.random_seed) == (1, 2, 7)
    assert s.search_runner_config == tmp_path / "runner.yaml"
    assert s.max_search_runner_restarts == 0
    assert (s.train_batch_size, s.divisible_by) == (32, 2)
    assert s.offload == frozenset({OffloadTarget.PARAM, OffloadTarget.OPTIMIZER})
    assert s.run_dir == tmp_path / "out" / "run1" and not s.resume
    assert err.endswith("run directory ./out/run1\n")
    assert SearchSettings.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_absolute_paths_outside_cwd(
    run: Run, launch: Launch, project: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run("binary", paths=["../model/deepspeed.yaml", "../model"])[0] == 0
    assert launch.settings.config_path == project / "deepspeed.yaml"
    assert launch.settings.model_dir == project
    assert launch.settings.run_dir.parent == elsewhere / "dsat-runs"


def test_default_run_dir_is_made_unique(
    run: Run, launch: Launch, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_utc_stamp", lambda: "20240102-030405")
    (tmp_path / "dsat-runs" / "20240102-030405-asha").mkdir(parents=True)
    (tmp_path / "dsat-runs" / "20240102-030405-asha-2").mkdir()
    assert run("asha")[0] == 0
    assert launch.settings.run_dir == tmp_path / "dsat-runs" / "20240102-030405-asha-3"


def test_resume_uses_saved_settings(run: Run, launch: Launch, tmp_path: pathlib.Path) -> None:
    assert run("binary", "--max-trials", "9", "--random-seed", "7", "--run-dir", "old")[0] == 0
    saved = launch.settings
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text("{}")
    (tmp_path / "old" / "settings.json").write_text(json.dumps(saved.to_json()))
    launch.calls.clear()
    code, err = run("binary", "--max-trials", "50", "--resume", "old")
    assert code == 0, err
    resumed = launch.settings
    assert resumed.resume and resumed.run_dir == tmp_path / "old"
    # The saved budget and seed win over flags given with --resume.
    assert (resumed.max_trials, resumed.random_seed) == (9, 7)
    assert "resuming ./old" in err


def test_resume_refuses_other_method(run: Run, launch: Launch, tmp_path: pathlib.Path) -> None:
    assert run("binary", "--run-dir", "old")[0] == 0
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text("{}")
    (tmp_path / "old" / "settings.json").write_text(json.dumps(launch.settings.to_json()))
    launch.calls.clear()
    code, err = run("asha", "--resume", "old")
    assert code == 2 and "method 'binary'" in err and not launch.calls


def test_resume_without_saved_settings(run: Run, launch: Launch, tmp_path: pathlib.Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text("{}")
    code, err = run("binary", "--resume", "old")
    assert code == 2 and "settings.json" in err and not launch.calls


def test_replay_sources(run: Run, launch: Launch, project: pathlib.Path) -> None:
    (project / "table.json").write_text("[]")
    (project / "table.py").write_text("def rows():\n    return []\n")
    assert run("binary", "--backend", "replay", "--replay-source", "model/table.json")[0] == 0
    assert launch.settings.backend is Backend.REPLAY
    assert launch.settings.replay_source == str(project / "table.json")
    launch.calls.clear()
    assert run("binary", "--backend", "replay", "--replay-source", "model/table.py:rows")[0] == 0
    assert launch.settings.replay_source == f"{project / 'table.py'}:rows"


def test_zero_stages_deduplicated_and_sorted(run: Run, launch: Launch) -> None:
    assert run("binary", "-z", "3", "1", "3", "0", "1")[0] == 0
    assert launch.settings.zero_stages == (0, 1, 3)


def test_fixed_train_batch_size(run: Run, launch: Launch) -> None:
    assert run("binary", "--train-batch-size", "16", "--divisible-by", "4")[0] == 0
    assert (launch.settings.train_batch_size, launch.settings.divisible_by) == (16, 4)


def test_main_without_argv_reads_sys_argv(
    launch: Launch, project: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["dsat", "binary", *BASE, "-mt", "5"])
    assert cli.main() == 0
    assert launch.settings.max_trials == 5


# --- failures after launch -----------------------------------------------------------------


def test_search_error_exits_1(run: Run, launch: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    launch.result = SearchError("the profiling trial failed:\nout of memory")
    code, err = run("binary")
    assert code == 1
    assert err.splitlines()[-1] == "dsat: error: the profiling trial failed: out of memory"


def test_config_error_from_run_search_exits_2(run: Run, launch: Launch) -> None:
    launch.result = ConfigError("table.json: row 3 has no metric")
    code, err = run("binary")
    assert code == 2
    assert err.splitlines()[-1] == "dsat: error: table.json: row 3 has no metric"


def test_keyboard_interrupt_exits_130(run: Run, launch: Launch) -> None:
    launch.result = KeyboardInterrupt()
    code, err = run("binary")
    assert code == 130
    assert err.splitlines()[-1] == "dsat: interrupted"


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_help_lists_every_flag(method: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([method, "--help"]) == 0
    text = capsys.readouterr().out
    # docs/usage.md documents exactly the flags the parser takes, and --help shows them.
    assert parser_flags(method) == set(COMMON_FLAGS + METHOD_FLAGS[method])
    # The flags a hand-written list here once missed (the docs are parsed, not copied).
    missed = {"--mbs-tolerance", "--no-baseline", "--confirm-top", "--trial-timeout"}
    assert missed | {"--trial-memory-limit"} < set(COMMON_FLAGS)
    for flag in COMMON_FLAGS + METHOD_FLAGS[method]:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", text), flag
    for other in {f for fs in METHOD_FLAGS.values() for f in fs} - set(METHOD_FLAGS[method]):
        assert other not in text
    defaults = ["64", "16", "throughput", "[1, 2, 3]", "42", "5", "3", "1"]
    for default in defaults:
        assert f"(default: {default})" in " ".join(text.split()), default
    assert "DET_MASTER" in text and "config_path" in text and "model_dir" in text


def test_help_via_build_parser(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    text = parser.format_help()
    assert "DeepSpeed Autotune" in text
    for method in METHOD_FLAGS:
        assert method in text
    assert set(registry.methods()) == set(METHOD_FLAGS)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["asha", "-h"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 2)" in out and "(default: 0)" in out and "(default: 1.0)" in out


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "DeepSpeed Autotune" in out and "asha" in out and "random" in out


# --- the real process -----------------------------------------------------------------------


def test_python_dash_m_missing_config(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DET_MASTER"}
    proc = subprocess.run(
        [sys.executable, "-m", "determined_dsat", "binary", "missing.yaml", "."],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["dsat: error: experiment config not found: missing.yaml"]


def test_python_dash_m_bad_flag(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "determined_dsat", "binary", "a.yaml", ".", "--max-trials", "x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("dsat: error: argument -mt/--max-trials")


def test_parse_settings_does_not_create_run_dir(project: pathlib.Path) -> None:
    settings = cli.parse_settings(["random", *BASE])
    assert not settings.run_dir.exists()
    assert not (project.parent / "dsat-runs").exists()


@pytest.mark.parametrize("value", ["-0.1", "1", "nan", "inf"])
def test_mbs_tolerance_must_be_a_fraction(run: Run, launch: Launch, value: str) -> None:
    code, err = run("binary", "--mbs-tolerance", value)
    assert code == 2 and "--mbs-tolerance" in err and not launch.calls


def test_mbs_tolerance_reaches_settings(run: Run, launch: Launch) -> None:
    assert run("asha", "--mbs-tolerance", "0")[0] == 0
    assert launch.settings.mbs_tolerance == 0.0
    launch.calls.clear()
    assert run("asha")[0] == 0
    assert launch.settings.mbs_tolerance == 0.05


def test_baseline_and_confirmation_on_by_default(run: Run, launch: Launch) -> None:
    assert run("binary")[0] == 0
    assert launch.settings.baseline is True and launch.settings.confirm_top == 3
    launch.calls.clear()
    assert run("binary", "--no-baseline", "--confirm-top", "0")[0] == 0
    assert launch.settings.baseline is False and launch.settings.confirm_top == 0


def test_confirm_top_must_not_be_negative(run: Run, launch: Launch) -> None:
    code, err = run("asha", "--confirm-top", "-1")
    assert code == 2 and "--confirm-top" in err and not launch.calls
