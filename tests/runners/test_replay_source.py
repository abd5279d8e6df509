"""Replay sources: table matching and validation, function sources and how they are loaded."""

from __future__ import annotations

import json
import logging
import pathlib
import textwrap
from typing import Any

import pytest

from determined_dsat.errors import ConfigError
from determined_dsat.runners.replay import (
    ReplayExecutor,
    ReplayFunction,
    ReplayTable,
    config_matches,
    load_replay_source,
)
from determined_dsat.space.ds_config import profiling_section
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import Outcome

PROFILE = {
    "num_params": 1000,
    "trainable_num_params": 1000,
    "activation_mem_per_gpu": 10,
    "gpu_mem": 10**9,
}


def config(stage: int, mbs: int, **zero: Any) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 2 * mbs,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage, **zero},
        "autotuning": {"enabled": True, "start_profile_step": 3, "end_profile_step": 5},
    }


def profiling_config() -> dict[str, Any]:
    return {"train_micro_batch_size_per_gpu": 1, "autotuning": profiling_section()}


def table(*rows: dict[str, Any]) -> ReplayTable:
    return ReplayTable({"profile": PROFILE, "trials": list(rows)}, "t.json")


# ----- matching -----------------------------------------------------------------------------


def test_row_keys_are_a_subset_and_zero_block_matches_nested() -> None:
    row = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}
    assert config_matches(row, config(2, 4, overlap_comm=True))
    assert not config_matches(row, config(3, 4))
    assert not config_matches(row, config(2, 8))
    nested = {"zero_optimization": {"stage": 2, "overlap_comm": False}}
    assert config_matches(nested, config(2, 4, overlap_comm=False))
    assert not config_matches(nested, config(2, 4, overlap_comm=True))
    assert not config_matches(nested, config(2, 4))  # a key the row names must be present
    assert not config_matches({"zero_optimization": {"stage": 2}}, {"zero_optimization": 2})
    assert config_matches({}, config(1, 1))


def test_numbers_match_across_int_and_float_but_bools_do_not() -> None:
    assert config_matches({"x": 5e7}, {"x": 50_000_000})
    assert not config_matches({"x": True}, {"x": 1})
    assert not config_matches({"x": 1}, {"x": True})
    assert config_matches({"x": False}, {"x": False})


def test_first_matching_row_wins() -> None:
    source = table(
        {"config": {"zero_optimization": {"stage": 2, "overlap_comm": True}},
         "metrics": {"throughput": 1.0}},
        {"config": {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}},
         "metrics": {"throughput": 2.0}},
        {"config": {"zero_optimization": {"stage": 2}}, "metrics": {"throughput": 3.0}},
    )  # fmt: skip
    # Row 0 has no mbs (unkeyed); it still comes first for configs it matches.
    assert source.evaluate(config(2, 4, overlap_comm=True)).metrics == {"throughput": 1.0}
    assert source.evaluate(config(2, 4, overlap_comm=False)).metrics == {"throughput": 2.0}
    assert source.evaluate(config(2, 8)).metrics == {"throughput": 3.0}
    # A keyed row listed before an unkeyed one wins over it.
    source = table(
        {"config": {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}},
         "metrics": {"throughput": 10.0}},
        {"config": {"zero_optimization": {"stage": 1}}, "metrics": {"throughput": 20.0}},
    )  # fmt: skip
    assert source.evaluate(config(1, 4)).metrics == {"throughput": 10.0}
    assert source.evaluate(config(1, 5)).metrics == {"throughput": 20.0}


def test_unmatched_config_is_an_error_outcome_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = table(
        {"config": {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}},
         "metrics": {"throughput": 1.0}},
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="determined_dsat"):
        result = source.evaluate(config(3, 16))
    assert result.outcome is Outcome.ERROR
    assert result.outcome.too_big  # steers a bisection downward like a crash would
    assert "no row" in result.detail
    messages = [r.getMessage() for r in caplog.records if r.name == "determined_dsat"]
    assert any("no row" in m and "16" in m and "3" in m for m in messages), messages


@pytest.mark.parametrize(
    ("error", "outcome"),
    [("oom", Outcome.OOM), ("error", Outcome.ERROR), ("timeout", Outcome.TIMEOUT)],
)
def test_error_rows(error: str, outcome: Outcome) -> None:
    source = table(
        {"config": {"zero_optimization": {"stage": 1}}, "error": error, "duration_s": 7.5},
    )
    result = source.evaluate(config(1, 64))
    assert result.outcome is outcome
    assert result.metrics == {}
    assert result.duration_s == 7.5


