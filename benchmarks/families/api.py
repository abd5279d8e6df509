"""What a benchmark landscape offers the benchmarks: one protocol every family implements.

A landscape stands in for one model on one cluster. Searches see it only as a replay
function (``landscape(ds_config)``: the metrics a trial reports, or ``MemoryError``); the
benchmarks score what a search found with the noise-free functions. A family is a seeded
list of landscapes (``Family.draw``), so every run of a benchmark sees the same ones.

Families are written independently of ``determined_dsat``'s memory model and surrogates:
a family module must not import ``determined_dsat.space.memory``,
``determined_dsat.methods`` or anything that computes memory or throughput for a search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

KnobTables = Mapping[int, Mapping[str, Sequence[Any]]]
"""A search space's ZeRO knobs: stage -> knob -> the values it may take."""

NOISE_REFERENCE_STEPS = 3
"""Measured steps at which a family's drawn noise applies (DeepSpeed's default 3-5)."""


def measured_steps_of(ds_config: Mapping[str, Any]) -> int:
    """The steps a ds_config's autotuning window measures (DeepSpeed's 3-5 if unset)."""
    autotuning = ds_config.get("autotuning")
    start, end = 3, 5
    if isinstance(autotuning, Mapping):
        start = int(autotuning.get("start_profile_step", start) or 0)
        end = int(autotuning.get("end_profile_step", end) or 0)
    return max(1, end - start + 1)


def window_noise_factor(measured_steps: int) -> float:
    """How a measurement's noise scales with the steps it averages: half of its variance
    at :data:`NOISE_REFERENCE_STEPS` is step-to-step jitter (averaged away by more steps),
    half is the run's own (where the process landed), which no window removes."""
    half = 0.5 / NOISE_REFERENCE_STEPS
    return float(((half + 0.5 / measured_steps) / (2 * half)) ** 0.5)


PROFILE_KEYS = ("num_params", "trainable_num_params", "activation_mem_per_gpu", "gpu_mem")
"""What a profiling trial reports (DeepSpeed's model-info profile; bytes and counts)."""


class BenchmarkLandscape(Protocol):
    """One simulated model on one simulated cluster."""

    @property
    def key(self) -> str:
        """A stable, unique name, e.g. ``"heldout-07"``."""

    @property
    def slots(self) -> int:
        """GPUs per trial (the data-parallel world size)."""

    def describe(self) -> Mapping[str, Any]:
        """A few JSON-able facts for reports (model size, GPU memory, nodes, noise...)."""

    def profile_metrics(self) -> dict[str, int]:
        """What the profiling trial reports: the keys of :data:`PROFILE_KEYS`.

        ``activation_mem_per_gpu`` is what DeepSpeed measures: the forward pass at
        micro-batch 1 only, so it under-states the real per-sample memory."""

    def true_throughput(self, ds_config: Mapping[str, Any]) -> float | None:
        """Noise-free samples/s of a full ds_config; None when it runs out of memory."""

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        """One noisy measurement: ``throughput`` (samples/s), ``FLOPS_per_gpu``, ``latency``
        (s per step) and ``duration_s`` (simulated wall seconds of the whole trial).
        Raises ``MemoryError`` when the config does not fit."""

    def oom_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        """Simulated wall seconds of a trial of this config that runs out of memory."""

    def optimum(self, tables: KnobTables, stages: Sequence[int]) -> float:
        """The best noise-free throughput over ``stages``, every combination of the tables'
        knob values, every micro-batch that fits (gas 1, no offload)."""

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        """The replay function: profile metrics for the profiling config, else
        :meth:`measure`; raises ``MemoryError``. The seed of the n-th call with the same
        config is derived from (landscape, config, n), so a re-measurement of a config
        draws fresh noise while a benchmark run stays reproducible."""


class Family(Protocol):
    """A seeded family of landscapes."""

    name: str

    def draw(
        self,
        count: int,
        first_seed: int = 0,
        *,
        activation_error: float | None = None,
        noise: float | None = None,
    ) -> list[BenchmarkLandscape]:
        """``count`` landscapes, the same ones for the same arguments.

        Sweeps: ``activation_error`` fixes the ratio of the true per-sample activation
        memory to the profile's ``activation_mem_per_gpu`` (0.5 to 3; None: the family's own
        draw); ``noise`` fixes the relative standard deviation of one measurement (0.01 to
        0.05; None: the family's own draw)."""
