"""Peak GPU memory of a trial, from DeepSpeed 0.19.8's accounting of ZeRO model states.

Per parameter, mixed-precision Adam keeps 16-bit weights and gradients, fp32 master
weights and two fp32 moments; ZeRO partitions the optimizer states (stage 1), the
gradients too (stage 2) and the weights too (stage 3) across the data-parallel ranks
(Rajbhandari et al. 2020, "ZeRO", arXiv:1910.02054). On top come DeepSpeed's buffers:
the gradient bucket (``reduce_bucket_size`` elements, two of them with ``overlap_comm``),
the fp32 gradient partition built at the optimizer step, and at stage 3 the gathered
parameters (current module plus prefetch, bounded by ``stage3_max_live_parameters``, plus
those kept for reuse within ``stage3_max_reuse_distance``) and the small parameters that
stay whole (``stage3_param_persistence_threshold``). Memory is affine in the micro-batch
for a fixed config, so the largest micro-batch that fits has a closed form.
"""

from __future__ import annotations

import functools
import math

import attrs
import numpy as np
import numpy.typing as npt

from benchmarks.families.tuning_config import TrialSetup, ZeroSetup
from benchmarks.families.tuning_spec import GIB, ModelShape, TuningSpec

FloatArray = npt.NDArray[np.float64]

ADAM_MOMENT_BYTES = 8  # two fp32 moments per parameter
FP32_BYTES = 4
STAGE0_ALLREDUCE_BUCKET = 500_000_000  # DeepSpeed's allreduce_bucket_size default, elements
STAGE3_SUB_GROUP = 1_000_000_000  # DeepSpeed's sub_group_size default, elements
NCCL_BYTES_PER_DOUBLING = 0.06 * GIB  # NCCL channel buffers grow with the communicator


@attrs.frozen
class Zero3Layout:
    """How ZeRO-3 handles this model's parameters under one config (elements, counts)."""

    persistent: int  # parameters kept whole on every rank
    gathered: int  # parameters partitioned and gathered when used
    fetches_per_pass: int  # modules with a partitioned parameter: one all-gather each
    modules_per_pass: int  # modules whose hooks run in each pass
    live: int  # gathered parameters alive at the peak (working set plus reuse)
    retained: int  # parameters gathered in forward and kept for backward
    prefetch_share: float  # share of a fetch that prefetching can start early


def zero3_layout(model: ModelShape, zero: ZeroSetup) -> Zero3Layout:
    """Persistence, fetch count and the live working set of ZeRO-3 for this config."""
    return _zero3_layout(
        model,
        zero.param_persistence_threshold,
        zero.prefetch_bucket_size,
        zero.max_live_parameters,
        zero.max_reuse_distance,
    )


