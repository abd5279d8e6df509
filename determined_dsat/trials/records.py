"""Typed records of trials: what was asked for (spec) and how it ended (result).

Trials refer to each other by id (``parent_id``, ``lineage_id``), never by object,
so records are plain values that round-trip through JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.space.batch import SearchBounds
from determined_dsat.space.window import ProfileWindow

OUTCOME_KEY = "dsat_outcome"
"""The metric a trial reports its own outcome under (e.g. ``"oom"`` from
``dsat_reporting_context``), where the cluster's events cannot say it."""


class Outcome(enum.Enum):
    """How a trial ended. Methods branch on this, never on exit codes or log text."""

    OK = "ok"
    OOM = "oom"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    CANCELLED = "cancelled"

    @property
    def succeeded(self) -> bool:
        return self is Outcome.OK

    @property
    def too_big(self) -> bool:
        """Whether the outcome says "this micro-batch does not fit".

        Crashes and timeouts count too: on real clusters most of them at large
        micro-batches are memory trouble that surfaced as something else (NCCL
        timeouts, killed ranks), and treating them as a ceiling is what steers a
        bisection away from them.
        """
        return self in (Outcome.OOM, Outcome.ERROR, Outcome.TIMEOUT)


class TrialKind(enum.Enum):
    """Why a trial exists: the model profile, the user's own ds_config as a baseline,
    a search proposal, or a re-measurement of a top search trial (``parent_id``)."""

    PROFILE = "profile"
    BASELINE = "baseline"
    SEARCH = "search"
    CONFIRM = "confirm"


@attrs.frozen
class TrialSpec:
    """One trial as the search asked for it.

    ``zero`` is the complete ``zero_optimization`` overwrite, ``stage`` included.
    ``mbs`` is ``train_micro_batch_size_per_gpu`` and ``gas`` is
    ``gradient_accumulation_steps``. ``window``: the steps the trial measures (None: the
    space's fixed window).
    """

    request_id: str
    kind: TrialKind
    mbs: int
    gas: int
    zero: Mapping[str, Any] = attrs.field(factory=dict)
    lineage_id: str | None = None
    parent_id: str | None = None
    bounds: SearchBounds | None = None
    rung: int = 0
    seq: int = 0
    window: ProfileWindow | None = None

    @property
    def stage(self) -> int:
        return int(self.zero.get("stage", 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "kind": self.kind.value,
            "mbs": self.mbs,
            "gas": self.gas,
            "zero": dict(self.zero),
            "lineage_id": self.lineage_id,
            "parent_id": self.parent_id,
            "bounds": None if self.bounds is None else self.bounds.to_json(),
            "rung": self.rung,
            "seq": self.seq,
            "window": None if self.window is None else self.window.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialSpec:
        bounds = d.get("bounds")
        return cls(
            request_id=str(d["request_id"]),
            kind=TrialKind(d["kind"]),
            mbs=int(d["mbs"]),
            gas=int(d["gas"]),
            zero=dict(d.get("zero") or {}),
            lineage_id=d.get("lineage_id"),
            parent_id=d.get("parent_id"),
            bounds=None if bounds is None else SearchBounds.from_json(bounds),
            rung=int(d.get("rung", 0)),
            seq=int(d.get("seq", 0)),
            window=None if d.get("window") is None else ProfileWindow.from_json(d["window"]),
        )


@attrs.frozen
class TrialResult:
    """How a trial ended. ``metrics`` are as reported; ``duration_s`` is wall seconds."""

    outcome: Outcome
    metrics: Mapping[str, Any] = attrs.field(factory=dict)
    duration_s: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "metrics": dict(self.metrics),
            "duration_s": self.duration_s,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialResult:
        duration = d.get("duration_s")
        return cls(
            outcome=Outcome(d["outcome"]),
            metrics=dict(d.get("metrics") or {}),
            duration_s=None if duration is None else float(duration),
            detail=str(d.get("detail", "")),
        )


@attrs.frozen
class TrialRecord:
    """A spec with its result (None while the trial runs) and its completion order."""

    spec: TrialSpec
    result: TrialResult | None = None
    finished_seq: int | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def succeeded(self) -> bool:
        return self.result is not None and self.result.outcome.succeeded

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "result": None if self.result is None else self.result.to_json(),
            "finished_seq": self.finished_seq,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialRecord:
        result = d.get("result")
        finished = d.get("finished_seq")
        return cls(
            spec=TrialSpec.from_json(d["spec"]),
            result=None if result is None else TrialResult.from_json(result),
            finished_seq=None if finished is None else int(finished),
        )
