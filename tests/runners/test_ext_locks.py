"""Stale torch extension locks are removed; held ones, and ones that cannot be proven
stale, are not."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from determined_dsat.runners import ext_cache, ext_locks


def _lock(root: pathlib.Path, op: str) -> pathlib.Path:
    path = root / "py311_cpu" / op / "lock"
    path.parent.mkdir(parents=True)
    return path


def test_root_follows_torch_extensions_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/ext")
    assert ext_locks.extensions_root() == pathlib.Path("/somewhere/ext")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    root = ext_locks.extensions_root()
    assert root == pathlib.Path("/cache/torch_extensions") / ext_cache.environment_key()
    assert root == ext_cache.extensions_root()  # the locks are looked for where ops live


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


# ----- locks that cannot be proven stale -----------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A live process of ours, standing in for one whose open files we could not read."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _hide(monkeypatch: pytest.MonkeyPatch, pid: int, uid: int | None = None) -> None:
    """Make ``/proc/<pid>/fd`` unreadable (another user, another PID namespace...)."""
    real_targets, real_uids = ext_locks._fd_targets, ext_locks._uids

    def targets(fd_dir: pathlib.Path) -> list[str]:
        if fd_dir.parent.name == str(pid):
            raise PermissionError(13, "Permission denied", str(fd_dir))
        return real_targets(fd_dir)

    def uids(pid_dir: pathlib.Path) -> set[int] | None:
        if uid is not None and pid_dir.name == str(pid):
            return {uid}
        return real_uids(pid_dir)

    monkeypatch.setattr(ext_locks, "_fd_targets", targets)
    monkeypatch.setattr(ext_locks, "_uids", uids)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_lock_its_owners_unreadable_process_may_hold_is_kept(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sleeper: int,
) -> None:
    """This used to be removed: an unreadable /proc/<pid>/fd counted as holding nothing."""
    lock = _lock(tmp_path, "cpu_adam")
    lock.touch()
    _hide(monkeypatch, sleeper)
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        assert ext_locks.clear_stale_locks(tmp_path) == []
        assert ext_locks.clear_stale_locks(tmp_path) == []
    assert lock.exists()
    (message,) = _warnings(caplog)  # said once, however often the runner looks
    assert "\n" not in message and "unreadable" in message and f"rm {lock}" in message


def test_unreadable_processes_of_other_users_prove_nothing_either_way(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, sleeper: int
) -> None:
    # Only the lock's creator holds it, and the creator owns the file.
    lock = _lock(tmp_path, "cpu_adam")
    lock.touch()
    _hide(monkeypatch, sleeper, uid=lock.stat().st_uid + 1)
    assert ext_locks.clear_stale_locks(tmp_path) == [lock]


def test_a_lock_older_than_any_build_is_removed_anyway(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, sleeper: int
) -> None:
    lock = _lock(tmp_path, "cpu_adam")
    lock.touch()
    old = time.time() - ext_locks.STALE_AGE_S - 60
    os.utime(lock, (old, old))
    _hide(monkeypatch, sleeper)
    assert ext_locks.clear_stale_locks(tmp_path) == [lock]


@pytest.mark.parametrize(
    ("mount", "initial_namespace", "kept_because"),
    [
        (("/home", "nfs4"), True, "nfs4 filesystem (/home)"),
        (("/home", "fuse.sshfs"), True, "fuse.sshfs filesystem"),
        (("/cache", "ext4"), False, "only its own PID namespace"),
        (("/", "overlay"), False, None),  # a container's own root: no one else sees it
        (("/", "ext4"), True, None),
    ],
)
def test_where_other_holders_could_hide(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mount: tuple[str, str],
    initial_namespace: bool,
    kept_because: str | None,
) -> None:
    lock = _lock(tmp_path, "fused_adam")
    lock.touch()
    monkeypatch.setattr(ext_locks, "_mount_of", lambda path: mount)
    monkeypatch.setattr(ext_locks, "_in_initial_pid_namespace", lambda: initial_namespace)
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        removed = ext_locks.clear_stale_locks(tmp_path)
    if kept_because is None:
        assert removed == [lock]
    else:
        assert removed == [] and lock.exists()
        assert any(kept_because in m for m in _warnings(caplog)), _warnings(caplog)


def test_mount_of_finds_the_innermost_mount() -> None:
    point, fstype = ext_locks._mount_of(pathlib.Path("/proc/self"))
    assert (point, fstype) == ("/proc", "proc")
    assert ext_locks._mount_of(pathlib.Path("/"))[0] == "/"
