"""The tuning family: simulated DeepSpeed landscapes written from the physics of training.

Each landscape is a dense GPT-style decoder (1e8 to 2e10 parameters) trained with Adam in
bf16 mixed precision on 1-16 GPUs of 24, 40 or 80 GiB (``tuning_draw``). Its memory
follows DeepSpeed 0.19.8's accounting of ZeRO model states and buffers plus activations
that the profile under-states (``tuning_memory``); its step time follows FLOPs, ZeRO's
collectives and the allocator (``tuning_time``). Nothing here reads ``determined_dsat``'s
memory model or surrogates: the search methods tuned on this family have to learn it.

Use ``FAMILY.draw(30)`` for landscapes; :meth:`TuningLandscape.best_config` tells where
a landscape's optimum is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from benchmarks.families.api import (
    BenchmarkLandscape,
    Family,
    KnobTables,
    measured_steps_of,
    window_noise_factor,
)
from benchmarks.families.tuning_config import RELEVANT_KNOBS, TrialSetup, trial_setup, zero_setup
from benchmarks.families.tuning_draw import draw_spec
from benchmarks.families.tuning_memory import MemoryUse, memory_use
from benchmarks.families.tuning_spec import GIB, TuningSpec
from benchmarks.families.tuning_time import step_s
from determined_dsat.space.ds_config import is_profiling_config

DURATION_NOISE = 0.02  # relative sd of a trial's wall time
TEARDOWN_S = 4.0  # metrics or traceback written, processes exit


@attrs.frozen
class BestConfig:
    """Where a landscape's optimum is: stage, zero block, micro-batch and throughput."""

    stage: int
    zero: Mapping[str, Any]
    mbs: int
    throughput: float  # samples/s, noise-free
    max_fit_mbs: int  # the largest micro-batch this zero block fits


@attrs.frozen
class Evaluation:
    """Noise-free outcome of one config: its memory, step seconds and whether it fits."""

    setup: TrialSetup
    memory: MemoryUse
    step_s: float
    fits: bool
    slots: int

    @property
    def samples_per_step(self) -> int:
        """Samples of one optimizer step over all GPUs."""
        return self.setup.mbs * self.setup.gas * self.slots


