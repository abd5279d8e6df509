"""Stale locks in the torch extensions cache, and their removal when provably stale.

torch's JIT extension loader (``torch.utils.cpp_extension``, torch 2.13) takes
``<cache>/<op>/lock`` (a ``FileBaton``: created with ``O_EXCL`` and kept open, no
``flock``) every time a process loads a DeepSpeed op, and deletes it afterwards. A
process SIGKILLed in that window leaves the file behind, and every later op load then
waits for it forever: the next search hangs before its first trial.

Only the lock's creator holds it, so a lock is stale when its creator is gone. Without
``flock`` that cannot be asked of the kernel; it is proven instead when

- no process holds it open, and every process that could have created it was inspected:
  each process of the lock file's owner (the creator's uid) had a readable
  ``/proc/<pid>/fd``; the runner sees every process of the machine (it is in the initial
  PID namespace) or the lock lies on this namespace's own root filesystem; and the
  filesystem is local (a network filesystem may be shared with other machines); or
- it is older than ``STALE_AGE_S`` with no visible holder (torch holds the baton only
  while it checks or builds one op, minutes at most).

A lock that cannot be proven stale stays, with one line in ``dsat.log`` saying why and
how to remove it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Iterable

import attrs

from determined_dsat.runners.ext_cache import extensions_root

__all__ = ["clear_stale_locks", "extension_locks", "extensions_root", "open_files"]

logger = logging.getLogger("determined_dsat")

# A holder closes the file just before deleting it; a lock seen with the same inode
# and unheld across this pause is not in that window.
_SETTLE_S = 0.5
STALE_AGE_S = 3 * 3600.0
_INITIAL_PID_NAMESPACE = "pid:[4026531836]"  # PROC_PID_INIT_INO (Linux)
_SHARED_FILESYSTEMS = (
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs",
    "beegfs", "9p", "virtiofs", "afs", "fuse",
)  # fmt: skip
_reported: set[tuple[str, int]] = set()


def extension_locks(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Lock files present now under ``root``: ``<root>/<op>/lock`` under
    ``$TORCH_EXTENSIONS_DIR`` (the runner's own cache is one), ``<root>/<build tag>/<op>/lock``
    in torch's default cache (torch 2.13 adds the build tag only to its default root)."""
    base = extensions_root() if root is None else root
    if not base.is_dir():
        return []
    return sorted({*base.glob("*/lock"), *base.glob("*/*/lock")})


@attrs.frozen
class ProcessScan:
    """Open files of the processes inspected, and the uids of those that could not be."""

    held: frozenset[str]
    hidden_uids: frozenset[int | None]  # None: a process whose uid could not be read


def _fd_targets(fd_dir: pathlib.Path) -> list[str]:
    """What a process's descriptors point at; raises PermissionError when unreadable."""
    targets = []
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(entry))
    return targets


def _uids(pid_dir: pathlib.Path) -> set[int] | None:
    try:
        for row in (pid_dir / "status").read_text().splitlines():
            if row.startswith("Uid:"):
                return {int(v) for v in row.split()[1:]}
    except (OSError, ValueError):
        pass
    return None


def scan_processes(pids: Iterable[int] | None = None) -> ProcessScan:
    """Inspect ``/proc/<pid>/fd`` of the given processes (every process when None)."""
    pid_dirs = (
        [pathlib.Path(f"/proc/{pid}") for pid in pids]
        if pids is not None
        else [p.parent for p in pathlib.Path("/proc").glob("[0-9]*/fd")]
    )
    held: set[str] = set()
    hidden: set[int | None] = set()
    for pid_dir in pid_dirs:
        try:
            held.update(_fd_targets(pid_dir / "fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        except OSError:
            uids = _uids(pid_dir)
            hidden.update(uids if uids is not None else {None})
    return ProcessScan(frozenset(held), frozenset(hidden))


def open_files(pids: Iterable[int] | None = None) -> set[str]:
    """Real paths of files the given processes hold open (every process we may inspect
    when ``pids`` is None), from ``/proc/<pid>/fd``."""
    return set(scan_processes(pids).held)


def _in_initial_pid_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/pid") == _INITIAL_PID_NAMESPACE
    except OSError:
        return False


def _mount_of(path: pathlib.Path) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding ``path``, from mountinfo."""
    real = os.path.realpath(path)
    best = ("/", "")
    try:
        rows = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    for row in rows:
        fields = row.split(" - ", 1)
        left = fields[0].split()
        if len(fields) < 2 or len(left) < 5:
            continue
        point = left[4].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[1].split()[0])
    return best


def unprovable_reason(lock: pathlib.Path, scan: ProcessScan) -> str | None:
    """Why no holder of ``lock`` may be hiding, or None when none can be."""
    owner = lock.stat().st_uid
    if None in scan.hidden_uids or owner in scan.hidden_uids:
        return f"the open files of some processes of uid {owner} (its owner) are unreadable"
    point, fstype = _mount_of(lock)
    if fstype.split(".")[0] in _SHARED_FILESYSTEMS:
        return f"it is on a {fstype} filesystem ({point}) that other machines may share"
    if not _in_initial_pid_namespace() and point != "/":
        return (
            f"this runner sees only its own PID namespace and {point} may be shared with "
            "processes outside it"
        )
    return None


def _report_once(lock: pathlib.Path, inode: int, reason: str) -> None:
    if (str(lock), inode) in _reported:
        return
    _reported.add((str(lock), inode))
    logger.warning(
        "left torch extension lock %s in place: no process this runner can see holds it, "
        "but %s; if no DeepSpeed op is being built on any machine using this cache, remove "
        "it (rm %s), or every op load will wait for it",
        lock,
        reason,
        lock,
    )


def clear_stale_locks(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Remove the extension locks that are provably stale (module docstring); return them."""
    candidates = {}
    for lock in extension_locks(root):
        with contextlib.suppress(OSError):
            candidates[lock] = lock.stat().st_ino
    if not candidates:
        return []
    time.sleep(_SETTLE_S)
    scan = scan_processes()
    removed = []
    for lock, inode in candidates.items():
        if str(lock.resolve()) in scan.held or str(lock) in scan.held:
            continue
        with contextlib.suppress(OSError):
            stat = lock.stat()
            if stat.st_ino != inode:
                continue  # released and taken again meanwhile
            reason = unprovable_reason(lock, scan)
            if reason is not None and time.time() - stat.st_mtime < STALE_AGE_S:
                _report_once(lock, inode, reason)
                continue
            lock.unlink()
            removed.append(lock)
            logger.warning(
                "removed a stale torch extension lock %s (left by a process stopped while "
                "it loaded a DeepSpeed op; it would block every later op load)",
                lock,
            )
    return removed
