"""The synthetic family: the old benchmark landscapes (``determined_dsat.testing.synthetic``)
behind the ``BenchmarkLandscape`` protocol, for continuity with earlier reports.

These landscapes are written with our own memory model (``space.memory``), so unlike the
tuning and held-out families they flatter our searches; they stay to compare with the
reports made before the families existed. ``Landscape.draw(seed)`` is unchanged; this
adapter adds what the protocol asks and the old landscapes lack:

* simulated trial durations: a start-up that grows with the model, then
  ``end_profile_step + 1`` steps at the measured latency (an OOM dies in its first step);
* a fresh noise draw for every re-measurement of a config (the old landscape seeds its
  noise from the config alone);
* the sweeps: ``activation_error`` and ``noise`` replace the drawn values.

``FAMILY.draw(count)`` returns the first ``count`` landscapes from ``first_seed`` on where
some config of our knob table fits (stages 1-3, no offload); a seed where nothing fits is
skipped, as the old benchmark did, and keys keep the seed (``synthetic-10`` may be absent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from benchmarks.families.api import BenchmarkLandscape, Family, KnobTables
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.knobs import ZERO_KNOBS
from determined_dsat.testing.synthetic import Landscape

NAME = "synthetic"
STAGES = (1, 2, 3)
STARTUP_BASE_S = 40.0  # processes, DeepSpeed's init, data loader
STARTUP_S_PER_BILLION = 15.0  # building and partitioning the model
DEFAULT_STEPS = 6  # end_profile_step 5, plus the step DeepSpeed's autotuner exits in
_MAX_SKIPPED = 1000


def _steps(ds_config: Mapping[str, Any]) -> int:
    section = ds_config.get("autotuning")
    if isinstance(section, Mapping) and section.get("end_profile_step") is not None:
        return int(section["end_profile_step"]) + 1
    return DEFAULT_STEPS


def _batch(ds_config: Mapping[str, Any]) -> tuple[int, int]:
    mbs = int(ds_config.get("train_micro_batch_size_per_gpu") or 1)
    return mbs, int(ds_config.get("gradient_accumulation_steps") or 1)


class SyntheticLandscape:
    """A ``testing.synthetic.Landscape`` as a ``BenchmarkLandscape``."""

    def __init__(self, inner: Landscape) -> None:
        self.inner = inner
        self._calls: dict[str, int] = {}

    @property
    def key(self) -> str:
        return f"{NAME}-{self.inner.seed:02d}"

    @property
    def slots(self) -> int:
        return self.inner.slots

    def describe(self) -> dict[str, Any]:
        """Model size, cluster and the drawn errors (JSON-able)."""
        inner = self.inner
        return {
            "key": self.key,
            "params": inner.num_params,
            "slots": inner.slots,
            "gpu_mem_gib": inner.gpu_mem // 1024**3,
            "activation_ratio": round(inner.activation_error, 3),
            "noise": inner.noise,
            "default_max_mbs": [inner.true_max_mbs(s) for s in STAGES],
        }

    def profile_metrics(self) -> dict[str, int]:
        return dict(self.inner.profile.to_json())

    def _zero(self, ds_config: Mapping[str, Any]) -> Mapping[str, Any]:
        zero = ds_config.get("zero_optimization")
        return zero if isinstance(zero, Mapping) else {}

    def true_throughput(self, ds_config: Mapping[str, Any]) -> float | None:
        """Noise-free samples/s (the old landscape ignores gradient accumulation)."""
        return self.inner.true_throughput(self._zero(ds_config), _batch(ds_config)[0])

    def startup_s(self) -> float:
        """Seconds from launch to the first step."""
        return STARTUP_BASE_S + STARTUP_S_PER_BILLION * self.inner.num_params / 1e9

    def expected_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Noise-free wall seconds of a trial (the start-up alone for the profile or an OOM)."""
        value = None if is_profiling_config(ds_config) else self.true_throughput(ds_config)
        if value is None:
            return self.startup_s()
        mbs, gas = _batch(ds_config)
        return self.startup_s() + _steps(ds_config) * mbs * gas * self.slots / value

    def oom_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """An OOM happens in the first step, right after the start-up."""
        return self.startup_s()

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        """The old landscape's noisy metrics plus ``duration_s``; ``MemoryError`` on OOM."""
        metrics = self.inner.measure(ds_config, trial_seed & 0xFFFFFFFF)
        steps = _steps(ds_config)
        return {**metrics, "duration_s": self.startup_s() + steps * metrics["latency"]}

    def optimum(self, tables: KnobTables, stages: Sequence[int]) -> float:
        return self.inner.optimum(stages, tables=tables)

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(ds_config):
            return {**self.profile_metrics(), "duration_s": self.startup_s()}
        text = json.dumps(ds_config, sort_keys=True, default=str)
        count = self._calls.get(text, 0)
        self._calls[text] = count + 1
        digest = hashlib.sha256(f"{self.key}|{text}|{count}".encode()).digest()
        return self.measure(ds_config, int.from_bytes(digest[:4], "little"))


def feasible(landscape: Landscape) -> bool:
    """Whether some config of our knob table fits at stage 1, 2 or 3 (no offload)."""
    return landscape.optimum(STAGES, tables=ZERO_KNOBS) > 0.0


class SyntheticFamily:
    """The old landscapes where something fits (implements ``Family``)."""

    name: str = NAME

    def draw(
        self,
        count: int,
        first_seed: int = 0,
        *,
        activation_error: float | None = None,
        noise: float | None = None,
    ) -> list[BenchmarkLandscape]:
        """The first ``count`` feasible landscapes from ``first_seed`` on; the sweeps set the
        true/profiled activation ratio and the relative sd of a measurement."""
        if activation_error is not None and not activation_error > 0:
            raise ValueError(f"activation_error must be positive, got {activation_error}")
        if noise is not None and not 0 <= noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        out: list[BenchmarkLandscape] = []
        seed = first_seed
        while len(out) < count:
            if seed - first_seed > count + _MAX_SKIPPED:  # pragma: no cover - most seeds fit
                raise RuntimeError(f"fewer than {count} feasible landscapes from {first_seed}")
            inner = Landscape.draw(seed)
            if activation_error is not None:
                inner = attrs.evolve(inner, activation_error=activation_error)
            if noise is not None:
                inner = attrs.evolve(inner, noise=noise)
            if feasible(inner):
                out.append(SyntheticLandscape(inner))
            seed += 1
        return out


FAMILY: Family = SyntheticFamily()


def _conforms(landscape: SyntheticLandscape) -> BenchmarkLandscape:
    """Static check (mypy) that the adapter implements the protocol."""
    return landscape
