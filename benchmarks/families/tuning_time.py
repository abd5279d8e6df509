"""Step time of a trial: compute from FLOPs, ZeRO's collectives, the optimizer, the allocator.

Compute is ``flops_per_token * tokens`` at a share of the GPU's peak that grows with the
tokens of a micro-batch and saturates; the CPU's kernel launches and ZeRO's hooks run
alongside and dominate small micro-batches. Collectives are rings: ``2(n-1)/n`` of the
bytes for an all-reduce, ``(n-1)/n`` for a reduce-scatter or an all-gather, over the
slowest link, plus a fixed cost per call and per ring step (Thakur et al. 2005,
"Optimization of Collective Communication Operations in MPICH"). Which collectives run and
how much of them hides behind compute depends on the stage and the knobs:

- stage 0 all-reduces the gradients after the last backward of a step;
- stages 1 and 2 reduce gradient buckets during backward (stage 1 only in the last
  micro-batch of a step, stage 2 in every one), hidden behind the rest of backward only
  with ``overlap_comm``, then all-gather the updated 16-bit weights;
- stage 3 gathers each module's weights in forward and again in backward (less what it
  kept for reuse), prefetching part of each fetch, and reduce-scatters gradients.

Near the memory limit the PyTorch caching allocator flushes its cache and retries
(DeepSpeed 0.19.8 warns of "pytorch allocator cache flushes"), which slows a step.
Every function takes the micro-batch as a numpy array and is non-decreasing in it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from benchmarks.families.tuning_config import TrialSetup, ZeroSetup
from benchmarks.families.tuning_memory import STAGE0_ALLREDUCE_BUCKET, zero3_layout
from benchmarks.families.tuning_spec import TuningSpec

FloatArray = npt.NDArray[np.float64]

FP32_SPEED_SHARE = 0.45  # fp32 (TF32) matmuls against bf16 ones
ADAM_STEP_BYTES = 34  # bytes read and written per parameter by a fused Adam step
HIDDEN_SHARE = 0.9  # at most this share of a compute phase can hide communication
SINGLE_GPU_CALL_SHARE = 0.3  # a collective on one rank still flattens and launches


def collective_s(spec: TuningSpec, nbytes: float, calls: float, *, allreduce: bool) -> float:
    """Seconds of ``calls`` ring collectives moving ``nbytes`` in all."""
    cluster, call_s = spec.cluster, spec.behaviour.collective_call_s
    n = cluster.slots
    if n == 1:
        return calls * call_s * SINGLE_GPU_CALL_SHARE
    steps = 2 * (n - 1) if allreduce else n - 1
    return steps / n * nbytes / cluster.bus_bytes_per_s + calls * (
        call_s + steps * cluster.ring_hop_s
    )


def compute_s(spec: TuningSpec, setup: TrialSetup, mbs: FloatArray) -> FloatArray:
    """GPU seconds of one micro-batch's forward and backward, without communication."""
    model, beh = spec.model, spec.behaviour
    tokens = mbs * model.seq
    share = beh.peak_efficiency * tokens / (tokens + beh.half_tokens)
    speed = spec.cluster.gpu.peak_flops * share
    if setup.weight_bytes > 2:
        speed = speed * FP32_SPEED_SHARE
    result: FloatArray = tokens * model.flops_per_token() / speed
    return result


def cpu_s(spec: TuningSpec, zero: ZeroSetup) -> float:
    """CPU seconds per micro-batch: kernel launches and ZeRO's hooks."""
    model, beh = spec.model, spec.behaviour
    launches = beh.launch_s_fixed + model.layers * beh.launch_s_per_layer
    tensors = len(model.layer_tensors) * model.layers + len(model.global_tensors)
    if zero.stage == 2 or (zero.stage == 1 and (zero.contiguous_gradients or zero.overlap_comm)):
        launches += tensors * beh.grad_hook_s
    if zero.stage == 3:
        launches += 2 * zero3_layout(model, zero).modules_per_pass * beh.module_hook_s
    return launches


def overlaps(spec: TuningSpec, zero: ZeroSetup) -> bool:
    """Whether NCCL kernels run during compute (and slow it)."""
    if spec.cluster.slots == 1:
        return False
    return zero.stage == 3 or (zero.stage in (1, 2) and zero.overlap_comm)