@functools.lru_cache(maxsize=4096)
def _zero3_layout(
    model: ModelShape, threshold: int, prefetch_bucket: int, max_live: int, max_reuse: int
) -> Zero3Layout:
    fetches = 0
    persistent = 0
    for tensors, copies in ((model.layer_tensors, model.layers), (model.global_tensors, 1)):
        partitioned: dict[str, bool] = {}
        for module, numel in tensors:
            small = numel < threshold
            persistent += numel * copies if small else 0
            partitioned[module] = partitioned.get(module, False) or not small
        fetches += copies * sum(partitioned.values())
    gathered = model.num_params - persistent
    module_count = model.layers * len({m for m, _ in model.layer_tensors}) + len(
        {m for m, _ in model.global_tensors}
    )
    linear = model.mean_linear
    prefetch = min(prefetch_bucket, max(0, max_live - linear))
    working = max(model.largest_module, min(max_live, linear + prefetch))
    retained = min(max_reuse // 2, max_live, gathered)
    live = max(model.largest_module, min(max_live, working + retained))
    return Zero3Layout(
        persistent=persistent,
        gathered=gathered,
        fetches_per_pass=fetches,
        modules_per_pass=module_count,
        live=min(live, gathered),
        retained=retained,
        prefetch_share=prefetch / (prefetch + linear),
    )


@attrs.frozen
class MemoryUse:
    """Peak bytes of one GPU: affine in the micro-batch during forward/backward, plus the
    optimizer step's own peak."""

    fixed_bytes: float  # forward/backward peak without the activations
    step_bytes: float  # peak during the optimizer step (activations freed)
    per_sample_bytes: float  # activations and transients of one more sample

    def peak(self, mbs: FloatArray) -> FloatArray:
        """Peak bytes at each micro-batch size."""
        return np.maximum(self.fixed_bytes + mbs * self.per_sample_bytes, self.step_bytes)

    def max_fit(self, capacity_bytes: float) -> int:
        """The largest micro-batch whose peak is within ``capacity_bytes``; 0 if none."""
        if self.step_bytes > capacity_bytes:
            return 0
        return max(0, math.floor((capacity_bytes - self.fixed_bytes) / self.per_sample_bytes))


def _bucket_bytes(zero: ZeroSetup, elements: int, weight_bytes: int, fragmentation: float) -> float:
    """The gradient bucket: preallocated (doubled with overlap_comm) when contiguous, else
    the loose gradients waiting for their bucket, fragmented."""
    bucket = weight_bytes * min(zero.reduce_bucket_size, elements)
    if zero.contiguous_gradients:
        return float(bucket * (2 if zero.overlap_comm else 1))
    return bucket * (1.0 + fragmentation)


def _states(spec: TuningSpec, setup: TrialSetup) -> tuple[float, float]:
    """(bytes held through forward/backward, extra bytes at the optimizer step)."""
    zero, w = setup.zero, float(setup.weight_bytes)
    p, n = float(spec.model.num_params), spec.cluster.slots
    mixed = w < FP32_BYTES  # fp32 master weights, and fp32 gradients at the step
    master = FP32_BYTES if mixed else 0.0
    on_gpu = not zero.offload_optimizer
    frag = spec.behaviour.grad_fragmentation
    grad_frag = 1.0 if zero.contiguous_gradients else 1.0 + frag
    if zero.stage == 0:
        held = (2 * w + master + ADAM_MOMENT_BYTES) * p
        step = (FP32_BYTES * p if mixed else 0.0) + w * min(STAGE0_ALLREDUCE_BUCKET, p)
        return held, step
    if zero.stage in (1, 2):
        grads = w * p if zero.stage == 1 else w * p / n * grad_frag
        optimizer = (master + ADAM_MOMENT_BYTES) * p / n if on_gpu else 0.0
        held = w * p + grads + optimizer + _bucket_bytes(zero, int(p), setup.weight_bytes, frag)
        fp32_grads = FP32_BYTES * p / n if mixed and on_gpu else 0.0
        return held, fp32_grads + w * min(zero.allgather_bucket_size, p)
    layout = zero3_layout(spec.model, zero)
    part = layout.gathered / n
    params = (0.0 if zero.offload_param else w * part) + 2 * w * layout.persistent + w * layout.live
    grads = w * part * grad_frag if on_gpu else 0.0
    optimizer = (master + ADAM_MOMENT_BYTES) * part if on_gpu else 0.0
    bucket = _bucket_bytes(zero, layout.gathered, setup.weight_bytes, frag)
    step = FP32_BYTES * min(part, STAGE3_SUB_GROUP) if mixed and on_gpu else 0.0
    return params + grads + optimizer + bucket, step


def memory_use(spec: TuningSpec, setup: TrialSetup) -> MemoryUse:
    """Peak memory of one GPU for a trial's config (bytes); the micro-batch is left free."""
    context = spec.behaviour.context_bytes + NCCL_BYTES_PER_DOUBLING * math.log2(spec.cluster.slots)
    held, step_extra = _states(spec, setup)
    activations = spec.per_sample_bytes() * setup.weight_bytes / 2
    return MemoryUse(
        fixed_bytes=context + held,
        step_bytes=context + held + step_extra,
        per_sample_bytes=activations,
    )
