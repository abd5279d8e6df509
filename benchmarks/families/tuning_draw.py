"""Drawing one tuning landscape from a seed: cluster first, then a model that could fit it.

The model size is drawn log-uniformly from 1e8 parameters up to a little beyond what
ZeRO-3 could hold on the cluster (at most 2e10), so most landscapes fit at some stage,
a few only at stage 2 or 3, and a few nowhere. Every draw consumes the same random
numbers whatever the sweeps say, so a sweep changes only what it overrides.
"""

from __future__ import annotations

import math
from typing import TypeVar

import attrs
import numpy as np

from benchmarks.families.tuning_spec import GIB, Behaviour, Cluster, Gpu, ModelShape, TuningSpec

GPUS: tuple[tuple[Gpu, float], ...] = (
    (Gpu("A10-24GB", int(23.7 * GIB), 125e12, 0.60e12, nvlink=False), 0.15),
    (Gpu("L4-24GB", int(22.5 * GIB), 121e12, 0.30e12, nvlink=False), 0.10),
    (Gpu("RTX4090-24GB", int(23.6 * GIB), 165e12, 1.00e12, nvlink=False), 0.10),
    (Gpu("A100-40GB", int(39.4 * GIB), 312e12, 1.55e12, nvlink=True), 0.25),
    (Gpu("A100-80GB", int(79.2 * GIB), 312e12, 2.00e12, nvlink=True), 0.25),
    (Gpu("H100-80GB", int(79.1 * GIB), 989e12, 3.35e12, nvlink=True), 0.15),
)
SLOTS = ((1, 0.12), (2, 0.15), (4, 0.23), (8, 0.3), (16, 0.2))
SEQ = ((512, 0.1), (1024, 0.3), (2048, 0.4), (4096, 0.2))
FLASH_SHARE = {512: 0.4, 1024: 0.55, 2048: 0.75, 4096: 0.9}  # long sequences need it
VOCAB = ((32_000, 0.3), (50_304, 0.35), (65_024, 0.1), (128_256, 0.25))

MIN_PARAMS = 1e8
MAX_PARAMS = 2e10
BEYOND_ZERO3 = 1.15  # draw up to this factor beyond ZeRO-3's capacity
ZERO3_BYTES_PER_PARAM = 18  # weights, gradients, master weights, moments, fp32 gradients
RATIO_RANGE = (1.05, 3.5)

T = TypeVar("T")


def _choice(rng: np.random.Generator, options: tuple[tuple[T, float], ...]) -> T:
    """One of ``options`` (value, weight), drawn in proportion to the weights."""
    weights = np.array([w for _, w in options])
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def draw_cluster(rng: np.random.Generator) -> Cluster:
    """GPU type, slots and the links between them."""
    gpu = _choice(rng, GPUS)
    slots = _choice(rng, SLOTS)
    if gpu.nvlink:
        intra = rng.uniform(130e9, 230e9) * (1.7 if gpu.peak_flops > 500e12 else 1.0)
    else:
        intra = rng.uniform(8e9, 20e9)
    return Cluster(
        gpu=gpu,
        slots=slots,
        intra_bytes_per_s=intra,
        inter_bytes_per_s=intra / rng.uniform(7.0, 14.0),
        hop_latency_s=rng.uniform(2e-6, 6e-6),
        inter_hop_latency_s=rng.uniform(8e-6, 25e-6),
        pcie_bytes_per_s=rng.uniform(10e9, 25e9),
        cpu_adam_params_per_s=rng.uniform(0.4e9, 1.5e9),
    )


def zero3_capacity(cluster: Cluster) -> float:
    """Parameters whose ZeRO-3 model states fill most of the cluster's memory."""
    usable = 0.8 * cluster.gpu.memory_bytes - 2 * GIB
    return usable * cluster.slots / ZERO3_BYTES_PER_PARAM


