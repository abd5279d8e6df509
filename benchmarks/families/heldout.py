"""The held-out family: simulated DeepSpeed landscapes written from the physics of training.

Written apart from ``determined_dsat``'s memory model and surrogates (and from the tuning
family), so a search tuned elsewhere meets a landscape it was not fitted to. Each landscape
draws a model (:mod:`heldout_models`: about 2/3 GPT-style decoders, the rest encoders,
ViTs, wide MLPs, U-Nets, partly frozen decoders), a cluster (:mod:`heldout_cluster`: 1 to
16 A10/A100/H100 GPUs; 16 is two nodes) and quirks (allocator, cache, noise). Memory
follows DeepSpeed 0.19.8's ZeRO layout (:mod:`heldout_memory`), step time FLOPs,
bandwidths and overlaps (:mod:`heldout_time`).

What the profile under-states: ``activation_mem_per_gpu`` is the forward pass's saved
bytes at micro-batch 1; the true per-sample bytes add the backward peak and the allocator's
fragmentation (``activation_ratio`` = true / profiled, at stages 0-2 with contiguous
gradients), and a CUDA/NCCL context sits outside the allocator. The precision (bf16 mixed
or fp32) is the landscape's: a ds_config's ``bf16``/``fp16`` blocks are not read, since
searches never change them. Only landscapes where some stage fits micro-batch 1 with
DeepSpeed's default knobs, and none fits more than :data:`MAX_MBS`, are drawn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
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
from benchmarks.families.heldout_cluster import GIB, Cluster, Quirks, draw_cluster, draw_quirks
from benchmarks.families.heldout_memory import MemoryBreakdown, memory_breakdown
from benchmarks.families.heldout_models import ModelSpec, draw_model
from benchmarks.families.heldout_time import compute_seconds, step_seconds
from benchmarks.families.heldout_zero import ZeroSettings, table_blocks, zero_settings
from determined_dsat.space.ds_config import is_profiling_config

NAME = "heldout"
MAX_MBS = 1024  # the largest micro-batch a drawn landscape fits with default knobs
DEFAULT_END_PROFILE_STEP = 5
TEARDOWN_S = 3.0
_DRAW_ATTEMPTS = 200


@attrs.frozen
class Trial:
    """What a ds_config asks of a landscape."""

    zero: ZeroSettings
    mbs: int
    gas: int
    steps: int  # end_profile_step + 1: DeepSpeed's autotuner exits during that step


@attrs.frozen
class OptimumPoint:
    """The best noise-free configuration of a search space (gas 1, no offload)."""

    throughput: float  # samples/s
    stage: int
    mbs: int
    zero: dict[str, Any]  # the zero_optimization block, as the knob table spells it

    def ds_config(self) -> dict[str, Any]:
        """The batch and ZeRO part of a ds_config of this point (the landscape ignores the
        rest: precision and optimizer are its own)."""
        return {
            "train_micro_batch_size_per_gpu": self.mbs,
            "gradient_accumulation_steps": 1,
            "zero_optimization": dict(self.zero),
        }


def _positive_int(value: Any, name: str) -> int | None:
    if value is None or value == "auto":
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return number


def _batch(ds_config: Mapping[str, Any], slots: int) -> tuple[int, int]:
    """(micro-batch, gradient accumulation) of a ds_config, completed as DeepSpeed does from
    ``train_batch_size``; ValueError for a batch it would refuse."""
    mbs = _positive_int(ds_config.get("train_micro_batch_size_per_gpu"), "micro-batch")
    gas = _positive_int(ds_config.get("gradient_accumulation_steps"), "gradient accumulation")
    tbs = _positive_int(ds_config.get("train_batch_size"), "train_batch_size")
    if tbs is None:
        if mbs is None:
            raise ValueError("ds_config sets neither a micro-batch nor train_batch_size")
        return mbs, gas or 1
    if mbs is None:
        mbs = max(1, tbs // ((gas or 1) * slots))
    if gas is None:
        gas = max(1, tbs // (mbs * slots))
    if tbs != mbs * gas * slots:
        raise ValueError(f"train_batch_size {tbs} != {mbs} x {gas} x {slots} GPUs")
    return mbs, gas


def read_trial(ds_config: Mapping[str, Any], slots: int) -> Trial:
    """The trial a full ds_config describes; raises ValueError for a batch DeepSpeed would
    refuse (``train_batch_size != mbs * gas * slots``)."""
    mbs, gas = _batch(ds_config, slots)
    autotuning = ds_config.get("autotuning")
    end = DEFAULT_END_PROFILE_STEP
    if isinstance(autotuning, Mapping) and autotuning.get("end_profile_step") is not None:
        end = int(autotuning["end_profile_step"])
    zero = ds_config.get("zero_optimization") or {}
    return Trial(zero_settings(zero), mbs, gas, end + 1)


def _derived_seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:16], 16)


@attrs.define
class HeldoutLandscape:
    """One simulated model on one simulated cluster (see the module docstring)."""

    seed: int
    model: ModelSpec
    cluster: Cluster
    quirks: Quirks
    activation_ratio: float  # true per-sample activation bytes / the profile's
    noise_sd: float  # relative standard deviation of one measurement
    knee_mbs: float  # micro-batch above which cache effects slow kernels (inf: none)
    _calls: dict[str, int] = attrs.field(factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{NAME}-{self.seed:02d}"

    @property
    def slots(self) -> int:
        return self.cluster.slots

    @property
    def gpu_memory(self) -> int:
        """Bytes of one GPU (the profile's ``gpu_mem``)."""
        return self.cluster.gpu.memory

    def describe(self) -> dict[str, Any]:
        """Facts for reports: model, cluster, activation ratio, noise, cache knee."""
        return {
            "key": self.key,
            "kind": self.model.kind,
            "params": self.model.total_params,
            "trainable_params": self.model.trainable_params,
            "precision": self.model.precision,
            "gpu": self.cluster.gpu.name,
            "gpu_mem_gib": round(self.gpu_memory / GIB, 2),
            "slots": self.slots,
            "nodes": self.cluster.nodes,
            "activation_ratio": round(self.activation_ratio, 3),
            "noise_sd": round(self.noise_sd, 4),
            "heavy_tailed_noise": bool(np.isfinite(self.quirks.noise_dof)),
            "cache_knee_mbs": None if np.isinf(self.knee_mbs) else round(self.knee_mbs, 1),
            "shape": dict(self.model.facts),
        }

    @property
    def true_per_sample_bytes(self) -> float:
        """Activation bytes one more sample adds at stages 0-2 with contiguous gradients."""
        return self.quirks.fragmentation * (self.model.saved_bytes + self.model.backward_bytes)

    def profile_metrics(self) -> dict[str, int]:
        """What DeepSpeed's model-info profile reports (bytes and counts)."""
        return {
            "num_params": self.model.total_params,
            "trainable_num_params": self.model.trainable_params,
            "activation_mem_per_gpu": int(
                round(self.true_per_sample_bytes / self.activation_ratio)
            ),
            "gpu_mem": self.gpu_memory,
        }

    def memory(self, zero: ZeroSettings) -> MemoryBreakdown:
        """Bytes per GPU of a ZeRO configuration (peak at a micro-batch: ``.peak(mbs)``)."""
        return memory_breakdown(self.model, self.cluster, zero, self.quirks.fragmentation)

    def max_fit(self, zero: Mapping[str, Any]) -> int:
        """The largest micro-batch a ``zero_optimization`` block fits (0: none)."""
        return self.memory(zero_settings(zero)).max_fit(self.gpu_memory)

    def step_seconds(
        self,
        zero: ZeroSettings,
        mbs: np.ndarray,
        gas: int = 1,
        memory: MemoryBreakdown | None = None,
    ) -> np.ndarray:
        """Noise-free seconds per optimizer step at each micro-batch size (fitting or not);
        ``memory``: :meth:`memory` of ``zero``, when the caller has it."""
        fraction = (memory or self.memory(zero)).peak(mbs) / self.gpu_memory
        onset, penalty = self.quirks.flush_onset, self.quirks.flush_penalty
        flush = 1.0 + penalty * np.clip((fraction - onset) / (1.0 - onset), 0.0, 1.0) ** 2
        knee = (self.knee_mbs, self.quirks.knee_slope)
        return step_seconds(self.model, self.cluster, zero, mbs, gas, knee=knee, flush=flush)

    def _fits(self, trial: Trial) -> bool:
        return trial.mbs <= self.memory(trial.zero).max_fit(self.gpu_memory)

    def _step(self, trial: Trial) -> float:
        return float(self.step_seconds(trial.zero, np.asarray([trial.mbs]), trial.gas)[0])

    def true_throughput(self, ds_config: Mapping[str, Any]) -> float | None:
        """Noise-free samples/s of a full ds_config; None when it runs out of memory."""
        trial = read_trial(ds_config, self.slots)
        if not self._fits(trial):
            return None
        return trial.mbs * trial.gas * self.slots / self._step(trial)

    def _startup_s(self, zero: ZeroSettings) -> float:
        q = self.quirks
        size = float(self.model.total_params) / 1e9
        seconds = q.startup_base_s + q.startup_per_gparam_s * float(np.power(size, 0.6))
        seconds += 8.0 if self.cluster.nodes > 1 else 0.0  # two-node rendezvous
        seconds *= 1.15 if zero.stage == 3 else 1.0  # zero.Init partitions while building
        return seconds + (10.0 if zero.offload_optimizer or zero.offload_param else 0.0)

    def expected_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Noise-free wall seconds of a trial that fits: start-up, warm-up, its steps."""
        trial = read_trial(ds_config, self.slots)
        fixed = self._startup_s(trial.zero) + self.quirks.warmup_s + TEARDOWN_S
        return fixed + trial.steps * self._step(trial)

    def oom_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Wall seconds of a trial that runs out of memory in its first step."""
        trial = read_trial(ds_config, self.slots)
        knee = (self.knee_mbs, self.quirks.knee_slope)
        first = compute_seconds(self.model, self.cluster, trial.zero, np.asarray([trial.mbs]), knee)
        return (
            self._startup_s(trial.zero) + self.quirks.warmup_s + 0.5 * float(first[0]) + TEARDOWN_S
        )

    def _noise(self, rng: np.random.Generator, measured_steps: int) -> float:
        dof = self.quirks.noise_dof
        z = (
            rng.standard_normal()
            if np.isinf(dof)
            else rng.standard_t(dof) * np.sqrt((dof - 2) / dof)
        )
        sd = self.noise_sd * window_noise_factor(measured_steps)
        return float(np.clip(1.0 + sd * z, 0.5, 1.5))

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        """One noisy measurement (samples/s, FLOP/s per GPU, s per step, trial seconds);
        raises MemoryError when the config does not fit."""
        trial = read_trial(ds_config, self.slots)
        if not self._fits(trial):
            peak = self.memory(trial.zero).peak(np.asarray([trial.mbs]))[0]
            raise MemoryError(
                f"{self.key}: {peak / GIB:.1f} GiB needed, {self.gpu_memory / GIB:.1f} GiB per GPU"
            )
        rng = np.random.default_rng([self.seed, trial_seed % (1 << 63)])
        step = self._step(trial) / self._noise(rng, measured_steps_of(ds_config))
        samples = trial.mbs * trial.gas * self.slots
        flops = (self.model.fwd_flops + self.model.bwd_flops) * trial.mbs * trial.gas
        fixed = self._startup_s(trial.zero) + self.quirks.warmup_s + TEARDOWN_S
        duration = (fixed + trial.steps * step) * (1.0 + 0.02 * rng.standard_normal())
        return {
            "throughput": samples / step,
            "FLOPS_per_gpu": flops / step,
            "latency": step,
            "duration_s": max(1.0, duration),
        }

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        """The replay function; the n-th call with one config draws its own noise."""
        if is_profiling_config(ds_config):
            return dict(self.profile_metrics())
        canonical = json.dumps(ds_config, sort_keys=True, default=str)
        count = self._calls.get(canonical, 0)
        self._calls[canonical] = count + 1
        return dict(self.measure(ds_config, _derived_seed(self.key, canonical, count)))

    def best_config(self, tables: KnobTables, stages: Sequence[int]) -> OptimumPoint | None:
        """The best noise-free point over ``stages``: every combination of each stage's knob
        values (offload choices left out), every micro-batch that fits, gas 1; None when
        nothing fits. Ties keep the first stage and combination in table order."""
        best: OptimumPoint | None = None
        for stage in stages:
            for block in table_blocks(stage, tables.get(stage, {})):
                zero = zero_settings(block)
                memory = self.memory(zero)
                fit = memory.max_fit(self.gpu_memory)
                if fit < 1:
                    continue
                mbs = np.arange(1, fit + 1)
                throughput = mbs * self.slots / self.step_seconds(zero, mbs, memory=memory)
                at = int(np.argmax(throughput))
                if best is None or throughput[at] > best.throughput:
                    best = OptimumPoint(float(throughput[at]), stage, int(mbs[at]), block)
        return best

    def optimum(self, tables: KnobTables, stages: Sequence[int]) -> float:
        """The best noise-free throughput (samples/s) of :meth:`best_config`; 0 if none fits."""
        best = self.best_config(tables, stages)
        return 0.0 if best is None else best.throughput


def _default_fit(model: ModelSpec, cluster: Cluster, quirks: Quirks) -> int:
    """The largest micro-batch any stage fits with DeepSpeed's default knobs."""
    fits = [
        memory_breakdown(model, cluster, zero_settings({"stage": s}), quirks.fragmentation).max_fit(
            cluster.gpu.memory
        )
        for s in (0, 1, 2, 3)
    ]
    return max(fits)


def draw_landscape(
    seed: int, *, activation_error: float | None = None, noise: float | None = None
) -> HeldoutLandscape:
    """The landscape of one seed: redraws until some stage fits, and none fits > MAX_MBS."""
    rng = np.random.default_rng([0x4E1D, seed])
    for _ in range(_DRAW_ATTEMPTS):
        model, cluster, quirks = draw_model(rng), draw_cluster(rng), draw_quirks(rng)
        fit = _default_fit(model, cluster, quirks)
        if 1 <= fit <= MAX_MBS:
            break
    else:  # pragma: no cover - the draw accepts most attempts
        raise RuntimeError(f"no feasible landscape for seed {seed}")
    true = quirks.fragmentation * (model.saved_bytes + model.backward_bytes)
    ratio = true / model.saved_bytes if activation_error is None else activation_error
    knee = max(2.0, quirks.knee_fraction * fit)
    return HeldoutLandscape(
        seed=seed,
        model=model,
        cluster=cluster,
        quirks=quirks,
        activation_ratio=float(ratio),
        noise_sd=quirks.noise_sd if noise is None else float(noise),
        knee_mbs=knee,
    )


class HeldoutFamily:
    """The held-out family (``benchmarks.families.api.Family``)."""

    name: str = NAME

    def landscapes(
        self,
        count: int,
        first_seed: int = 0,
        *,
        activation_error: float | None = None,
        noise: float | None = None,
    ) -> list[HeldoutLandscape]:
        """:meth:`draw`, typed as this family's landscapes (with their extra methods)."""
        if activation_error is not None and not activation_error > 0:
            raise ValueError(f"activation_error must be positive, got {activation_error}")
        if noise is not None and not 0 <= noise < 0.5:
            raise ValueError(f"noise must be a relative sd in [0, 0.5), got {noise}")
        return [
            draw_landscape(seed, activation_error=activation_error, noise=noise)
            for seed in range(first_seed, first_seed + count)
        ]

    def draw(
        self,
        count: int,
        first_seed: int = 0,
        *,
        activation_error: float | None = None,
        noise: float | None = None,
    ) -> list[BenchmarkLandscape]:
        """``count`` landscapes from seed ``first_seed`` on; the sweeps override the ratio of
        true to profiled activation bytes and the measurement noise's relative sd."""
        drawn = self.landscapes(count, first_seed, activation_error=activation_error, noise=noise)
        return list(drawn)


FAMILY: Family = HeldoutFamily()
