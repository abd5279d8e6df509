"""Seeded synthetic performance landscapes: a stand-in for a model on a cluster.

A landscape has a model size, device memory and world size. Its true memory use per
ZeRO stage deviates from the memory model's estimate (by up to about 25 %) and grows
with the communication buckets a config asks for. Throughput rises with micro-batch
size and saturates, with a per-stage communication cost, and every ZeRO knob that
DeepSpeed reads at that stage scales it:

- numeric knobs (bucket sizes, thresholds) smoothly in log10 of their value, best at
  a per-landscape peak, so any value a search proposes has a well-defined effect;
- boolean knobs by a per-landscape factor for each setting;
- a knob a config leaves out has DeepSpeed's default value (DeepSpeed 0.19.8).

Searches see noisy measurements; the noise-free value scores them. Use one as a
replay function::

    --backend replay --replay-source determined_dsat/testing/synthetic.py:example
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.knobs import ZERO_KNOBS, offload_of
from determined_dsat.space.memory import MemoryModel, ModelProfile, Offload, Precision

GIB = 1024**3
_STAGE_EFFICIENCY = {0: 1.0, 1: 0.97, 2: 0.93, 3: 0.72}

DS_DEFAULTS: dict[str, Any] = {
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "overlap_comm": False,
    "reduce_scatter": True,
    "contiguous_gradients": True,
    "allgather_partitions": True,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000,
}
"""DeepSpeed 0.19.8's defaults for the knobs any search varies (overlap_comm is True
by default at stage 3)."""

RELEVANT: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("reduce_bucket_size", "allgather_bucket_size", "allgather_partitions"),
    2: (
        "reduce_bucket_size",
        "allgather_bucket_size",
        "allgather_partitions",
        "overlap_comm",
        "reduce_scatter",
        "contiguous_gradients",
    ),
    3: (
        "reduce_bucket_size",
        "overlap_comm",
        "contiguous_gradients",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
    ),
}
"""The knobs DeepSpeed reads at each stage; others in a config change nothing."""

# (low, high) of log10 of the best value of each numeric knob.
_PEAK_RANGES = {
    "reduce_bucket_size": (7.3, 9.3),
    "allgather_bucket_size": (7.3, 9.3),
    "stage3_prefetch_bucket_size": (7.0, 8.7),
    "stage3_param_persistence_threshold": (4.0, 6.0),
    "stage3_max_live_parameters": (8.0, 9.5),
    "stage3_max_reuse_distance": (8.0, 9.5),
}
_BOOLEANS = ("overlap_comm", "reduce_scatter", "contiguous_gradients", "allgather_partitions")
_MIN_EFFECT = 0.8


@attrs.frozen
class Landscape:
    """A deterministic performance landscape drawn from ``seed``."""

    seed: int
    num_params: int
    slots: int
    gpu_mem: int
    activation_per_sample: int
    model_error: Mapping[int, float]
    activation_error: float
    stage_efficiency: Mapping[int, float]
    knob_peaks: Mapping[str, float]
    knob_curvature: float
    bool_effects: Mapping[str, Mapping[bool, float]]
    half_saturation_mbs: float
    peak_samples_per_s: float
    noise: float = 0.02

    @classmethod
    def draw(cls, seed: int) -> Landscape:
        rng = np.random.default_rng(seed)
        num_params = int(10 ** rng.uniform(8.0, 10.0))
        slots = int(rng.choice([1, 2, 4, 8]))
        gpu_mem = int(rng.choice([24, 40, 80])) * GIB
        return cls(
            seed=seed,
            num_params=num_params,
            slots=slots,
            gpu_mem=gpu_mem,
            activation_per_sample=int(num_params * rng.uniform(0.05, 0.6)),
            model_error={s: float(rng.uniform(0.8, 1.25)) for s in range(4)},
            activation_error=float(rng.uniform(0.75, 1.3)),
            stage_efficiency={
                s: float(v * rng.uniform(0.95, 1.05)) for s, v in _STAGE_EFFICIENCY.items()
            },
            knob_peaks={k: float(rng.uniform(*span)) for k, span in _PEAK_RANGES.items()},
            knob_curvature=float(rng.uniform(0.01, 0.05)),
            bool_effects={
                k: {True: float(rng.uniform(0.93, 1.03)), False: float(rng.uniform(0.93, 1.03))}
                for k in _BOOLEANS
            },
            half_saturation_mbs=float(rng.uniform(1.0, 24.0)),
            peak_samples_per_s=float(3e11 / num_params * rng.uniform(0.5, 2.0) * slots),
        )

    @property
    def profile(self) -> ModelProfile:
        return ModelProfile(
            num_params=self.num_params,
            trainable_num_params=self.num_params,
            activation_mem_per_gpu=self.activation_per_sample,
            gpu_mem=self.gpu_mem,
        )

    @property
    def memory(self) -> MemoryModel:
        return MemoryModel(self.profile, self.slots, Precision.BF16)

    def knob(self, zero: Mapping[str, Any], name: str) -> Any:
        """A knob's value in a zero block, DeepSpeed's default when absent."""
        if name in zero:
            return zero[name]
        if name == "overlap_comm" and int(zero.get("stage", 0)) == 3:
            return True
        return DS_DEFAULTS[name]

    def bucket_bytes(self, zero: Mapping[str, Any]) -> float:
        """Device memory the communication buckets take (bf16 elements, double-buffered
        when communication overlaps computation)."""
        stage = int(zero.get("stage", 0))
        if stage == 0:
            return 0.0
        buffers = 2 if self.knob(zero, "overlap_comm") else 1
        elements = float(self.knob(zero, "reduce_bucket_size"))
        if stage == 3:
            elements += float(self.knob(zero, "stage3_prefetch_bucket_size"))
        return 2.0 * elements * buffers

    def true_max_mbs(
        self, stage: int, offload: Offload | None = None, zero: Mapping[str, Any] | None = None
    ) -> int:
        """The largest micro-batch that really fits for a zero block (0 if none)."""
        block = {"stage": stage} if zero is None else zero
        usable = self.gpu_mem * self.memory.usable_fraction - self.bucket_bytes(block)
        states = (
            self.memory.model_state_bytes(stage, offload or Offload()) * self.model_error[stage]
        )
        per_sample = self.activation_per_sample * self.activation_error
        return max(0, math.floor((usable - states) / per_sample))

    def knob_factor(self, zero: Mapping[str, Any]) -> float:
        """The product of the effects of the knobs DeepSpeed reads at this stage."""
        factor = 1.0
        for name in RELEVANT[int(zero.get("stage", 0))]:
            value = self.knob(zero, name)
            if name in self.bool_effects:
                factor *= self.bool_effects[name][bool(value)]
            else:
                distance = math.log10(max(float(value), 1.0)) - self.knob_peaks[name]
                factor *= max(_MIN_EFFECT, 1.0 - self.knob_curvature * distance * distance)
        return factor

    def true_throughput(self, zero: Mapping[str, Any], mbs: int) -> float | None:
        """Noise-free samples/s of a config, or None when it does not fit."""
        stage = int(zero.get("stage", 0))
        optimizer, param = offload_of(zero)
        offload = Offload(optimizer=optimizer, param=param and stage == 3)
        if mbs < 1 or mbs > self.true_max_mbs(stage, offload, zero):
            return None
        value = self.peak_samples_per_s * self.stage_efficiency[stage]
        value *= mbs / (mbs + self.half_saturation_mbs) * self.knob_factor(zero)
        if optimizer:
            value *= 0.55
        if param:
            value *= 0.6
        return value

    def optimum(
        self,
        stages: Iterable[int] = (1, 2, 3),
        tables: Mapping[int, Mapping[str, Sequence[Any]]] | None = None,
    ) -> float:
        """The best noise-free throughput over stages, the tables' knob values and every
        micro-batch (no offload). ``tables`` defaults to this package's knob table."""
        best = 0.0
        for stage in stages:
            for zero in _configs(stage, (tables or ZERO_KNOBS).get(stage, {})):
                mbs = self.true_max_mbs(stage, zero=zero)
                value = self.true_throughput(zero, mbs) if mbs >= 1 else None
                best = max(best, value or 0.0)
        return best

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        """Noisy metrics of a full ds_config; raises ``MemoryError`` when it does not fit."""
        zero = ds_config.get("zero_optimization") or {}
        mbs = int(ds_config["train_micro_batch_size_per_gpu"])
        value = self.true_throughput(zero, mbs)
        if value is None:
            raise MemoryError(f"synthetic OOM at stage {zero.get('stage', 0)}, mbs {mbs}")
        rng = np.random.default_rng([self.seed, trial_seed])
        noisy = value * float(rng.normal(1.0, self.noise))
        gas = int(ds_config.get("gradient_accumulation_steps", 1))
        flops_per_sample = 6.0 * self.num_params * 1024
        return {
            "throughput": noisy,
            "FLOPS_per_gpu": noisy * flops_per_sample / self.slots,
            "latency": mbs * gas * self.slots / noisy,
        }

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(ds_config):
            return dict(self.profile.to_json())
        return self.measure(ds_config, hash_config(ds_config))


def _configs(stage: int, table: Mapping[str, Sequence[Any]]) -> Iterable[dict[str, Any]]:
    """Every distinct zero block of a stage's table, over the knobs that matter there."""
    names = [k for k in table if k in RELEVANT[stage]]
    for values in itertools.product(*(table[k] for k in names)):
        yield {"stage": stage, **dict(zip(names, values))}


def hash_config(ds_config: Mapping[str, Any]) -> int:
    """A stable small integer for a config, so the same config gets the same noise."""
    digest = hashlib.sha256(json.dumps(ds_config, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


example = Landscape.draw(7)