def _table_configs(stage: int, table: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every zero block over the knobs DeepSpeed reads at ``stage`` (no offload)."""
    names = [
        k for k in table if k in RELEVANT_KNOBS[stage] or f"stage3_{k}" in RELEVANT_KNOBS[stage]
    ]
    for values in itertools.product(*(table[k] for k in names)):
        yield {"stage": stage, **dict(zip(names, values))}


def _table_key(stage: int, table: Mapping[str, Sequence[Any]]) -> str:
    return json.dumps([stage, {k: list(v) for k, v in table.items()}], sort_keys=True, default=str)


class TuningLandscape:
    """One simulated model on one simulated cluster (implements ``BenchmarkLandscape``)."""

    def __init__(self, spec: TuningSpec) -> None:
        self.spec = spec
        self._calls: dict[str, int] = {}
        self._best: dict[str, BestConfig | None] = {}

    @property
    def key(self) -> str:
        """A stable, unique name, e.g. ``"tuning-07"``."""
        return self.spec.key

    @property
    def slots(self) -> int:
        """GPUs per trial."""
        return self.spec.cluster.slots

    @property
    def capacity_bytes(self) -> int:
        """Memory of one GPU (bytes), what the profile reports as ``gpu_mem``."""
        return self.spec.cluster.gpu.memory_bytes

    def describe(self) -> dict[str, Any]:
        """Model, cluster and stack facts for reports (JSON-able)."""
        model, cluster, beh = self.spec.model, self.spec.cluster, self.spec.behaviour
        return {
            "key": self.key,
            "params_b": round(model.num_params / 1e9, 3),
            "layers": model.layers,
            "hidden": model.hidden,
            "heads": model.heads,
            "seq": model.seq,
            "vocab": model.vocab,
            "flash_attention": model.flash_attention,
            "checkpointing": model.checkpointing,
            "gpu": cluster.gpu.name,
            "gpu_mem_gib": round(cluster.gpu.memory_bytes / GIB, 1),
            "slots": cluster.slots,
            "nodes": cluster.nodes,
            "activation_ratio": round(beh.activation_ratio, 3),
            "noise": round(beh.noise, 4),
        }

    def profile_metrics(self) -> dict[str, int]:
        """What DeepSpeed's model-info profile reports (counts and bytes)."""
        params = self.spec.model.num_params
        return {
            "num_params": params,
            "trainable_num_params": params,
            "activation_mem_per_gpu": self.spec.profile_activation_bytes(),
            "gpu_mem": self.capacity_bytes,
        }

    def evaluate(self, setup: TrialSetup) -> Evaluation:
        """Noise-free memory and step time of a resolved config."""
        memory = memory_use(self.spec, setup)
        mbs = np.array([float(setup.mbs)])
        peak = memory.peak(mbs)
        share = np.minimum(peak / self.capacity_bytes, 1.0)
        seconds = float(step_s(self.spec, setup, mbs, share)[0])
        return Evaluation(setup, memory, seconds, bool(peak[0] <= self.capacity_bytes), self.slots)

    def _evaluate_config(self, ds_config: Mapping[str, Any]) -> Evaluation:
        return self.evaluate(trial_setup(ds_config, self.slots))

    def true_throughput(self, ds_config: Mapping[str, Any]) -> float | None:
        """Noise-free samples/s of a full ds_config; None when it runs out of memory."""
        result = self._evaluate_config(ds_config)
        return result.samples_per_step / result.step_s if result.fits else None

    def startup_s(self, setup: TrialSetup) -> float:
        """Seconds from launch to the first step: processes, DeepSpeed init, model build."""
        beh, zero = self.spec.behaviour, setup.zero
        billions = self.spec.model.num_params / 1e9
        build = beh.startup_s_per_billion * billions * (1.3 if zero.stage == 3 else 1.0)
        if zero.offload_optimizer or zero.offload_param:
            build += 0.4 * beh.startup_s_per_billion * billions  # pinned host buffers
        return beh.startup_s + build + (6.0 if self.spec.cluster.nodes > 1 else 0.0)

    def _warmup_s(self) -> float:
        """The first step's extra: NCCL communicators, cuBLAS heuristics, allocator growth."""
        return 1.0 + 1.5 * math.log2(self.slots)

    def _trained_s(self, setup: TrialSetup, step_seconds: float) -> float:
        """Wall seconds of a trial that trains ``end_profile_step + 1`` steps."""
        steps = setup.end_profile_step + 1
        trained = (steps + 1.5) * step_seconds  # the first step also warms up
        return self.startup_s(setup) + self._warmup_s() + trained + TEARDOWN_S

    def _oom_s(self, result: Evaluation) -> float:
        """Wall seconds of a trial that runs out of memory midway through its first step."""
        first = 0.5 * result.step_s / result.setup.gas
        return self.startup_s(result.setup) + self._warmup_s() + first + TEARDOWN_S

    def expected_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Noise-free wall seconds of a trial of this config, whether it trains or not."""
        result = self._evaluate_config(ds_config)
        return self._trained_s(result.setup, result.step_s) if result.fits else self._oom_s(result)

    def oom_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Wall seconds of a trial of this config that runs out of memory in its first step."""
        return self._oom_s(self._evaluate_config(ds_config))

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        """One noisy measurement (samples/s, FLOP/s per GPU, s per step, wall seconds).

        Raises ``MemoryError`` when the config does not fit."""
        result = self._evaluate_config(ds_config)
        if not result.fits:
            raise MemoryError(f"{self.key}: config does not fit in {self.capacity_bytes} bytes")
        rng = np.random.default_rng([self.spec.seed, trial_seed & (2**64 - 1)])
        noise = self.spec.behaviour.noise * window_noise_factor(measured_steps_of(ds_config))
        factor = max(0.05, 1.0 + noise * float(rng.standard_normal()))
        latency = result.step_s / factor
        setup = result.setup
        tokens = setup.mbs * setup.gas * self.spec.model.seq
        duration = self._trained_s(setup, latency)
        duration *= max(0.5, 1.0 + DURATION_NOISE * float(rng.standard_normal()))
        return {
            "throughput": result.samples_per_step / latency,
            "FLOPS_per_gpu": tokens * self.spec.model.model_flops_per_token() / latency,
            "latency": latency,
            "duration_s": duration,
        }

    def _best_of_block(self, block: Mapping[str, Any]) -> BestConfig | None:
        setup = TrialSetup(zero=zero_setup(block), mbs=1, gas=1, weight_bytes=2, end_profile_step=5)
        memory = memory_use(self.spec, setup)
        fit = memory.max_fit(self.capacity_bytes)
        if fit < 1:
            return None
        mbs = np.arange(1, fit + 1, dtype=np.float64)
        share = memory.peak(mbs) / self.capacity_bytes
        throughput = mbs * self.slots / step_s(self.spec, setup, mbs, share)
        best = int(np.argmax(throughput))
        return BestConfig(setup.zero.stage, dict(block), best + 1, float(throughput[best]), fit)

    def best_of_stage(self, stage: int, table: Mapping[str, Sequence[Any]]) -> BestConfig | None:
        """The best noise-free config of one stage's knob table (see :meth:`best_config`)."""
        key = _table_key(stage, table)
        if key not in self._best:
            best: BestConfig | None = None
            for block in _table_configs(stage, table):
                candidate = self._best_of_block(block)
                if candidate and (best is None or candidate.throughput > best.throughput):
                    best = candidate
            self._best[key] = best
        return self._best[key]

    def best_config(self, tables: KnobTables, stages: Sequence[int]) -> BestConfig | None:
        """The best noise-free config over ``stages``, every combination of the tables'
        knobs DeepSpeed reads at that stage, every micro-batch that fits (gas 1, no
        offload, bf16); None when nothing fits. Cached per stage and table; a tie goes
        to the stage listed first."""
        best: BestConfig | None = None
        for stage in stages:
            candidate = self.best_of_stage(stage, tables.get(stage, {}))
            if candidate and (best is None or candidate.throughput > best.throughput):
                best = candidate
        return best

    def optimum(self, tables: KnobTables, stages: Sequence[int]) -> float:
        """The best noise-free throughput (samples/s) of :meth:`best_config`; 0 if none fits."""
        best = self.best_config(tables, stages)
        return 0.0 if best is None else best.throughput

    def _next_seed(self, ds_config: Mapping[str, Any]) -> int:
        """The seed of this call: (landscape, config, how many times it was asked)."""
        text = json.dumps(ds_config, sort_keys=True, default=str)
        count = self._calls.get(text, 0)
        self._calls[text] = count + 1
        digest = hashlib.sha256(f"{self.key}|{text}|{count}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        """The replay function: the profile for the profiling config, else a measurement."""
        if is_profiling_config(ds_config):
            setup = TrialSetup(zero_setup({}), mbs=1, gas=1, weight_bytes=2, end_profile_step=1)
            return {
                **self.profile_metrics(),
                "duration_s": self.startup_s(setup) + self._warmup_s(),
            }
        return self.measure(ds_config, self._next_seed(ds_config))


class TuningFamily:
    """Seeded tuning landscapes (implements ``Family``)."""

    def __init__(self) -> None:
        self.name = "tuning"

    def draw(
        self,
        count: int,
        first_seed: int = 0,
        *,
        activation_error: float | None = None,
        noise: float | None = None,
    ) -> list[BenchmarkLandscape]:
        """``count`` landscapes, seeds ``first_seed`` onwards; the sweeps override the
        true/profiled activation ratio (0.5-3) and the measurement noise (0.01-0.05)."""
        if activation_error is not None and activation_error <= 0.0:
            raise ValueError(f"activation_error must be positive, got {activation_error}")
        if noise is not None and not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        return [
            TuningLandscape(draw_spec(seed, activation_error, noise))
            for seed in range(first_seed, first_seed + count)
        ]


FAMILY = TuningFamily()


def _conforms(landscape: TuningLandscape) -> tuple[Family, BenchmarkLandscape]:
    """Static check (mypy) that the family and its landscapes implement the protocol."""
    return FAMILY, landscape
