"""Records of the end-to-end benchmark against DeepSpeed's autotuner (``native_e2e.py``).

A *case* is one model under one micro-batch-cap configuration; per case each tuner's run
is a :class:`TunerRun` (wall time, trials, its pick and its own metric for it) and the
re-measurement of both picks is a sequence of :class:`Measurement` in the order they ran.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

NATIVE, OURS = "native", "ours"
TOOLS = (NATIVE, OURS)
SAME_CAP, DEFAULTS = "same-cap", "defaults"
CONFIGS = (SAME_CAP, DEFAULTS)
NATIVE_DEFAULT_CAP = 1024
"""DeepSpeed 0.19.8's ``max_train_micro_batch_size_per_gpu`` default."""


@attrs.frozen
class ModelCase:
    """A benchmark model: ``kind`` and sizes for ``e2e_models/train.py --model/--dims``."""

    name: str
    kind: str
    dims: Mapping[str, int]
    description: str


@attrs.frozen
class Pick:
    """A tuner's recommended configuration: ZeRO stage, micro-batch, gradient accumulation
    and the other ``zero_optimization`` keys (``knobs``)."""

    stage: int
    mbs: int
    gas: int
    knobs: Mapping[str, Any]

    @classmethod
    def from_ds_config(cls, ds_config: Mapping[str, Any]) -> Pick:
        """The pick a complete ds_config describes (missing batch keys count as 1)."""
        zero = dict(ds_config.get("zero_optimization") or {})
        stage = int(zero.pop("stage", 0))
        return cls(
            stage=stage,
            mbs=int(ds_config.get("train_micro_batch_size_per_gpu", 1)),
            gas=int(ds_config.get("gradient_accumulation_steps", 1)),
            knobs=zero,
        )

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "mbs": self.mbs, "gas": self.gas, "knobs": dict(self.knobs)}

    def describe(self) -> str:
        """``"ZeRO 2, mbs 16 x gas 1, overlap_comm=True, ..."`` for the report."""
        knobs = ", ".join(f"{k}={self.knobs[k]}" for k in sorted(self.knobs))
        head = f"ZeRO {self.stage}, mbs {self.mbs} x gas {self.gas}"
        return f"{head}, {knobs}" if knobs else head


@attrs.frozen
class TunerRun:
    """One tuner's run on one case.

    ``wall_s`` is seconds from starting its process to its end; ``trials`` counts every
    experiment/trial it ran (its profiling run included), ``outcomes`` splits them by
    outcome; ``metric`` is the tuner's own number for its pick (samples/s); ``ds_config``
    is its pick's complete ds_config (no autotuning section), None when it picked nothing.
    """

    tool: str
    command: tuple[str, ...]
    wall_s: float
    exit_code: int | None
    timed_out: bool
    trials: int
    outcomes: Mapping[str, int]
    pick: Pick | None
    metric: float | None
    ds_config: Mapping[str, Any] | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "command": list(self.command),
            "wall_s": self.wall_s,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "trials": self.trials,
            "outcomes": dict(self.outcomes),
            "pick": None if self.pick is None else self.pick.to_json(),
            "metric": self.metric,
            "ds_config": None if self.ds_config is None else dict(self.ds_config),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TunerRun:
        pick = data.get("pick")
        return cls(
            tool=str(data["tool"]),
            command=tuple(data["command"]),
            wall_s=float(data["wall_s"]),
            exit_code=data.get("exit_code"),
            timed_out=bool(data.get("timed_out", False)),
            trials=int(data["trials"]),
            outcomes=dict(data.get("outcomes") or {}),
            pick=None if pick is None else Pick(**pick),
            metric=data.get("metric"),
            ds_config=data.get("ds_config"),
            notes=tuple(data.get("notes") or ()),
        )


@attrs.frozen
class Measurement:
    """One timed run of a pick: ``order`` is its place in the alternating schedule (0-based);
    ``samples_per_s`` is None when the run failed (``error`` says why)."""

    tool: str
    order: int
    samples_per_s: float | None
    wall_s: float
    step_seconds: tuple[float, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(**{**data, "step_seconds": tuple(data.get("step_seconds") or ())})


def read_json_or_none(path: pathlib.Path) -> Any:
    """The JSON document in ``path``; None when it is missing or not JSON (a tool stopped
    while writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def median_throughput(measurements: Sequence[Measurement], tool: str) -> float | None:
    """The median samples/s of ``tool``'s successful measurements; None if none succeeded."""
    values = [m.samples_per_s for m in measurements if m.tool == tool and m.samples_per_s]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@attrs.frozen
class CaseResult:
    """One model under one cap configuration: both tuners' runs and the re-measurement."""

    model: ModelCase
    config: str
    native_cap: int
    ours_cap: int | None
    runs: Mapping[str, TunerRun]
    measurements: tuple[Measurement, ...]
    notes: tuple[str, ...] = ()

    def median(self, tool: str) -> float | None:
        return median_throughput(self.measurements, tool)

    @property
    def throughput_ratio(self) -> float | None:
        """Ours / native, re-measured medians (above 1: our pick trains faster)."""
        return ratio(self.median(OURS), self.median(NATIVE))

    @property
    def wall_ratio(self) -> float | None:
        """Ours / native tuning wall time (below 1: we finished sooner)."""
        return ratio(self.runs[OURS].wall_s, self.runs[NATIVE].wall_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": attrs.asdict(self.model),
            "config": self.config,
            "native_cap": self.native_cap,
            "ours_cap": self.ours_cap,
            "runs": {tool: run.to_json() for tool, run in self.runs.items()},
            "measurements": [m.to_json() for m in self.measurements],
            "median_samples_per_s": {tool: self.median(tool) for tool in self.runs},
            "throughput_ratio_ours_over_native": self.throughput_ratio,
            "wall_ratio_ours_over_native": self.wall_ratio,
            "notes": list(self.notes),
        }
