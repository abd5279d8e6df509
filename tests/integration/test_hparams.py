"""Tests for the training-script helpers in ``determined_dsat.integration.hparams``."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import multiprocessing
import os
import pathlib
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.errors import ConfigError
from determined_dsat.integration import hparams as hp
from determined_dsat.space.ds_config import merge_overwrites
from determined_dsat.space.knobs import ZERO_KNOBS

MBS_FLAG = "--per_device_train_batch_size"
GAS_FLAG = "--gradient_accumulation_steps"
MBS_KEY = "train_micro_batch_size_per_gpu"
GAS_KEY = "gradient_accumulation_steps"
OVERWRITE_KEY = "overwrite_deepspeed_args"

BASE_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0}},
    "zero_optimization": {"stage": 2, "overlap_comm": True},
}
OVERWRITES: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "zero_optimization": {"stage": 3, "reduce_bucket_size": 50_000_000},
    "autotuning": {"enabled": True, "metric_path": "autotuning_metric.json"},
}


def write_json(path: pathlib.Path, data: Any) -> pathlib.Path:
    path.write_text(json.dumps(data, indent=4))
    return path


@pytest.fixture
def ds_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_json(tmp_path / "ds_config.json", BASE_CONFIG)


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value given for ``flag`` in either ``--flag v`` or ``--flag=v`` form."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


# --- get_ds_config_from_hparams ---------------------------------------------------------


def test_ds_config_merges_overwrites_without_mutating_anything(ds_path: pathlib.Path) -> None:
    before = ds_path.read_bytes()
    hparams = {"deepspeed_config": ds_path.name, "overwrite_deepspeed_args": OVERWRITES}
    hparams_before = copy.deepcopy(hparams)

    config = hp.get_ds_config_from_hparams(hparams, base_dir=ds_path.parent)

    assert config == {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "optimizer": BASE_CONFIG["optimizer"],
        "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 50_000_000},
        "autotuning": OVERWRITES["autotuning"],
    }
    assert ds_path.read_bytes() == before
    assert hparams == hparams_before
    # The result shares no nested objects with the input.
    config["autotuning"]["enabled"] = False
    assert OVERWRITES["autotuning"]["enabled"] is True


@pytest.mark.parametrize("overwrites", [{}, None])
def test_ds_config_without_overwrites_is_the_file(ds_path: pathlib.Path, overwrites: Any) -> None:
    hparams = {"deepspeed_config": ds_path.name, "overwrite_deepspeed_args": overwrites}
    assert hp.get_ds_config_from_hparams(hparams, ds_path.parent) == BASE_CONFIG
    assert hp.get_ds_config_from_hparams({"deepspeed_config": str(ds_path)}) == BASE_CONFIG


def test_ds_config_missing_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match="deepspeed_config"):
        hp.get_ds_config_from_hparams({"overwrite_deepspeed_args": {}})


def test_ds_config_bad_path_names_the_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        hp.get_ds_config_from_hparams({"deepspeed_config": "nope.json"}, tmp_path)
    assert str(tmp_path / "nope.json") in str(info.value)


def test_ds_config_unreadable_path_names_the_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "dir.json").mkdir()  # a directory: unreadable as a file, even for root
    with pytest.raises(ConfigError, match="cannot read") as info:
        hp.get_ds_config_from_hparams({"deepspeed_config": "dir.json"}, tmp_path)
    assert str(tmp_path / "dir.json") in str(info.value)


def test_ds_config_bad_json_names_the_path_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{\n  "train_batch_size": 8,\n}\n')
    with pytest.raises(ConfigError, match="invalid JSON at line 3") as info:
        hp.get_ds_config_from_hparams({"deepspeed_config": "ds.json"}, tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["[1, 2]", '"auto"', "3", "null"])
def test_ds_config_non_object_json_names_the_path(tmp_path: pathlib.Path, content: str) -> None:
    path = tmp_path / "ds.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="must be a JSON object") as info:
        hp.get_ds_config_from_hparams({"deepspeed_config": "ds.json"}, tmp_path)
    assert str(path) in str(info.value)


def test_ds_config_non_mapping_overwrites(ds_path: pathlib.Path) -> None:
    hparams = {"deepspeed_config": str(ds_path), "overwrite_deepspeed_args": [1]}
    with pytest.raises(ConfigError, match="overwrite_deepspeed_args must be a mapping"):
        hp.get_ds_config_from_hparams(hparams)


# --- get_dict_from_yaml_or_json_path ----------------------------------------------------


def test_dict_from_yaml_and_json(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.yaml").write_text("hyperparameters:\n  x: 1\n")
    (tmp_path / "b.json").write_text('{"y": [1, 2]}')
    assert hp.get_dict_from_yaml_or_json_path(tmp_path / "a.yaml") == {"hyperparameters": {"x": 1}}
    assert hp.get_dict_from_yaml_or_json_path(str(tmp_path / "b.json")) == {"y": [1, 2]}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{", "cannot parse"),
        ("bad.yaml", "a: [1,\n", "cannot parse"),
        ("list.yaml", "- 1\n", "expected a mapping"),
        ("missing.yaml", None, "cannot read"),
    ],
)
def test_dict_from_yaml_or_json_errors_name_the_path(
    tmp_path: pathlib.Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        hp.get_dict_from_yaml_or_json_path(path)
    assert str(path) in str(info.value)


# --- update_hf_args ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["space", "equals"])
def test_update_hf_args_changes_values_in_the_users_form(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    if form == "space":
        args = ["--output_dir", "out", MBS_FLAG, "8", GAS_FLAG, "1", "--deepspeed", "ds.json"]
        expected = ["--output_dir", "out", MBS_FLAG, "4", GAS_FLAG, "2", "--deepspeed", "ds.json"]
    else:
        args = ["--output_dir=out", f"{MBS_FLAG}=8", f"{GAS_FLAG}=1", "--deepspeed=ds.json"]
        expected = ["--output_dir=out", f"{MBS_FLAG}=4", f"{GAS_FLAG}=2", "--deepspeed=ds.json"]
    original = list(args)
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        result = hp.update_hf_args(args, {MBS_KEY: 4, GAS_KEY: 2})
    assert result == expected
    assert args == original
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(MBS_FLAG in m and "from 8 to 4" in m for m in messages)
    assert any(GAS_FLAG in m and "from 1 to 2" in m for m in messages)


def test_update_hf_args_is_quiet_when_values_already_agree(
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = [MBS_FLAG, "4", f"{GAS_FLAG}=2"]
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        assert hp.update_hf_args(args, {MBS_KEY: 4, GAS_KEY: 2}) == args
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_update_hf_args_adds_missing_flags(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        result = hp.update_hf_args(["--output_dir", "out"], {MBS_KEY: 16, GAS_KEY: 3})
    assert result == ["--output_dir", "out", MBS_FLAG, "16", GAS_FLAG, "3"]
    assert any("adding" in r.getMessage() for r in caplog.records)


def test_update_hf_args_adds_flags_before_end_of_options() -> None:
    result = hp.update_hf_args(["--do_train", "--", MBS_FLAG, "1"], {MBS_KEY: 2, GAS_KEY: "auto"})
    assert result == ["--do_train", MBS_FLAG, "2", "--", MBS_FLAG, "1"]


@pytest.mark.parametrize("auto", ["auto", " auto "])
def test_update_hf_args_never_copies_auto(auto: str, caplog: pytest.LogCaptureFixture) -> None:
    config = {MBS_KEY: auto, GAS_KEY: auto}
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        assert hp.update_hf_args([MBS_FLAG, "8", f"{GAS_FLAG}=3"], config) == [
            MBS_FLAG,
            "8",
            f"{GAS_FLAG}=3",
        ]
        assert hp.update_hf_args(["--do_train"], config) == ["--do_train"]
    assert not caplog.records


def test_update_hf_args_leaves_flags_of_absent_keys() -> None:
    assert hp.update_hf_args([MBS_FLAG, "8"], {}) == [MBS_FLAG, "8"]
    assert hp.update_hf_args([], {GAS_KEY: 2}) == [GAS_FLAG, "2"]


def test_update_hf_args_changes_every_occurrence() -> None:
    # argparse keeps the last occurrence, so a stale later one would win.
    result = hp.update_hf_args([MBS_FLAG, "8", f"{MBS_FLAG}=16"], {MBS_KEY: 2})
    assert result == [MBS_FLAG, "2", f"{MBS_FLAG}=2"]


def test_update_hf_args_does_not_take_a_prefix_for_the_flag() -> None:
    args = ["--per_device_train_batch_size_extra", "8"]
    assert hp.update_hf_args(args, {MBS_KEY: 2}) == [*args, MBS_FLAG, "2"]


@pytest.mark.parametrize("args", [[MBS_FLAG], [MBS_FLAG, "--do_train"]])
def test_update_hf_args_flag_without_value(args: list[str]) -> None:
    with pytest.raises(ConfigError, match=f"{MBS_FLAG} is not followed by a value"):
        hp.update_hf_args(args, {MBS_KEY: 2})


@pytest.mark.parametrize("value", [0, -1, 2.0, "8", True, None, [4]])
def test_update_hf_args_rejects_non_integer_values(value: Any) -> None:
    with pytest.raises(ConfigError, match=f'{MBS_KEY} must be a positive integer or "auto"'):
        hp.update_hf_args([MBS_FLAG, "8"], {MBS_KEY: value})


# --- get_hf_args_with_overwrites --------------------------------------------------------


def hf_args(ds_path: pathlib.Path, form: str = "space") -> list[str]:
    if form == "space":
        return ["--output_dir", "out", "--deepspeed", str(ds_path), MBS_FLAG, "8"]
    return ["--output_dir=out", f"--deepspeed={ds_path}", f"{MBS_FLAG}=8"]


@pytest.mark.parametrize("form", ["space", "equals"])
def test_hf_args_rewrite_the_file_with_the_merge(ds_path: pathlib.Path, form: str) -> None:
    hparams = {"deepspeed_config": "unused", "overwrite_deepspeed_args": OVERWRITES}
    args = hf_args(ds_path, form)

    result = hp.get_hf_args_with_overwrites(args, hparams)

    assert json.loads(ds_path.read_text()) == merge_overwrites(BASE_CONFIG, OVERWRITES)
    if form == "space":
        assert result == [*args[:-1], "4", GAS_FLAG, "2"]
    else:
        assert result == [*args[:-1], f"{MBS_FLAG}=4", GAS_FLAG, "2"]
    assert hparams["overwrite_deepspeed_args"] is OVERWRITES  # not replaced
    assert OVERWRITES["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 50_000_000}
    # Only the ds_config and its lock file are left: no temp files.
    assert sorted(p.name for p in ds_path.parent.iterdir()) == [
        "ds_config.json",
        "ds_config.json.lock",
    ]


def test_hf_args_without_overwrites_are_left_alone(ds_path: pathlib.Path) -> None:
    before = ds_path.read_bytes()
    args = hf_args(ds_path)
    result = hp.get_hf_args_with_overwrites(args, {"deepspeed_config": "x"})
    assert result == args
    assert result is not args
    assert ds_path.read_bytes() == before
    # Without overwrites even a missing --deepspeed is fine: nothing needs applying.
    assert hp.get_hf_args_with_overwrites(["--do_train"], {}) == ["--do_train"]


def test_hf_args_with_empty_overwrites_do_not_rewrite(ds_path: pathlib.Path) -> None:
    before = ds_path.read_bytes()
    args = hf_args(ds_path)
    assert hp.get_hf_args_with_overwrites(args, {"overwrite_deepspeed_args": {}}) == args
    assert ds_path.read_bytes() == before  # all "auto": nothing to change, file untouched


def test_hf_args_are_idempotent(ds_path: pathlib.Path) -> None:
    hparams = {"overwrite_deepspeed_args": OVERWRITES}
    first = hp.get_hf_args_with_overwrites(hf_args(ds_path), hparams)
    after_first = ds_path.read_bytes()
    mtime = ds_path.stat().st_mtime_ns
    time.sleep(0.01)
    second = hp.get_hf_args_with_overwrites(hf_args(ds_path), hparams)
    again = hp.get_hf_args_with_overwrites(first, hparams)
    assert first == second == again
    assert ds_path.read_bytes() == after_first
    assert ds_path.stat().st_mtime_ns == mtime  # not rewritten when nothing changes


def test_hf_args_keep_the_file_mode(ds_path: pathlib.Path) -> None:
    os.chmod(ds_path, 0o644)
    hp.get_hf_args_with_overwrites(hf_args(ds_path), {"overwrite_deepspeed_args": OVERWRITES})
    assert stat.S_IMODE(ds_path.stat().st_mode) == 0o644


def test_hf_args_update_values_that_only_compare_equal(tmp_path: pathlib.Path) -> None:
    # 1 == 1.0 == True in Python; the file must still get the overwrite's JSON value.
    path = write_json(tmp_path / "ds.json", {"fp16": {"enabled": 1}, MBS_KEY: 2.0})
    overwrites = {"fp16": {"enabled": True}, MBS_KEY: 2}
    hp.get_hf_args_with_overwrites(["--deepspeed", str(path)], {OVERWRITE_KEY: overwrites})
    assert json.loads(path.read_text()) == overwrites
    assert '"enabled": true' in path.read_text()
    assert f'"{MBS_KEY}": 2\n' in path.read_text()


@pytest.mark.parametrize(
    "args", [["--do_train"], [], ["--deepspeed_config", "x.json"], ["--", "--deepspeed", "x"]]
)
def test_hf_args_missing_deepspeed(args: list[str]) -> None:
    with pytest.raises(ConfigError, match="no --deepspeed PATH"):
        hp.get_hf_args_with_overwrites(args, {OVERWRITE_KEY: OVERWRITES})


@pytest.mark.parametrize("args", [["--deepspeed"], ["--deepspeed", "--do_train"], ["--deepspeed="]])
def test_hf_args_deepspeed_without_path(args: list[str]) -> None:
    with pytest.raises(ConfigError, match="--deepspeed"):
        hp.get_hf_args_with_overwrites(args, {OVERWRITE_KEY: OVERWRITES})


def test_hf_args_last_deepspeed_wins(tmp_path: pathlib.Path, ds_path: pathlib.Path) -> None:
    other = write_json(tmp_path / "other.json", {"x": 1})
    hp.get_hf_args_with_overwrites(
        ["--deepspeed", str(other), f"--deepspeed={ds_path}"], {OVERWRITE_KEY: {"y": 2}}
    )
    assert json.loads(other.read_text()) == {"x": 1}
    assert json.loads(ds_path.read_text())["y"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the ds_config"),
        ("{not json", "invalid JSON at line 1"),
        ("[]", "must be a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_hf_args_file_errors_name_the_path(
    tmp_path: pathlib.Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "ds.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        hp.get_hf_args_with_overwrites(["--deepspeed", str(path)], {OVERWRITE_KEY: OVERWRITES})
    assert str(path) in str(info.value)


def test_hf_args_failed_rewrite_is_a_config_error_and_leaves_the_file(
    ds_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = ds_path.read_bytes()

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigError, match="cannot rewrite the ds_config") as info:
        hp.get_hf_args_with_overwrites(hf_args(ds_path), {OVERWRITE_KEY: OVERWRITES})
    assert str(ds_path) in str(info.value)
    assert ds_path.read_bytes() == before
    assert not [p for p in ds_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_hf_args_non_mapping_overwrites(ds_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        hp.get_hf_args_with_overwrites(hf_args(ds_path), {OVERWRITE_KEY: "stage=3"})


def test_hf_args_temp_names_are_unique_per_process(
    ds_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def record(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    hp.get_hf_args_with_overwrites(hf_args(ds_path), {OVERWRITE_KEY: {"a": 1}})
    hp.get_hf_args_with_overwrites(hf_args(ds_path), {OVERWRITE_KEY: {"a": 2}})
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(f".{os.getpid()}." in name for name in seen)


# --- concurrency: real processes ---------------------------------------------------------


def _rank_main(
    args: list[str],
    hparams: dict[str, Any],
    barrier: Any,
    results: Any,
    rounds: int,
    bypass_lock: bool,
    calling: Any = None,
) -> None:
    """One "rank": wait for all, then call get_hf_args_with_overwrites ``rounds`` times.

    ``calling``, an optional event, is set just before the first call.
    """
    import filelock

    from determined_dsat.integration import hparams as module

    if bypass_lock:  # what a file system whose locks do not work would do
        setattr(filelock, "FileLock", lambda *_a, **_k: contextlib.nullcontext())  # noqa: B010
    try:
        barrier.wait(timeout=60)
        if calling is not None:
            calling.set()
        out = [module.get_hf_args_with_overwrites(args, hparams) for _ in range(rounds)]
        results.put(("ok", out))
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put(("error", repr(exc)))


def _run_ranks(
    calls: list[tuple[list[str], dict[str, Any]]], rounds: int = 1, bypass_lock: bool = False
) -> list[list[list[str]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(calls))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_rank_main, args=(a, h, barrier, results, rounds, bypass_lock))
        for a, h in calls
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors
    return [detail for _, detail in outcomes]


def test_hf_args_concurrent_ranks_agree(ds_path: pathlib.Path) -> None:
    args = hf_args(ds_path, "equals")
    hparams = {OVERWRITE_KEY: OVERWRITES}

    outputs = _run_ranks([(args, hparams)] * 4, rounds=3)

    assert json.loads(ds_path.read_text()) == merge_overwrites(BASE_CONFIG, OVERWRITES)
    expected = [*args[:-1], f"{MBS_FLAG}=4", GAS_FLAG, "2"]
    assert all(out == [expected] * 3 for out in outputs)
    assert sorted(p.name for p in ds_path.parent.iterdir()) == [
        "ds_config.json",
        "ds_config.json.lock",
    ]


def test_hf_args_wait_for_the_lock(ds_path: pathlib.Path) -> None:
    # A rank that finds the lock held must not touch the file until it is released.
    import filelock

    args = hf_args(ds_path)
    before = ds_path.read_bytes()
    ctx = multiprocessing.get_context("spawn")
    barrier, results, calling = ctx.Barrier(1), ctx.Queue(), ctx.Event()
    hparams = {OVERWRITE_KEY: OVERWRITES}
    with filelock.FileLock(str(ds_path) + ".lock"):
        rank = ctx.Process(
            target=_rank_main, args=(args, hparams, barrier, results, 1, False, calling)
        )
        rank.start()
        assert calling.wait(timeout=60)
        time.sleep(1.0)  # the call has started; without the lock it would be done by now
        assert rank.is_alive()
        assert ds_path.read_bytes() == before
    status, out = results.get(timeout=120)
    rank.join(timeout=30)
    assert status == "ok"
    assert out == [[*args[:-1], "4", GAS_FLAG, "2"]]
    assert json.loads(ds_path.read_text()) == merge_overwrites(BASE_CONFIG, OVERWRITES)


def _read_while(path: pathlib.Path, stop: Any, bad: Any) -> None:
    """Read ``path`` until ``stop`` is set; count reads that are not a whole JSON object."""
    while not stop.is_set():
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                bad.value += 1
        except (OSError, ValueError):
            bad.value += 1


def test_hf_args_rewrites_stay_atomic_without_the_lock(tmp_path: pathlib.Path) -> None:
    # Ranks that bypass the lock and keep writing *different* overwrites still never leave
    # a torn file or clobber each other's temp file: a reader only ever sees whole JSON.
    path = write_json(tmp_path / "ds.json", {**BASE_CONFIG, "pad": "x" * 200_000})
    calls = [
        (["--deepspeed", str(path)], {OVERWRITE_KEY: {MBS_KEY: rank + 1, "rank": rank}})
        for rank in range(4)
    ]
    ctx = multiprocessing.get_context("spawn")
    stop, bad = ctx.Event(), ctx.Value("i", 0)
    reader = ctx.Process(target=_read_while, args=(path, stop, bad))
    reader.start()
    try:
        outputs = _run_ranks(calls, rounds=5, bypass_lock=True)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert reader.exitcode == 0
    assert bad.value == 0
    final = json.loads(path.read_text())
    assert final["rank"] in range(4)
    assert final[MBS_KEY] == final["rank"] + 1
    assert len(outputs) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- property: returned args agree with the ds_config -----------------------------------

batch_value = st.one_of(st.integers(min_value=1, max_value=4096), st.just("auto"))
flag_form = st.sampled_from(["space", "equals", "absent"])


@contextlib.contextmanager
def scratch_dir() -> Iterator[pathlib.Path]:
    # Hypothesis reruns the test body, so a function-scoped tmp_path would be shared.
    with tempfile.TemporaryDirectory() as name:
        yield pathlib.Path(name)


@given(
    base_mbs=batch_value,
    base_gas=batch_value,
    mbs=st.one_of(batch_value, st.none()),
    gas=st.one_of(batch_value, st.none()),
    mbs_form=flag_form,
    gas_form=flag_form,
    user_mbs=st.integers(min_value=1, max_value=64),
    user_gas=st.integers(min_value=1, max_value=64),
)
def test_hf_args_agree_with_the_merged_config(
    base_mbs: int | str,
    base_gas: int | str,
    mbs: int | str | None,
    gas: int | str | None,
    mbs_form: str,
    gas_form: str,
    user_mbs: int,
    user_gas: int,
) -> None:
    overwrites: dict[str, Any] = {"zero_optimization": {"stage": 1}}
    if mbs is not None:
        overwrites[MBS_KEY] = mbs
    if gas is not None:
        overwrites[GAS_KEY] = gas
    with scratch_dir() as tmp:
        path = write_json(tmp / "ds.json", {MBS_KEY: base_mbs, GAS_KEY: base_gas})
        args = ["--output_dir", "out", "--deepspeed", str(path)]
        for flag, form, value in ((MBS_FLAG, mbs_form, user_mbs), (GAS_FLAG, gas_form, user_gas)):
            if form == "space":
                args += [flag, str(value)]
            elif form == "equals":
                args.append(f"{flag}={value}")

        result = hp.get_hf_args_with_overwrites(args, {OVERWRITE_KEY: overwrites})
        merged = json.loads(path.read_text())

    assert merged == merge_overwrites({MBS_KEY: base_mbs, GAS_KEY: base_gas}, overwrites)
    assert result[:4] == args[:4]
    for flag, key, form, user in (
        (MBS_FLAG, MBS_KEY, mbs_form, user_mbs),
        (GAS_FLAG, GAS_KEY, gas_form, user_gas),
    ):
        values = flag_values(result, flag)
        if merged[key] == "auto":
            # Untouched: the user's flag as given, or still absent.
            assert values == ([] if form == "absent" else [str(user)])
        else:
            assert values == [str(merged[key])]
        if form == "equals":
            assert not [a for a in result if a == flag]  # the user's form is kept
        elif form == "space":
            assert not [a for a in result if a.startswith(flag + "=")]


# --- get_random_zero_optim_config -------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_random_zero_config_has_the_requested_stage(stage: int) -> None:
    for seed in range(20):
        block = hp.get_random_zero_optim_config(stage, np.random.default_rng(seed))
        assert block["stage"] == stage
        table = ZERO_KNOBS[stage]
        assert set(block) - {"stage"} == set(table)
        assert all(block[key] in choices for key, choices in table.items())


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_random_zero_config_is_reproducible_with_a_seed(stage: int) -> None:
    blocks = [hp.get_random_zero_optim_config(stage, np.random.default_rng(s)) for s in range(30)]
    again = [hp.get_random_zero_optim_config(stage, np.random.default_rng(s)) for s in range(30)]
    assert blocks == again
    assert len({json.dumps(b, sort_keys=True) for b in blocks}) > 1  # the seed matters
    assert hp.get_random_zero_optim_config(stage)["stage"] == stage  # unseeded works too


@pytest.mark.parametrize("stage", [-1, 4, True, 2.5])
def test_random_zero_config_rejects_unknown_stages(stage: Any) -> None:
    with pytest.raises(ConfigError, match="ZeRO stage must be 0, 1, 2 or 3"):
        hp.get_random_zero_optim_config(stage)
