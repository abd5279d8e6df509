"""Seeded synthetic performance landscapes: a stand-in for a model on a cluster.

A landscape has a model size, device memory and world size; true memory use per
ZeRO stage that deviates from the memory model's estimate by up to about 30 %; and
a throughput that rises with micro-batch size and saturates, with a per-stage
communication cost and per-knob effects. Searches see noisy measurements; the
noise-free value scores them. Use one as a replay function::

    --backend replay --replay-source determined_dsat/runners/synthetic.py:example
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.knobs import ZERO_KNOBS, offload_of
from determined_dsat.space.memory import MemoryModel, ModelProfile, Offload, Precision

GIB = 1024**3
_STAGE_EFFICIENCY = {0: 1.0, 1: 0.97, 2: 0.93, 3: 0.72}


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
    knob_effects: Mapping[str, Mapping[str, float]]
    half_saturation_mbs: float
    peak_samples_per_s: float
    noise: float = 0.02

    @classmethod
    def draw(cls, seed: int) -> Landscape:
        rng = np.random.default_rng(seed)
        num_params = int(10 ** rng.uniform(8.0, 10.3))
        slots = int(rng.choice([1, 2, 4, 8]))
        gpu_mem = int(rng.choice([16, 24, 40, 80])) * GIB
        per_sample = int(num_params * rng.uniform(0.05, 0.6))
        efficiency = {s: float(v * rng.uniform(0.95, 1.05)) for s, v in _STAGE_EFFICIENCY.items()}
        effects: dict[str, dict[str, float]] = {}
        for table in ZERO_KNOBS.values():
            for knob, values in table.items():
                effects.setdefault(knob, {repr(v): float(rng.uniform(0.9, 1.04)) for v in values})
        return cls(
            seed=seed,
            num_params=num_params,
            slots=slots,
            gpu_mem=gpu_mem,
            activation_per_sample=per_sample,
            model_error={s: float(rng.uniform(0.8, 1.25)) for s in range(4)},
            activation_error=float(rng.uniform(0.7, 1.35)),
            stage_efficiency=efficiency,
            knob_effects=effects,
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

    def true_max_mbs(self, stage: int, offload: Offload | None = None) -> int:
        """The largest micro-batch that really fits (0 if none)."""
        usable = self.gpu_mem * self.memory.usable_fraction
        states = (
            self.memory.model_state_bytes(stage, offload or Offload()) * self.model_error[stage]
        )
        per_sample = self.activation_per_sample * self.activation_error
        return max(0, math.floor((usable - states) / per_sample))

    def true_throughput(self, zero: Mapping[str, Any], mbs: int) -> float | None:
        """Noise-free samples/s of a config, or None when it does not fit."""
        stage = int(zero.get("stage", 0))
        optimizer, param = offload_of(zero)
        offload = Offload(optimizer=optimizer, param=param and stage == 3)
        if mbs < 1 or mbs > self.true_max_mbs(stage, offload):
            return None
        value = self.peak_samples_per_s * self.stage_efficiency[stage]
        value *= mbs / (mbs + self.half_saturation_mbs)
        for knob, choice in zero.items():
            value *= self.knob_effects.get(knob, {}).get(repr(choice), 1.0)
        if optimizer:
            value *= 0.55
        if param:
            value *= 0.6
        return value

    def optimum(self, stages: tuple[int, ...] = (1, 2, 3)) -> float:
        """The best noise-free throughput over stages, knobs and micro-batches (no offload)."""
        best = 0.0
        for stage in stages:
            mbs = self.true_max_mbs(stage)
            if mbs < 1:
                continue
            value = self.peak_samples_per_s * self.stage_efficiency[stage]
            value *= mbs / (mbs + self.half_saturation_mbs)
            for knob in ZERO_KNOBS[stage]:
                value *= max(self.knob_effects[knob].values())
            best = max(best, value)
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
        key = hash_config(ds_config)
        return self.measure(ds_config, key)


def hash_config(ds_config: Mapping[str, Any]) -> int:
    """A stable small integer for a config, so the same config gets the same noise."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(ds_config, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


example = Landscape.draw(7)
