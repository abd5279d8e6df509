"""Seconds per training step, vectorised over micro-batch sizes.

Compute is a roofline of FLOPs at a size-dependent fraction of peak and the weights' HBM
traffic, plus memory-bound element-wise kernels, bounded below by the CPU's launch (and at
stage 3, hook) overhead. Collectives cost a per-call latency plus bytes over the bus
bandwidth (ring algorithm: (N-1)/N of the bytes for reduce-scatter and all-gather, twice
that for all-reduce). Gradient buckets can overlap the backward pass only with
``overlap_comm`` and only once they fill: the last bucket is always exposed. ZeRO-3 gathers
each layer's weights in forward and again in backward; the prefetch bucket hides a gather
behind the previous layer's compute when it holds a layer. Stage 1 and stage 0 reduce once
per optimizer step, stages 2 and 3 at every micro-step (DeepSpeed 0.19.8).
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.families.heldout_cluster import Cluster
from benchmarks.families.heldout_memory import stage3_live
from benchmarks.families.heldout_models import ModelSpec
from benchmarks.families.heldout_zero import ZeroSettings

Array = np.ndarray
STAGE0_BUCKET = 500_000_000  # elements per all-reduce of DeepSpeed's stage-0 gradients
LOCAL_CALL = 0.3  # share of a collective call's cost left when there is no peer


def _soft_max(a: Array, b: Array | float, power: float) -> Array:
    return np.asarray((a**power + b**power) ** (1.0 / power))


def compute_seconds(
    model: ModelSpec, cluster: Cluster, zero: ZeroSettings, mbs: Array, knee: tuple[float, float]
) -> Array:
    """Forward plus backward time of one micro-step (s); ``knee``: (micro-batch, slowdown per
    doubling above it) of the model's cache effects."""
    peak = cluster.gpu.peak_flops * (1.0 if model.precision == "bf16" else 0.5)  # fp32: TF32
    rows = mbs * model.tokens
    half = cluster.half_rows * 128 * np.sqrt(4096 / model.width)
    efficiency = cluster.gemm_efficiency * model.gemm_efficiency * rows / (rows + half)
    flops = (model.fwd_flops + model.bwd_flops) * mbs / (peak * efficiency)
    weights = 3 * model.weight_bytes * model.total_params / cluster.gpu.hbm
    elementwise = mbs * model.traffic_bytes / cluster.gpu.hbm
    knee_mbs, slope = knee
    cache = 1.0 + slope * np.log2(np.maximum(1.0, mbs / knee_mbs))
    gpu = (_soft_max(flops, weights, 3.0) + elementwise) * cache
    cpu = model.module_count * 3 * cluster.launch_s
    busy = _soft_max(gpu, cpu, 4.0)
    if zero.stage == 3:  # fetch/release hooks wait on gathers: on the critical path
        busy = busy + model.module_count * 2 * cluster.hook_s
    return busy


def _call_s(cluster: Cluster, n_bytes: float, volume: float) -> float:
    """One collective call over ``n_bytes`` per GPU, ``volume`` x (N-1)/N of them sent."""
    n = cluster.slots
    if n == 1:
        return LOCAL_CALL * cluster.call_latency
    return cluster.call_latency + n_bytes * volume * (n - 1) / n / cluster.bus


def reduce_seconds(
    model: ModelSpec, cluster: Cluster, zero: ZeroSettings, backward: Array
) -> tuple[Array, Array]:
    """(exposed, overlapped) seconds of one reduction of all gradients in buckets, given the
    backward pass's duration (s) it may overlap."""
    trainable = float(model.trainable_params)
    bucket = STAGE0_BUCKET if zero.stage == 0 else zero.reduce_bucket_size
    calls = max(1, math.ceil(trainable / bucket))
    n_bytes = model.weight_bytes * trainable / calls
    all_reduce = zero.stage == 0 or (zero.stage < 3 and not zero.reduce_scatter)
    per_call = _call_s(cluster, n_bytes, 2.0 if all_reduce else 1.0)
    if zero.stage in (1, 2) and not all_reduce and cluster.slots > 1:
        # reduce_scatter: the bucket is reduced rank slice by rank slice (more, smaller ops)
        per_call += 0.5 * (cluster.slots - 1) * cluster.call_latency
    if zero.stage >= 2 and not zero.contiguous_gradients:
        per_call += 2 * n_bytes / cluster.gpu.hbm + 30e-6  # flatten each bucket anew
    total = calls * per_call
    if zero.stage == 0 or not zero.overlap_comm:
        return np.full_like(backward, total), np.zeros_like(backward)
    exposed = np.maximum(per_call, total - backward * (1.0 - 1.0 / calls))
    return exposed, total - exposed


