"""The run directory (layout in ``layout.py``), guarded by one exclusive lock.

The runner enters it once (``with RunDirectory(path):``) for the whole search and the
full experiment; a second runner on the same directory is refused with the holder's pid.
The lock is a ``filelock`` on ``.lock`` (an ``flock``: it dies with its process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import attrs
import filelock

from determined_dsat.errors import ConfigError, RunDirLockedError
from determined_dsat.jsonio import write_json_atomic, write_json_lines_atomic
from determined_dsat.store import layout
from determined_dsat.store.lines import append_line, read_lines, trial_line
from determined_dsat.trials.records import TrialRecord

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
CONFIG_HASH_KEY = "dsat_config_sha256"
"""In ``best_ds_metrics.json``: the hash of the ``best_ds_config.json`` it belongs to."""


@attrs.frozen
class BestPair:
    """``best_ds_config.json`` and ``best_ds_metrics.json``, read together."""

    ds_config: dict[str, Any]
    metrics: dict[str, Any]


def config_hash(ds_config: Mapping[str, Any]) -> str:
    """A stable hash of a ds_config (canonical JSON, SHA-256)."""
    return hashlib.sha256(json.dumps(ds_config, sort_keys=True).encode()).hexdigest()


class RunDirectory:
    """A run directory; enter it (``with``) once before writing to it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.trials_path = self.path / layout.TRIALS_FILE
        self.state_path = self.path / layout.STATE_FILE
        self.journal_path = self.path / layout.JOURNAL_FILE
        self.settings_path = self.path / layout.SETTINGS_FILE
        self.best_config_path = self.path / layout.BEST_CONFIG_FILE
        self.best_metrics_path = self.path / layout.BEST_METRICS_FILE
        self.log_path = self.path / layout.LOG_FILE
        self.warmup_log_path = self.path / layout.WARMUP_LOG_FILE
        self.trials_dir = self.path / layout.TRIALS_DIR
        self.report_dir = self.path / layout.REPORT_DIR
        self.lock_path = self.path / layout.LOCK_FILE
        self._lock: filelock.BaseFileLock | None = None

    # -- locking -----------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None

    def acquire(self) -> None:
        """Create the directory and take its lock, or raise ``RunDirLockedError`` naming
        the holder's pid. A no-op when this object holds the lock already."""
        if self._lock is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.lock_path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            holder = _read_pid(self.lock_path)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise RunDirLockedError(
                f"{self.path} is in use by another dsat runner ({who}); "
                "wait for it to finish or pick another --run-dir"
            ) from None
        self._lock = lock
        # The holder's pid, for the message above; never truncated by a refused attempt.
        _write_pid(self.lock_path, os.getpid())

    def release(self) -> None:
        """Give the lock back (no-op when not held). The lock file itself stays."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        with contextlib.suppress(OSError):
            _write_pid(self.lock_path, None)
        lock.release(force=True)

    def __enter__(self) -> RunDirectory:
        if self._lock is not None:
            raise RuntimeError(f"{self.path} is entered already; enter a run directory once")
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def in_use(self) -> bool:
        """Whether some runner (this process included) holds the lock right now."""
        if self._lock is not None:
            return True
        if not self.lock_path.exists():
            return False
        probe = filelock.FileLock(self.lock_path, timeout=0, thread_local=False)
        try:
            probe.acquire()
        except filelock.Timeout:
            return True
        probe.release(force=True)
        return False

    # -- per-trial folders ----------------------------------------------------------

    def trial_dir(self, request_id: str) -> pathlib.Path:
        """The working folder of one trial, created on demand."""
        name = _UNSAFE_NAME.sub("_", request_id).lstrip(".") or "_"
        d = self.trials_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- trials.jsonl and the journal -------------------------------------------------

    def append_trial(
        self,
        record: TrialRecord,
        overwrites: Mapping[str, Any],
        finished_at: float | None = None,
    ) -> None:
        """Append one finished trial to ``trials.jsonl`` (on disk on return); see
        :func:`~determined_dsat.store.lines.trial_line`."""
        append_line(self.trials_path, trial_line(record, overwrites, finished_at))

    def read_trials(self) -> list[dict[str, Any]]:
        """All finished trials in completion order; a torn last line is skipped."""
        return read_lines(self.trials_path)

    def append_journal(self, entries: list[dict[str, Any]]) -> None:
        """Append finished trial records to the state journal (see ``write_state``)."""
        for entry in entries:
            append_line(self.journal_path, entry)

    def read_journal(self) -> list[dict[str, Any]]:
        return read_lines(self.journal_path)

    def rewrite_journal(self, entries: list[dict[str, Any]]) -> None:
        """Replace the journal, e.g. to drop entries newer than the saved state."""
        write_json_lines_atomic(self.journal_path, entries)

    # -- JSON documents ---------------------------------------------------------------

    def write_best(self, ds_config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Write the best pair: the config, then its metrics with the config's hash, so a
        crash between the two leaves a pair :meth:`read_best` sees is inconsistent."""
        write_best_pair(self.path, ds_config, metrics)

    def read_best(self) -> BestPair | None:
        """The best pair, or None when there is none. Raises ``ConfigError`` when the two
        files disagree (a crash between the writes) or one is missing."""
        return read_best_pair(self.path)

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Write ``state.json`` atomically and compactly.

        Finished trial records live in ``state-journal.jsonl`` (append-only), so this
        snapshot stays small however many trials have run.
        """
        write_json_atomic(self.state_path, dict(state), indent=None)

    def read_state(self) -> dict[str, Any] | None:
        """The saved search state, or None when there is none."""
        return read_json_object(self.state_path)

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        write_json_atomic(self.settings_path, dict(settings))

    def read_settings(self) -> dict[str, Any] | None:
        """The saved settings, or None when there are none."""
        return read_json_object(self.settings_path)


def write_best_pair(
    directory: pathlib.Path, ds_config: Mapping[str, Any], metrics: Mapping[str, Any]
) -> None:
    """Write ``best_ds_config.json`` then ``best_ds_metrics.json`` (with the config's
    hash) into ``directory``; used by run directories and cluster checkpoints alike."""
    config = dict(ds_config)
    write_json_atomic(directory / layout.BEST_CONFIG_FILE, config)
    write_json_atomic(
        directory / layout.BEST_METRICS_FILE, {**metrics, CONFIG_HASH_KEY: config_hash(config)}
    )


def read_best_pair(directory: pathlib.Path) -> BestPair | None:
    """The best pair in ``directory`` (see :meth:`RunDirectory.read_best`)."""
    config = read_json_object(directory / layout.BEST_CONFIG_FILE)
    metrics = read_json_object(directory / layout.BEST_METRICS_FILE)
    if config is None and metrics is None:
        return None
    if config is None or metrics is None:
        missing = layout.BEST_CONFIG_FILE if config is None else layout.BEST_METRICS_FILE
        raise ConfigError(f"{directory}: {missing} is missing; the best pair is incomplete")
    expected = metrics.get(CONFIG_HASH_KEY)
    if expected is not None and expected != config_hash(config):
        raise ConfigError(
            f"{directory}: {layout.BEST_METRICS_FILE} belongs to another "
            f"{layout.BEST_CONFIG_FILE} (a crash between their writes)"
        )
    return BestPair(config, {k: v for k, v in metrics.items() if k != CONFIG_HASH_KEY})


def read_json_object(path: pathlib.Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it does not exist; ``ConfigError`` naming the
    file when it is not a JSON object."""
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


def _write_pid(path: pathlib.Path, pid: int | None) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        if pid is not None:
            os.pwrite(fd, f"{pid}\n".encode(), 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        raw = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None
