"""Atomic JSON files: every write goes to a temp file, then ``os.replace``."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import stat
import tempfile
from typing import Any


def write_text_atomic(path: pathlib.Path, text: str, *, keep_mode: bool = False) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half.

    The temp file is in the same directory, unique to this call, and flushed to disk
    before the rename. ``keep_mode``: the new file keeps the old one's permission bits. A
    symlink at ``path`` is replaced by a regular file; its target is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if keep_mode:
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(
    path: pathlib.Path, data: Any, *, indent: int | None = 2, keep_mode: bool = False
) -> None:
    """Write ``data`` as one JSON document, atomically (see :func:`write_text_atomic`)."""
    # json.dumps, not json.dump: dump streams through the pure-Python encoder.
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n", keep_mode=keep_mode)


def write_json_lines_atomic(path: pathlib.Path, rows: list[Any]) -> None:
    """Replace a JSON-lines file with ``rows``, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