def allgather_seconds(model: ModelSpec, cluster: Cluster, zero: ZeroSettings) -> float:
    """Stages 1-2: gathering the updated 16-bit partitions after the optimizer step (s)."""
    if zero.stage not in (1, 2):
        return 0.0
    params = float(model.total_params)
    calls = max(1, math.ceil(params / max(1, zero.allgather_bucket_size)))
    n_bytes = model.weight_bytes * params / calls
    if zero.allgather_partitions:
        return calls * _call_s(cluster, n_bytes, 1.0)
    # A broadcast from every rank instead: N calls per bucket, less efficient on the wire.
    return calls * cluster.slots * _call_s(cluster, 1.25 * n_bytes / cluster.slots, 1.0)


def _gather_s(cluster: Cluster, zero: ZeroSettings, b: int, numel: float, fetches: float) -> float:
    """One ZeRO-3 gather of ``numel`` elements in ``fetches`` module fetches (s)."""
    n = cluster.slots
    latency = cluster.call_latency * (LOCAL_CALL if n == 1 else 1.0)
    seconds = fetches * latency + b * numel * (n - 1) / n / cluster.bus
    seconds += 2 * b * numel / cluster.gpu.hbm  # gathered shards copied into the flat buffer
    if zero.offload_param:
        seconds += b * numel / n / cluster.pcie  # the partition comes from host memory first
    return seconds


def _exposed_gather(gather: float, compute: Array, depth: float, hiding: float) -> Array:
    """A layer's gather left exposed when the prefetch reaches ``depth`` layers ahead and
    hides at most ``hiding`` of what overlaps the previous layer's compute."""
    return np.asarray(gather - hiding * min(1.0, depth) * np.minimum(gather, compute))


def gather_seconds(
    model: ModelSpec, cluster: Cluster, zero: ZeroSettings, forward: Array, backward: Array
) -> Array:
    """Stage 3: exposed parameter gathers of one micro-step (forward and backward, s)."""
    if zero.stage != 3:
        return np.zeros_like(forward)
    threshold, b = zero.param_persistence_threshold, model.weight_bytes
    layer, layer_fetches = model.layer_gather(threshold)
    outer, outer_fetches = model.outer_gather(threshold)
    live = stage3_live(model, zero)
    per_layer = _gather_s(cluster, zero, b, layer, layer_fetches)
    depth = live.prefetched / layer if layer else 1.0
    hiding = cluster.prefetch_hiding
    exposed = model.layers * _exposed_gather(per_layer, forward / model.layers, depth, hiding)
    if model.trainable_layers:
        regathered = max(0.0, model.trainable_layers - (live.kept / layer if layer else 0.0))
        per_backward = backward / model.trainable_layers
        exposed = exposed + regathered * _exposed_gather(per_layer, per_backward, depth, hiding)
    return exposed + 2 * _gather_s(cluster, zero, b, outer, outer_fetches)


def optimizer_seconds(model: ModelSpec, cluster: Cluster, zero: ZeroSettings) -> float:
    """The optimizer step on this GPU's share of the trainable parameters (s)."""
    local = float(model.trainable_params) / (1 if zero.stage == 0 else cluster.slots)
    if zero.offload_optimizer:
        ranks_per_node = min(cluster.slots, 8)
        cpu = local * ranks_per_node / cluster.cpu_adam
        transfer = (4 + model.weight_bytes) * local / cluster.pcie  # grads down, params up
        hidden = 0.5 if zero.overlap_comm and zero.stage >= 2 else 0.0
        return cpu + (1 - hidden) * transfer + 5e-3
    seconds = 30 * local / cluster.gpu.hbm + 2e-3  # fused Adam: ~30 bytes moved per element
    if zero.stage == 3:
        seconds += 1e-3 * math.ceil(local / max(1, zero.sub_group_size))
    return seconds


def step_seconds(
    model: ModelSpec,
    cluster: Cluster,
    zero: ZeroSettings,
    mbs: Array,
    gas: int,
    *,
    knee: tuple[float, float],
    flush: Array,
) -> Array:
    """One optimizer step of ``gas`` micro-steps at each micro-batch size (s); ``flush`` is
    the allocator's slowdown factor (>= 1) at each size."""
    compute = compute_seconds(model, cluster, zero, mbs, knee) * flush
    backward = compute * model.bwd_flops / (model.fwd_flops + model.bwd_flops)
    forward = compute - backward
    exposed, overlapped = reduce_seconds(model, cluster, zero, backward)
    reduction = exposed + cluster.overlap_interference * overlapped
    micro = compute + gather_seconds(model, cluster, zero, forward, backward)
    bookkeeping = model.tensor_count * cluster.grad_hook_s
    if zero.stage >= 2:  # gradients are reduced at every micro-step
        micro = micro + reduction
        reduction = np.zeros_like(micro)
    if zero.stage == 2:  # a hook per gradient tensor: bucket it, copy, release (in backward)
        micro = micro + bookkeeping
    after = allgather_seconds(model, cluster, zero) + optimizer_seconds(model, cluster, zero)
    if zero.stage == 1:  # one loop over the gradients after backward
        after += 0.3 * bookkeeping
    return np.asarray(gas * micro + reduction + after)
