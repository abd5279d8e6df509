"""Decide how a local trial ended from what it left behind.

The metrics file decides success, not the exit code: DeepSpeed 0.19.8 on CPU was
seen crashing on exit *after* writing its metrics (ZeRO-3 with offload, 2 ranks).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from determined_dsat.integration.local_context import METRICS_NAME
from determined_dsat.methods.driver import last_error_line
from determined_dsat.space.ds_config import METRIC_PATH, MODEL_INFO_PATH
from determined_dsat.trials.records import OUTCOME_KEY, Outcome, TrialResult

_OOM_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|out of memory|DefaultCPUAllocator: can't allocate"
    r"|Cannot allocate memory|MemoryError|std::bad_alloc|HIP out of memory",
    re.IGNORECASE,
)
# torch's TCPStore (c10d, torch 2.13) and zmq (Determined's DistributedContext) when a
# port is taken.
_PORT_CLASH_PATTERNS = re.compile(r"EADDRINUSE|Address already in use", re.IGNORECASE)
_SIGKILL = -9
TAIL_LINES = 25
# Separates what happened from the log tail in a failed trial's detail; written by
# ``with_log_tail`` and split again by ``short_detail``.
LOG_TAIL_MARKER = "; log tail:"


@attrs.frozen
class TrialEnding:
    """What a finished local trial left: exit codes per rank, logs, its directory."""

    trial_dir: pathlib.Path
    exit_codes: Sequence[int]
    log_paths: Sequence[pathlib.Path]
    duration_s: float
    timed_out: bool = False
    killed_by_us: bool = False
    autotuning: bool = True


def reported_metrics(trial_dir: pathlib.Path) -> dict[str, Any] | None:
    """The last validation metrics the trial reported, or DeepSpeed's own files."""
    last: dict[str, Any] | None = None
    path = trial_dir / METRICS_NAME
    if path.exists():
        for raw in path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if line.get("group") == "validation" and isinstance(line.get("metrics"), dict):
                last = dict(line["metrics"])
    if last is not None:
        return last
    for name in (METRIC_PATH, MODEL_INFO_PATH):
        file = trial_dir / name
        if file.exists():
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return dict(data)
    return None


def log_tail(paths: Sequence[pathlib.Path], lines: int = TAIL_LINES) -> str:
    """The last lines of the first log that looks like it holds the failure."""
    tails = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        if "Traceback" in text or "Error" in tail:
            return tail
        tails.append(tail)
    return tails[0] if tails else ""


def _logs_match(paths: Sequence[pathlib.Path], pattern: re.Pattern[str]) -> bool:
    """Whether the end (last 20000 characters) of any log matches ``pattern``."""
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if pattern.search(text[-20000:]):
            return True
    return False


def port_clash(ending: TrialEnding) -> bool:
    """Whether the trial failed because a port it was given was taken when a rank bound
    it: it failed, reported nothing, and a rank's log says the address is in use."""
    if ending.timed_out or all(code == 0 for code in ending.exit_codes):
        return False
    if reported_metrics(ending.trial_dir) is not None:
        return False
    return _logs_match(ending.log_paths, _PORT_CLASH_PATTERNS)


def classify(ending: TrialEnding, extra: Mapping[str, Any] | None = None) -> TrialResult:
    """The trial's result: metrics first, then timeouts, OOM evidence, then errors."""
    metrics = reported_metrics(ending.trial_dir)
    duration = ending.duration_s
    if metrics is not None and metrics.get(OUTCOME_KEY) == Outcome.OOM.value:
        return TrialResult(Outcome.OOM, {}, duration, str(metrics.get("error", "out of memory")))
    clean_exit = all(code == 0 for code in ending.exit_codes)
    if metrics is not None and (ending.autotuning or clean_exit):
        return TrialResult(Outcome.OK, {**metrics, **(extra or {})}, duration)
    tail = log_tail(ending.log_paths)
    if ending.timed_out:
        return TrialResult(Outcome.TIMEOUT, {}, duration, with_log_tail("timed out", tail))
    if clean_exit:
        if ending.autotuning:
            detail = "exited without reporting metrics (is the training loop inside "
            detail += "dsat_reporting_context?)"
            return TrialResult(Outcome.ERROR, {}, duration, detail)
        return TrialResult(Outcome.OK, {}, duration)
    killed = any(code == _SIGKILL for code in ending.exit_codes) and not ending.killed_by_us
    if _logs_match(ending.log_paths, _OOM_PATTERNS) or killed:
        return TrialResult(Outcome.OOM, {}, duration, with_log_tail("out of memory", tail))
    codes = ",".join(str(c) for c in ending.exit_codes)
    return TrialResult(Outcome.ERROR, {}, duration, with_log_tail(f"exit codes {codes}", tail))


def with_log_tail(what: str, tail: str) -> str:
    """A failure's detail: what happened, then the log tail that shows it."""
    return f"{what}{LOG_TAIL_MARKER}\n{tail}"


def short_detail(detail: str) -> str:
    """A failure's detail in one line for dsat.log: what happened and the error it names
    (the log tail stays in the trial's own log and in trials.jsonl)."""
    head, marker, tail = detail.partition(LOG_TAIL_MARKER)
    if not marker:
        return detail if "\n" not in detail else last_error_line(detail)
    error = last_error_line(tail)
    return f"{head}: {error}" if error else head