def micro_batch_s(spec: TuningSpec, setup: TrialSetup, mbs: FloatArray) -> FloatArray:
    """Seconds of one micro-batch's forward and backward: GPU and CPU work, whichever
    dominates (a smooth maximum, as launches partly overlap kernels)."""
    gpu = compute_s(spec, setup, mbs)
    if overlaps(spec, setup.zero):
        gpu = gpu * (1.0 + spec.behaviour.overlap_slowdown)
    if setup.zero.stage == 3:
        gpu = gpu * (1.0 + spec.behaviour.zero3_overhead)
    cpu = cpu_s(spec, setup.zero)
    result: FloatArray = (gpu**3 + cpu**3) ** (1.0 / 3.0)
    return result


def backward_share(spec: TuningSpec) -> float:
    """Share of a micro-batch spent in backward (with recompute when checkpointing)."""
    return 0.75 if spec.model.checkpointing else 2.0 / 3.0


def bucket_pipeline_s(per_bucket_s: float, buckets: int, window: FloatArray) -> FloatArray:
    """Exposed seconds of ``buckets`` equal reductions launched as their buckets fill,
    evenly over a backward of ``window`` seconds, on one communication stream: the last
    bucket always, and the backlog when reducing is slower than filling."""
    backlog = window / buckets + buckets * per_bucket_s - window
    result: FloatArray = np.maximum(per_bucket_s, backlog)
    return result


def _bucket_reduce_s(spec: TuningSpec, setup: TrialSetup, elements: int, stage3: bool) -> float:
    """Seconds to reduce one gradient bucket (of ``elements`` in all, bucketed)."""
    zero, beh = setup.zero, spec.behaviour
    buckets = math.ceil(elements / zero.reduce_bucket_size)
    nbytes = setup.weight_bytes * elements / buckets
    if stage3 or zero.reduce_scatter:
        inefficiency = 1.0 if stage3 else beh.reduce_scatter_inefficiency
        seconds = inefficiency * collective_s(spec, nbytes, 1, allreduce=False)
        if not stage3:
            # one reduce per rank partition the bucket spans, not one ring
            seconds += beh.collective_call_s * 0.25 * math.log2(spec.cluster.slots)
    else:
        seconds = collective_s(spec, nbytes, 1, allreduce=True)
    copies = 1 if zero.contiguous_gradients else 2  # into the buffer / flatten and back
    seconds += copies * nbytes / spec.cluster.gpu.hbm_bytes_per_s
    if not zero.contiguous_gradients:
        seconds += 0.5 * beh.collective_call_s  # allocator churn of loose gradients
    return seconds


def gradient_reduce_s(
    spec: TuningSpec, setup: TrialSetup, elements: int, backward: FloatArray, stage3: bool
) -> FloatArray:
    """Exposed seconds of one backward's bucketed gradient reduction."""
    zero = setup.zero
    buckets = math.ceil(elements / zero.reduce_bucket_size)
    per_bucket = _bucket_reduce_s(spec, setup, elements, stage3)
    if zero.overlap_comm and spec.cluster.slots > 1:
        return bucket_pipeline_s(per_bucket, buckets, backward)
    return np.full_like(backward, buckets * per_bucket)


def weight_gather_s(spec: TuningSpec, setup: TrialSetup) -> float:
    """Seconds of stage 1/2's all-gather of the updated 16-bit weights after a step."""
    zero, p = setup.zero, spec.model.num_params
    calls = math.ceil(p / zero.allgather_bucket_size)
    nbytes = float(setup.weight_bytes * p)
    if not zero.allgather_partitions:  # a broadcast per rank instead of one all-gather
        return collective_s(spec, 1.25 * nbytes, calls * spec.cluster.slots, allreduce=False)
    return collective_s(spec, nbytes, calls, allreduce=False)


def optimizer_s(spec: TuningSpec, setup: TrialSetup) -> float:
    """Seconds of the optimizer step on this rank's parameters (GPU or CPU Adam)."""
    zero, cluster, p = setup.zero, spec.cluster, spec.model.num_params
    local = p if zero.stage == 0 else p / cluster.slots
    seconds = spec.behaviour.step_overhead_s
    if zero.offload_optimizer:
        # gradients down (stage 1 sends all of them here; 2 and 3 during backward), weights up
        down = setup.weight_bytes if zero.stage == 1 else 0
        transfers = (down + setup.weight_bytes) * local
        return (
            seconds + local / cluster.cpu_adam_params_per_s + transfers / cluster.pcie_bytes_per_s
        )
    return seconds + ADAM_STEP_BYTES * local / cluster.gpu.hbm_bytes_per_s


