"""Stale locks in the torch extensions cache, and their removal.

torch's JIT extension loader (``torch.utils.cpp_extension``, torch 2.13) takes
``<cache>/<op>/lock`` (a ``FileBaton``) every time a process
loads a DeepSpeed op, keeps it open while it checks or builds the op, and deletes it
afterwards. A process SIGKILLed in that window (Ctrl-C, ``--trial-timeout``, a runner
killed with ``kill -9``) leaves the file behind, and every later op load on the machine
then waits for it forever: the next search hangs before its first trial. A live holder
keeps its lock file open, so a lock no process has open is stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Iterable

logger = logging.getLogger("determined_dsat")

# A holder closes the file just before deleting it; a lock seen with the same inode
# and unheld across this pause is not in that window.
_SETTLE_S = 0.5


def extensions_root() -> pathlib.Path:
    """Where torch builds JIT extensions: ``$TORCH_EXTENSIONS_DIR`` or its user cache dir."""
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return pathlib.Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "torch_extensions"


def extension_locks(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Lock files present now under ``root``: ``<root>/<build tag>/<op>/lock`` in torch's
    default cache, ``<root>/<op>/lock`` under ``$TORCH_EXTENSIONS_DIR`` (torch 2.13 adds
    the build tag only to its default root)."""
    base = extensions_root() if root is None else root
    if not base.is_dir():
        return []
    return sorted({*base.glob("*/lock"), *base.glob("*/*/lock")})


def open_files(pids: Iterable[int] | None = None) -> set[str]:
    """Real paths of files the given processes hold open (every process we may inspect
    when ``pids`` is None), from ``/proc/<pid>/fd``."""
    fd_dirs = (
        [pathlib.Path(f"/proc/{pid}/fd") for pid in pids]
        if pids is not None
        else list(pathlib.Path("/proc").glob("[0-9]*/fd"))
    )
    held: set[str] = set()
    for fd_dir in fd_dirs:
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                held.add(os.readlink(entry))
    return held


def clear_stale_locks(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Remove the extension locks no process holds; return the removed paths."""
    candidates = {}
    for lock in extension_locks(root):
        with contextlib.suppress(OSError):
            candidates[lock] = lock.stat().st_ino
    if not candidates:
        return []
    time.sleep(_SETTLE_S)
    held = open_files()
    removed = []
    for lock, inode in candidates.items():
        if str(lock.resolve()) in held or str(lock) in held:
            continue
        with contextlib.suppress(OSError):
            if lock.stat().st_ino == inode:
                lock.unlink()
                removed.append(lock)
                logger.warning(
                    "removed a stale torch extension lock %s (left by a process stopped while "
                    "it loaded a DeepSpeed op; it would block every later op load)",
                    lock,
                )
    return removed
