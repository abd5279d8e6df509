"""Atomic JSON files: every write goes to a temp file, then ``os.replace``."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: pathlib.Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as one JSON document, atomically."""
    # json.dumps, not json.dump: dump streams through the pure-Python encoder.
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def write_json_lines_atomic(path: pathlib.Path, rows: list[Any]) -> None:
    """Replace a JSON-lines file with ``rows``, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_json_line(path: pathlib.Path, data: Any) -> None:
    """Append one JSON document as a line and flush it to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(data, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