def stage3_exchange_s(
    spec: TuningSpec, setup: TrialSetup, forward: FloatArray, backward: FloatArray
) -> FloatArray:
    """Exposed seconds of one ZeRO-3 micro-batch's gathers and gradient reduce-scatter."""
    zero, w, n = setup.zero, setup.weight_bytes, spec.cluster.slots
    layout = zero3_layout(spec.model, zero)
    refetched = layout.gathered - layout.retained
    calls_bwd = layout.fetches_per_pass * refetched / max(1, layout.gathered)
    gather_f = collective_s(spec, w * layout.gathered, layout.fetches_per_pass, allreduce=False)
    gather_b = collective_s(spec, w * refetched, calls_bwd, allreduce=False)
    if zero.offload_param:  # every fetch first copies the partition from host memory
        gather_f += w * layout.gathered / n / spec.cluster.pcie_bytes_per_s
        gather_b += w * refetched / n / spec.cluster.pcie_bytes_per_s
    share = layout.prefetch_share
    exposed_f = gather_f - np.minimum(share * gather_f, HIDDEN_SHARE * forward)
    buckets = math.ceil(layout.gathered / zero.reduce_bucket_size)
    per_bucket = _bucket_reduce_s(spec, setup, layout.gathered, stage3=True)
    if zero.overlap_comm and n > 1:
        hidden_b = bucket_pipeline_s(per_bucket, buckets, backward - share * gather_b)
        exposed_b = (1 - share) * gather_b + np.maximum(hidden_b, share * gather_b - backward)
    else:
        exposed_b = (
            (1 - share) * gather_b
            + np.maximum(0.0, share * gather_b - HIDDEN_SHARE * backward)
            + buckets * per_bucket
        )
    persistent = collective_s(spec, w * layout.persistent, 1, allreduce=True)
    # with the optimizer on the host, each micro-batch's gradient partition goes down,
    # mostly behind backward
    offload = (
        0.3 * partition_transfer_s(spec, layout.gathered, w) if zero.offload_optimizer else 0.0
    )
    result: FloatArray = exposed_f + exposed_b + persistent + offload
    return result


def partition_transfer_s(spec: TuningSpec, elements: int, bytes_per_element: float) -> float:
    """Seconds to move one rank's partition of ``elements`` between host and GPU."""
    return bytes_per_element * elements / spec.cluster.slots / spec.cluster.pcie_bytes_per_s


def flush_penalty(spec: TuningSpec, stage: int, peak_share: FloatArray) -> FloatArray:
    """Relative step-time cost of allocator cache flushes at a peak/capacity share."""
    beh = spec.behaviour
    threshold = beh.flush_headroom * (1.5 if stage == 3 else 1.0)  # stage 3 churns more
    pressure = np.clip((threshold - (1.0 - peak_share)) / threshold, 0.0, 1.0)
    result: FloatArray = beh.flush_cost * pressure**beh.flush_power
    return result


def step_s(
    spec: TuningSpec, setup: TrialSetup, mbs: FloatArray, peak_share: FloatArray
) -> FloatArray:
    """Seconds of one optimizer step (``gas`` micro-batches) at each micro-batch size."""
    zero, gas, p = setup.zero, setup.gas, spec.model.num_params
    micro = micro_batch_s(spec, setup, mbs)
    backward = micro * backward_share(spec)
    after = optimizer_s(spec, setup)
    if zero.stage == 0:
        calls = math.ceil(p / STAGE0_ALLREDUCE_BUCKET)
        after += collective_s(spec, setup.weight_bytes * p, calls, allreduce=True)
        total = gas * micro
    elif zero.stage == 1:
        total = gas * micro + gradient_reduce_s(spec, setup, p, backward, stage3=False)
        after += weight_gather_s(spec, setup)
    elif zero.stage == 2:
        reduce = gradient_reduce_s(spec, setup, p, backward, stage3=False)
        if zero.offload_optimizer:  # each micro-batch's partition goes to host memory
            reduce = reduce + 0.3 * partition_transfer_s(spec, p, setup.weight_bytes)
        total = gas * (micro + reduce)
        after += weight_gather_s(spec, setup)
    else:
        total = gas * (micro + stage3_exchange_s(spec, setup, micro - backward, backward))
    result: FloatArray = (total + after) * (1.0 + flush_penalty(spec, zero.stage, peak_share))
    return result
