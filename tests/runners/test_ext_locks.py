"""Stale torch extension locks are removed; held ones are not."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from determined_dsat.runners import ext_locks


def _lock(root: pathlib.Path, op: str) -> pathlib.Path:
    path = root / "py311_cpu" / op / "lock"
    path.parent.mkdir(parents=True)
    return path


def test_root_follows_torch_extensions_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/ext")
    assert ext_locks.extensions_root() == pathlib.Path("/somewhere/ext")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    assert ext_locks.extensions_root() == pathlib.Path("/cache/torch_extensions")


def test_a_lock_nobody_holds_is_removed(tmp_path: pathlib.Path) -> None:
    stale = _lock(tmp_path, "cpu_adam")
    stale.touch()
    assert ext_locks.clear_stale_locks(tmp_path) == [stale]
    assert not stale.exists()


def test_locks_directly_under_an_explicit_extensions_dir_are_found(tmp_path: pathlib.Path) -> None:
    # With $TORCH_EXTENSIONS_DIR set, torch builds in <dir>/<op>/ (no build tag).
    stale = tmp_path / "fused_adam" / "lock"
    stale.parent.mkdir()
    stale.touch()
    assert ext_locks.extension_locks(tmp_path) == [stale]
    assert ext_locks.clear_stale_locks(tmp_path) == [stale]


def test_a_lock_a_live_process_holds_is_kept(tmp_path: pathlib.Path) -> None:
    held = _lock(tmp_path, "cpu_adam")
    stale = _lock(tmp_path, "shm_comm")
    stale.touch()
    # The same way torch's FileBaton holds it: created O_EXCL and kept open.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL); "
            "print('held', flush=True); time.sleep(60)",
            str(held),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert ext_locks.clear_stale_locks(tmp_path) == [stale]
        assert held.exists()
    finally:
        holder.kill()
        holder.wait()
    # Its holder gone without releasing it: now it is stale.
    assert ext_locks.clear_stale_locks(tmp_path) == [held]


def test_nothing_to_do_is_quick(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    assert ext_locks.clear_stale_locks(tmp_path / "missing") == []
    assert ext_locks.clear_stale_locks(tmp_path) == []
    assert time.monotonic() - started < 0.2


def test_open_files_sees_our_own_descriptors(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        assert str(path) in ext_locks.open_files()
    finally:
        os.close(fd)
