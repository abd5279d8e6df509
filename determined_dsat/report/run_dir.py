"""The run directory: one layout for every backend, guarded by an exclusive lock.

Layout under ``path``::

    .lock                 flock held by the runner; holds its pid
    trials.jsonl          one line per finished trial, in completion order
    state.json            the search state, for resuming
    settings.json         the settings the search was started with
    best_ds_config.json   the best ds_config found so far
    best_ds_metrics.json  the metrics of that trial
    dsat.log              the runner's log
    trials/<request_id>/  per-trial working folders, created on demand
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from determined_dsat.errors import ConfigError, RunDirLockedError
from determined_dsat.jsonio import append_json_line, write_json_atomic, write_json_lines_atomic
from determined_dsat.trials.records import TrialKind, TrialRecord

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class RunDirectory:
    """A run directory; ``acquire`` (or ``with``) before writing to it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.trials_path = self.path / "trials.jsonl"
        self.state_path = self.path / "state.json"
        self.best_config_path = self.path / "best_ds_config.json"
        self.best_metrics_path = self.path / "best_ds_metrics.json"
        self.settings_path = self.path / "settings.json"
        self.log_path = self.path / "dsat.log"
        self.trials_dir = self.path / "trials"
        self.lock_path = self.path / ".lock"
        self.journal_path = self.path / "state-journal.jsonl"
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._depth = 0

    # -- locking -----------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock_fd is not None

    def acquire(self) -> None:
        """Create the directory and take its lock, or raise ``RunDirLockedError``.

        The lock is an exclusive ``flock`` on ``.lock``, held until ``release`` (or until
        this process exits). Calling ``acquire`` again on the same object is a no-op.
        """
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the pid of a current holder must survive a refused attempt.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise RunDirLockedError(
                f"{self.path} is in use by another dsat runner ({who}); "
                "wait for it to finish or pick another --run-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._lock_pid = os.getpid()

    def release(self) -> None:
        """Give the lock back (no-op when not held). The lock file itself stays."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            # A forked child shares the lock; only the process that took it clears the pid.
            if os.getpid() == self._lock_pid:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            # Closing the last descriptor of the open file description drops the flock.
            os.close(fd)

    def __enter__(self) -> RunDirectory:
        # Nested ``with`` blocks share one lock; only the outermost exit releases it.
        self.acquire()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    # -- per-trial folders ----------------------------------------------------------

    def trial_dir(self, request_id: str) -> pathlib.Path:
        """The working folder of one trial, created on demand."""
        name = _UNSAFE_NAME.sub("_", request_id).lstrip(".") or "_"
        d = self.trials_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- trials.jsonl ---------------------------------------------------------------

    def append_trial(
        self,
        record: TrialRecord,
        overwrites: Mapping[str, Any],
        finished_at: float | None = None,
    ) -> None:
        """Append one finished trial to ``trials.jsonl`` (flushed to disk on return).

        ``overwrites`` are the ds_config overwrites the trial ran with; ``finished_at`` is
        a Unix time (now by default). A confirmation trial also names the search trial it
        re-measures (``confirms``). A torn last line left by a crash is cut off first so it
        cannot swallow the new one.
        """
        line = trial_line(record, overwrites, finished_at)
        self._drop_torn_tail()
        append_json_line(self.trials_path, line)

    def read_trials(self) -> list[dict[str, Any]]:
        """All finished trials in completion order; a torn last line is skipped.

        Raises ``ConfigError`` naming the line when an earlier line is corrupt.
        """
        return _read_json_lines(self.trials_path)

    def append_journal(self, entries: list[dict[str, Any]]) -> None:
        """Append finished trial records to the state journal (see ``write_state``)."""
        for entry in entries:
            append_json_line(self.journal_path, entry)

    def read_journal(self) -> list[dict[str, Any]]:
        return _read_json_lines(self.journal_path)

    def rewrite_journal(self, entries: list[dict[str, Any]]) -> None:
        """Replace the journal, e.g. to drop entries newer than the saved state."""
        write_json_lines_atomic(self.journal_path, entries)

    def _drop_torn_tail(self) -> None:
        try:
            with self.trials_path.open("rb+") as f:
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

    # -- JSON documents ---------------------------------------------------------------

    def write_best(self, ds_config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Write ``best_ds_config.json`` and ``best_ds_metrics.json`` atomically."""
        write_json_atomic(self.best_config_path, dict(ds_config))
        write_json_atomic(self.best_metrics_path, dict(metrics))

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Write ``state.json`` atomically and compactly.

        Finished trial records live in ``state-journal.jsonl`` (append-only), so this
        snapshot stays small however many trials have run.
        """
        write_json_atomic(self.state_path, dict(state), indent=None)

    def read_state(self) -> dict[str, Any] | None:
        """The saved search state, or None when there is none."""
        return _read_json_object(self.state_path)

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        write_json_atomic(self.settings_path, dict(settings))

    def read_settings(self) -> dict[str, Any] | None:
        """The saved settings, or None when there are none."""
        return _read_json_object(self.settings_path)


def trial_line(
    record: TrialRecord, overwrites: Mapping[str, Any], finished_at: float | None = None
) -> dict[str, Any]:
    """The ``trials.jsonl`` line of a finished trial (``finished_at``: Unix time, now by
    default)."""
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


def _read_json_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    """JSON objects of a JSON-lines file; a torn last line is skipped, others must parse."""
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


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _read_json_object(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return obj