def test_table_profile_answers_profiling_config_and_durations_default() -> None:
    source = table({"config": {}, "metrics": {"throughput": 1.0}})
    result = source.evaluate(profiling_config())
    assert result.outcome is Outcome.OK and result.metrics == PROFILE
    assert source.evaluate(config(1, 2)).duration_s == 1.0


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], ["JSON object"]),
        ({"trials": []}, ["profile"]),
        ({"profile": PROFILE}, ["trials", "list"]),
        ({"profile": PROFILE, "trials": {}}, ["trials", "list"]),
        ({"profile": PROFILE, "trials": [{"config": {}, "metrics": {}}, 3]}, ["trials[1]"]),
        ({"profile": PROFILE, "trials": [{"metrics": {}}]}, ["trials[0]", "config"]),
        ({"profile": PROFILE, "trials": [{"config": {}}]}, ["trials[0]", "metrics", "error"]),
        (
            {"profile": PROFILE, "trials": [{"config": {}, "metrics": {}, "error": "oom"}]},
            ["trials[0]", "exactly one"],
        ),
        (
            {"profile": PROFILE, "trials": [{"config": {}, "metrics": {}},
                                            {"config": {}, "error": "segfault"}]},
            ["trials[1]", "segfault"],
        ),
    ],
)  # fmt: skip
def test_malformed_tables_name_the_row(data: Any, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        ReplayTable(data, "bad.json")
    message = str(info.value)
    assert message.startswith("bad.json")
    for word in words:
        assert word in message, message


# ----- functions ------------------------------------------------------------------------------


def test_function_results() -> None:
    def fn(cfg: dict[str, Any]) -> dict[str, Any]:
        mbs = cfg["train_micro_batch_size_per_gpu"]
        if mbs > 8:
            raise MemoryError("CUDA out of memory")
        if mbs == 3:
            raise RuntimeError("NCCL timeout")
        return {"throughput": float(mbs), "duration_s": 4.0}

    source = ReplayFunction(fn, "f.py:fn", errors_as_trials=True)
    ok = source.evaluate(config(1, 4))
    assert ok.outcome is Outcome.OK and ok.metrics == {"throughput": 4.0}
    assert ok.duration_s == 4.0  # taken out of the metrics
    oom = source.evaluate(config(1, 16))
    assert oom.outcome is Outcome.OOM and "CUDA out of memory" in oom.detail
    crash = source.evaluate(config(1, 3))
    assert crash.outcome is Outcome.ERROR
    assert "RuntimeError" in crash.detail and "NCCL timeout" in crash.detail


def test_function_profile_from_landscape() -> None:
    landscape = Landscape.draw(3)
    result = ReplayFunction(landscape, "synthetic").evaluate(profiling_config())
    assert result.outcome is Outcome.OK
    assert result.metrics == landscape.profile.to_json()


def test_executor_orders_completions_by_simulated_time() -> None:
    durations = {1: 5.0, 2: 1.0, 3: 3.0}

    def fn(cfg: dict[str, Any]) -> dict[str, Any]:
        mbs = cfg["train_micro_batch_size_per_gpu"]
        return {"throughput": 1.0, "duration_s": durations[mbs]}

    executor = ReplayExecutor(ReplayFunction(fn, "f"), lambda hp: dict(hp))
    for mbs in (1, 2, 3):
        executor.launch(f"r{mbs}", config(1, mbs), 6)
    order = [executor.next_completion().request_id for _ in range(3)]
    assert order == ["r2", "r3", "r1"]
    assert executor.clock == 5.0
    assert executor.num_running == 0


# ----- loading --------------------------------------------------------------------------------


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_load_function_and_table(tmp_path: pathlib.Path) -> None:
    write(tmp_path / "f.py", "def fn(cfg):\n    return {'throughput': 2.0}\n")
    source = load_replay_source(f"{tmp_path / 'f.py'}:fn")
    assert isinstance(source, ReplayFunction)
    assert source.evaluate(config(1, 1)).metrics == {"throughput": 2.0}
    rows = {"profile": PROFILE, "trials": [{"config": {}, "metrics": {"throughput": 3.0}}]}
    (tmp_path / "t.json").write_text(json.dumps(rows))
    table_source = load_replay_source("t.json", base_dir=tmp_path)  # relative to the model dir
    assert isinstance(table_source, ReplayTable)
    assert table_source.evaluate(config(1, 1)).metrics == {"throughput": 3.0}


@pytest.mark.parametrize(
    ("files", "spec", "words"),
    [
        ({}, "missing.py:fn", ["not found"]),
        ({"f.py": "def fn(cfg):\n    return {}\n"}, "f.py:other", ["no function", "other"]),
        ({"f.py": "fn = 3\n"}, "f.py:fn", ["no function", "fn"]),
        ({"f.py": "raise ImportError('no torch here')\n"}, "f.py:fn", ["ImportError", "torch"]),
        ({"f.py": "def fn(:\n"}, "f.py:fn", ["SyntaxError"]),
        ({}, "missing.json", ["cannot read"]),
        ({"t.json": "{not json"}, "t.json", ["invalid JSON", "line 1"]),
        ({"t.json": "[1, 2]"}, "t.json", ["JSON object"]),
    ],
)
def test_loading_errors_are_config_errors(
    tmp_path: pathlib.Path, files: dict[str, str], spec: str, words: list[str]
) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        load_replay_source(spec, base_dir=tmp_path)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_crashing_function_is_a_bug_not_a_trial() -> None:
    def fn(cfg: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("throughput")

    with pytest.raises(ConfigError) as info:
        ReplayFunction(fn, "model/landscape.py:measure").evaluate(config(2, 8))
    message = str(info.value)
    assert message.startswith("model/landscape.py:measure raised KeyError: 'throughput'")
    assert "ZeRO stage 2, micro-batch 8" in message and "--replay-errors-as-trials" in message
    assert "\n" not in message
    # A MemoryError stays an OOM either way.
    oom = ReplayFunction(lambda cfg: (_ for _ in ()).throw(MemoryError("x")), "f").evaluate(
        config(1, 1)
    )
    assert oom.outcome is Outcome.OOM
