"""JSON-lines files of a run directory (``trials.jsonl``, the state journal), and the line
of one finished trial."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

from determined_dsat.errors import ConfigError
from determined_dsat.trials.records import TrialKind, TrialRecord


def trial_line(
    record: TrialRecord, overwrites: Mapping[str, Any], finished_at: float | None = None
) -> dict[str, Any]:
    """The ``trials.jsonl`` line of a finished trial (``finished_at``: Unix time, now by
    default). A confirmation trial also names the search trial it re-measures
    (``confirms``)."""
    if record.result is None or record.finished_seq is None:
        raise ValueError(f"trial {record.spec.request_id} has not finished")
    spec, result = record.spec, record.result
    line = {
        "trial_id": record.finished_seq,
        "request_id": spec.request_id,
        "kind": spec.kind.value,
        "status": result.outcome.value,
        "stage": spec.stage,
        "mbs": spec.mbs,
        "gas": spec.gas,
        "overwrites": dict(overwrites),
        "metrics": dict(result.metrics),
        "duration_s": result.duration_s,
        "lineage_id": spec.lineage_id,
        "parent_id": spec.parent_id,
        "detail": result.detail,
        "finished_at": time.time() if finished_at is None else finished_at,
    }
    if spec.kind is TrialKind.CONFIRM:
        line["confirms"] = spec.parent_id
    return line


def append_line(path: pathlib.Path, data: Any) -> None:
    """Append one JSON document as a line, flushed to disk before returning. A torn last
    line left by a crash is cut off first, so it cannot swallow the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with path.open("a") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn last line is skipped.

    Raises ``ConfigError`` naming the line when an earlier line is corrupt."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    torn_ok = len(lines) - 1 if not text.endswith("\n") else -1
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            out.append(obj)
        elif i != torn_ok:
            raise ConfigError(f"{path}:{i + 1}: not a JSON object")
    return out


def _drop_torn_tail(path: pathlib.Path) -> None:
    try:
        with path.open("rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        return