def draw_model(rng: np.random.Generator, cluster: Cluster) -> ModelShape:
    """A GPT-style decoder of a size the cluster might train."""
    top = min(MAX_PARAMS, BEYOND_ZERO3 * zero3_capacity(cluster))
    target = math.exp(rng.uniform(math.log(MIN_PARAMS), math.log(max(top, 2 * MIN_PARAMS))))
    aspect = math.exp(rng.uniform(math.log(40.0), math.log(140.0)))  # hidden / layers
    head_dim = 64 if rng.uniform() < 0.5 else 128
    hidden = max(512, int(round((target * aspect / 12.0) ** (1 / 3) / 128.0)) * 128)
    layers = max(4, int(round(target / (12.0 * hidden * hidden))))
    size_rank = (math.log(target) - math.log(MIN_PARAMS)) / (math.log(MAX_PARAMS / MIN_PARAMS))
    seq = _choice(rng, SEQ)
    return ModelShape(
        layers=layers,
        hidden=hidden,
        heads=hidden // head_dim,
        seq=seq,
        vocab=_choice(rng, VOCAB),
        flash_attention=bool(rng.uniform() < FLASH_SHARE[seq]),
        checkpointing=bool(rng.uniform() < 0.1 + 0.3 * size_rank),
        fp32_logits_in_forward=bool(rng.uniform() < 0.5),
    )


def natural_ratio(model: ModelShape, rng: np.random.Generator) -> tuple[float, float]:
    """(true/profiled per-sample activation memory, allocator fragmentation) from the
    backward pass's transients: the fp32 logits gradient and softmax of the loss, one
    block's activation gradients (and its recompute when checkpointing)."""
    fragmentation = rng.uniform(0.03, 0.10)
    logit_bytes = 8.0 if rng.uniform() < 0.35 else 4.0  # fp32 gradient (and softmax copy)
    block_transient = rng.uniform(0.5, 1.5) + (1.0 if model.checkpointing else 0.0)
    forward = model.forward_bytes()
    extra = model.vocab * model.seq * logit_bytes + block_transient * model.full_layer_bytes()
    ratio = (forward + extra) * (1.0 + fragmentation) / forward
    return float(np.clip(ratio, *RATIO_RANGE)), fragmentation


def draw_behaviour(
    rng: np.random.Generator,
    model: ModelShape,
    cluster: Cluster,
    activation_error: float | None,
    noise: float | None,
) -> Behaviour:
    """The software stack's constants; the sweeps override the ratio and the noise."""
    ratio, _ = natural_ratio(model, rng)
    speed = cluster.gpu.peak_flops / 312e12
    if cluster.gpu.peak_flops > 500e12:
        efficiency = rng.uniform(0.35, 0.55)
    else:
        efficiency = rng.uniform(0.45, 0.63)
    drawn_noise = rng.uniform(0.02, 0.03)
    return Behaviour(
        context_bytes=rng.uniform(0.7, 1.7) * GIB,
        activation_ratio=ratio if activation_error is None else float(activation_error),
        natural_activation_ratio=ratio,
        grad_fragmentation=rng.uniform(0.1, 0.3),
        peak_efficiency=efficiency,
        half_tokens=rng.uniform(0.5, 2.0) * 1.5e6 / model.hidden * math.sqrt(speed),
        launch_s_fixed=rng.uniform(1e-3, 4e-3),
        launch_s_per_layer=rng.uniform(0.15e-3, 0.45e-3),
        grad_hook_s=rng.uniform(3e-6, 10e-6),
        module_hook_s=rng.uniform(40e-6, 120e-6),
        zero3_overhead=rng.uniform(0.04, 0.15),
        collective_call_s=rng.uniform(80e-6, 300e-6),
        overlap_slowdown=rng.uniform(0.02, 0.08),
        reduce_scatter_inefficiency=rng.uniform(1.0, 1.5),
        step_overhead_s=rng.uniform(5e-3, 25e-3),
        flush_headroom=rng.uniform(0.04, 0.12),
        flush_cost=rng.uniform(0.05, 0.25),
        flush_power=rng.uniform(1.0, 2.5),
        startup_s=rng.uniform(15.0, 35.0),
        startup_s_per_billion=rng.uniform(3.0, 5.0),
        noise=drawn_noise if noise is None else float(noise),
    )


def draw_spec(
    seed: int, activation_error: float | None = None, noise: float | None = None
) -> TuningSpec:
    """The landscape of ``seed``; the same seed gives the same one."""
    rng = np.random.default_rng([seed, 0x7E57])
    cluster = draw_cluster(rng)
    model = draw_model(rng, cluster)
    behaviour = draw_behaviour(rng, model, cluster, activation_error, noise)
    return TuningSpec(seed=seed, model=model, cluster=cluster, behaviour=behaviour)


def with_model(spec: TuningSpec, model: ModelShape) -> TuningSpec:
    """The same cluster and stack with another model (for what-if comparisons in tests)."""
    return attrs.evolve(spec, model=model)
