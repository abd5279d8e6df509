"""Peak GPU memory of one training step, as DeepSpeed 0.19.8 lays it out.

Model states per GPU follow ZeRO's partitioning (``stage_1_and_2.py``, ``stage3.py``):
16-bit parameters (full below stage 3, a 1/N partition at stage 3, plus the parameters
under the persistence threshold), 16-bit gradients (full at stages 0-1, a partition from
stage 2), fp32 master weights and Adam's two moments (12 bytes per trainable parameter,
partitioned from stage 1, on the CPU with ``offload_optimizer``), and the buffers the
knobs size: the reduce bucket (``reduce_bucket_size`` elements, two of them with
``overlap_comm`` at stages 1-2, when ``contiguous_gradients``), and at stage 3 the gathered
parameters (the module in use, the prefetch bucket, what ``max_reuse_distance`` keeps for
backward; ``max_live_parameters`` bounds them). The optimizer step's fp32 gradient buffer
is alive only while activations are not, so the peak is the larger of the two phases.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from benchmarks.families.heldout_cluster import Cluster
from benchmarks.families.heldout_models import ModelSpec
from benchmarks.families.heldout_zero import ZeroSettings

OPTIMIZER_BYTES = 12  # fp32 master weight + Adam's exp_avg + exp_avg_sq, per trainable param
FP32_GRAD_BYTES = 4  # the fp32 gradient the optimizer step reads


@attrs.frozen
class Stage3Live:
    """Elements ZeRO-3 holds gathered at the backward's start (the peak)."""

    current: float  # the module or layer being computed
    prefetched: float  # the prefetch bucket, what max_live_parameters leaves room for
    kept: float  # parameters max_reuse_distance keeps for the backward pass

    @property
    def total(self) -> float:
        return self.current + self.prefetched + self.kept


def stage3_live(model: ModelSpec, zero: ZeroSettings) -> Stage3Live:
    """What ZeRO-3's parameter coordinator keeps gathered (elements)."""
    threshold = zero.param_persistence_threshold
    layer, _ = model.layer_gather(threshold)
    current = float(max(layer, model.largest_module))
    room = max(0.0, zero.max_live_parameters - current)
    prefetched = min(float(zero.prefetch_bucket_size), room)
    gathered = model.total_params - model.persistent_numel(threshold)
    # The top layers are reused soonest: a window of D elements covers the last D/2.
    kept = min(zero.max_reuse_distance / 2, gathered / 2, room - prefetched)
    return Stage3Live(current, prefetched, max(0.0, kept))


@attrs.frozen
class MemoryBreakdown:
    """Bytes per GPU of one configuration; :meth:`peak` adds the micro-batch's activations."""

    context: float  # CUDA context, NCCL buffers: outside PyTorch's allocator
    states: float  # model states and knob-sized buffers, alive the whole step
    live: float  # alive during forward/backward besides activations (gathers, grads in flight)
    step: float  # alive during the optimizer step only
    per_sample: float  # activation bytes per sample at the backward peak, fragmentation included

    def peak(self, mbs: np.ndarray) -> np.ndarray:
        """Peak bytes per GPU at each micro-batch size (non-decreasing in ``mbs``)."""
        training = self.live + self.per_sample * np.asarray(mbs, dtype=float)
        return self.context + self.states + np.maximum(training, self.step)

    def max_fit(self, gpu_memory: float) -> int:
        """The largest micro-batch whose peak fits in ``gpu_memory`` bytes (0: none)."""
        fixed = self.context + self.states
        if fixed + self.step > gpu_memory:
            return 0
        return max(0, math.floor((gpu_memory - fixed - self.live) / self.per_sample))


def _reduce_buffers(model: ModelSpec, zero: ZeroSettings) -> float:
    """The contiguous reduce bucket(s) stages 1-3 allocate up front (bytes)."""
    if zero.stage == 0 or not zero.contiguous_gradients:
        return 0.0
    bucket = model.weight_bytes * float(zero.reduce_bucket_size)
    if zero.stage == 3:
        return bucket * (1.5 if zero.overlap_comm else 1.0)  # reduce in flight on its stream
    return bucket * (2.0 if zero.overlap_comm else 1.0)  # double buffer for overlap


def _loose_gradients(model: ModelSpec, zero: ZeroSettings) -> float:
    """Without contiguous_gradients (stages 2-3), a bucket's gradients wait as separate
    tensors until it is reduced (bytes)."""
    if zero.stage < 2 or zero.contiguous_gradients:
        return 0.0
    waiting = min(float(zero.reduce_bucket_size), float(model.trainable_params))
    return model.weight_bytes * waiting * (2.0 if zero.overlap_comm else 1.0)


def model_states(model: ModelSpec, zero: ZeroSettings, slots: int) -> tuple[float, float]:
    """(bytes alive the whole step, bytes of the optimizer step's transients) per GPU."""
    params, trainable = float(model.total_params), float(model.trainable_params)
    b = model.weight_bytes
    if zero.stage == 0:
        # bf16: DeepSpeed's 16-bit wrapper keeps fp32 masters; fp32: torch Adam on the params.
        full = OPTIMIZER_BYTES if model.precision == "bf16" else 8
        return b * params + (b + full) * trainable, FP32_GRAD_BYTES * trainable
    local = trainable / slots
    optimizer = 0.0 if zero.offload_optimizer else OPTIMIZER_BYTES * local
    grads = b * (trainable if zero.stage == 1 else local)
    if zero.stage < 3:
        step = 0.0 if zero.offload_optimizer else FP32_GRAD_BYTES * local
        return b * params + grads + optimizer + _reduce_buffers(model, zero), step
    persistent = b * model.persistent_numel(zero.param_persistence_threshold)
    partitions = 0.0 if zero.offload_param else b * params / slots
    step = 0.0 if zero.offload_optimizer else FP32_GRAD_BYTES * min(zero.sub_group_size, local)
    return partitions + persistent + grads + optimizer + _reduce_buffers(model, zero), step


def memory_breakdown(
    model: ModelSpec, cluster: Cluster, zero: ZeroSettings, fragmentation: float
) -> MemoryBreakdown:
    """Bytes per GPU of ``model`` under ``zero`` on ``cluster``; ``fragmentation`` is the
    landscape's allocator reserve over live activations (e.g. 1.05)."""
    states, step = model_states(model, zero, cluster.slots)
    live = _loose_gradients(model, zero)
    if zero.stage == 3:
        gathered = stage3_live(model, zero).total
        live += model.weight_bytes * (gathered + model.largest_module)  # and its gradient
    loose = zero.stage >= 2 and not zero.contiguous_gradients
    reserve = fragmentation + (0.03 if loose else 0.0)
    reserve += 0.02 if zero.stage == 3 else 0.0
    per_sample = reserve * (model.saved_bytes + model.backward_bytes)
    return MemoryBreakdown(float(cluster.context_bytes), states, live, step, per_sample)
