"""Memory model: device bytes per GPU for each ZeRO stage, and the largest micro-batch that fits.

The profiling trial measures one step of the model and reports ``num_params``,
``trainable_num_params``, ``activation_mem_per_gpu`` (bytes at micro-batch 1) and ``gpu_mem``
(bytes of device memory). From that, memory per GPU is model states plus activations:

* Model states, assuming Adam (as DeepSpeed's own estimators do). With mixed precision
  (fp16/bf16) each trainable parameter costs 2 bytes of low-precision weights, 2 bytes of
  low-precision gradients and 12 bytes of fp32 optimizer state (master weights, momentum,
  variance); in fp32 it costs 4 + 4 + 8. A frozen parameter costs only its weights.
* Partitioning follows the ZeRO paper (Rajbhandari et al., arXiv:1910.02054): each stage splits
  one more kind of state evenly across the ``slots_per_trial`` data-parallel ranks; stage 1 the
  optimizer states, stage 2 also the gradients, stage 3 also the weights.
* Activations grow linearly with the micro-batch size, ``mbs * activation_mem_per_gpu``.

Not modelled: the layer that stage 3 gathers on the fly, communication buckets and transient
copies made during the optimizer step. ``MemoryModel.usable_fraction`` leaves room for them.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

STAGES = (0, 1, 2, 3)

# fp32 optimizer state per trainable parameter with Adam, in bytes. Mixed precision adds an
# fp32 master copy of the weights (4) to momentum and variance (4 + 4); fp32 training updates
# the weights in place, so it needs no master copy.
_ADAM_BYTES_MIXED = 12
_ADAM_BYTES_FP32 = 8

# Reserve 10% of device memory for what the model leaves out: the CUDA context and library
# workspaces (hundreds of MiB), allocator fragmentation, DeepSpeed's reduce/all-gather buckets
# and stage 3's gathered layer. Erring low is deliberate: a trial that runs out of memory costs
# more than one that starts at a slightly smaller micro-batch.
DEFAULT_USABLE_FRACTION = 0.9

STEP_ACTIVATION_FACTOR = 1.5
"""A training step's activation bytes per sample over the profile's ``activation_mem_per_gpu``:
DeepSpeed measures the forward pass at micro-batch 1 only, and the backward pass's
transients, the logits and loss buffers and the allocator's fragmentation come on top
(typically 1.2-2x). The first micro-batch a search tries assumes this."""


def _enabled(section: Any) -> bool:
    # Only a literal JSON true counts: HF's "auto" is resolved later by the Trainer, so here it
    # says nothing about the precision that will actually run.
    return isinstance(section, Mapping) and section.get("enabled") is True


class Precision(enum.Enum):
    """Training precision of the weights and gradients kept on the GPU."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @classmethod
    def from_ds_config(cls, ds_config: Mapping[str, Any]) -> Precision:
        """Precision that a DeepSpeed config selects.

        ``fp16.enabled: true`` gives FP16; ``bf16.enabled: true`` (or the older ``bfloat16``
        section) gives BF16; anything else, including HF's ``"auto"``, gives FP32.

        Raises:
            ValueError: both fp16 and bf16 are enabled, which DeepSpeed itself refuses.
        """
        fp16 = _enabled(ds_config.get("fp16"))
        bf16 = _enabled(ds_config.get("bf16")) or _enabled(ds_config.get("bfloat16"))
        if fp16 and bf16:
            raise ValueError("ds_config enables both fp16 and bf16; enable at most one")
        if fp16:
            return cls.FP16
        return cls.BF16 if bf16 else cls.FP32

    @property
    def bytes_per_param(self) -> int:
        """Bytes per weight (and per gradient) held in this precision: 4 for fp32, else 2."""
        return 4 if self is Precision.FP32 else 2


_PROFILE_KEYS = ("num_params", "trainable_num_params", "activation_mem_per_gpu", "gpu_mem")
_POSITIVE_KEYS = frozenset({"num_params", "gpu_mem"})


def _count(metrics: Mapping[str, Any], key: str) -> int:
    if key not in metrics:
        raise ValueError(f"profiling metrics lack {key!r}")
    value = metrics[key]
    # bool is an int subclass, but True as a byte count can only be a bug upstream.
    if isinstance(value, bool):
        raise ValueError(f"profiling metric {key!r} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        # JSON round trips and metric stores often turn large counts into floats like 1.3e9.
        number = int(float(value))
    else:
        raise ValueError(f"profiling metric {key!r} must be an integer, got {value!r}")
    floor = 1 if key in _POSITIVE_KEYS else 0
    if number < floor:
        kind = "positive" if floor else "non-negative"
        raise ValueError(f"profiling metric {key!r} must be {kind}, got {number}")
    return number


@attrs.frozen
class ModelProfile:
    """What the profiling trial measured: parameter counts and bytes per GPU."""

    num_params: int
    trainable_num_params: int
    activation_mem_per_gpu: int  # bytes of activations per GPU at micro-batch 1
    gpu_mem: int  # bytes of device memory per GPU

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ModelProfile:
        """Build a profile from the profiling trial's metrics; extra keys are ignored.

        Raises:
            ValueError: a key is missing, not a whole number, negative, zero where it must be
                positive (``num_params``, ``gpu_mem``), or ``trainable_num_params`` exceeds
                ``num_params``. The message names the key.
        """
        num, trainable, activation, gpu = (_count(metrics, key) for key in _PROFILE_KEYS)
        if trainable > num:
            raise ValueError(
                f"profiling metric 'trainable_num_params' ({trainable}) exceeds "
                f"'num_params' ({num})"
            )
        return cls(num, trainable, activation, gpu)

    def to_json(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in _PROFILE_KEYS}


@attrs.frozen
class Offload:
    """What DeepSpeed moves to CPU memory.

    ``optimizer`` (ZeRO-Offload, stages 1-3) moves the fp32 optimizer states and, from stage 2
    on, the gradient partitions, which are streamed to the CPU once reduced (arXiv:2101.06840).
    ``param`` (ZeRO-Infinity style, stage 3 only) moves the weights as well.
    """

    optimizer: bool = False
    param: bool = False


def _split(params: int, ranks: int) -> int:
    # Parameters per rank, rounded up: DeepSpeed pads its flat buffers so that every rank owns
    # the same whole number of parameters.
    return -(-params // ranks)


def _positive_int(name: str) -> Callable[[Any, Any, int], None]:
    def check(_instance: Any, _attribute: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    return check


def _fraction(_instance: Any, _attribute: Any, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"usable_fraction must be in (0, 1], got {value!r}")


@attrs.frozen
class MemoryModel:
    """Per-GPU memory of one trial as a function of ZeRO stage, micro-batch and offload.

    All results are bytes per GPU, except micro-batch sizes which are samples per GPU.
    """

    profile: ModelProfile
    slots_per_trial: int = attrs.field(validator=_positive_int("slots_per_trial"))
    precision: Precision = Precision.FP32
    usable_fraction: float = attrs.field(default=DEFAULT_USABLE_FRACTION, validator=_fraction)

    @property
    def usable_bytes(self) -> int:
        """Bytes per GPU that model states plus activations may use."""
        return int(self.profile.gpu_mem * self.usable_fraction)

    def model_state_bytes(self, stage: int, offload: Offload = Offload()) -> int:
        """Bytes per GPU of weights, gradients and Adam states at this stage.

        Raises:
            ValueError: stage is not 0-3, or offload is requested where DeepSpeed has none
                (optimizer offload at stage 0, parameter offload below stage 3).
        """
        _check_stage(stage, offload)
        num, trainable = self.profile.num_params, self.profile.trainable_num_params
        shard, trainable_shard = (
            _split(num, self.slots_per_trial),
            _split(trainable, self.slots_per_trial),
        )
        width = self.precision.bytes_per_param
        adam_width = _ADAM_BYTES_FP32 if self.precision is Precision.FP32 else _ADAM_BYTES_MIXED
        weights = (shard if stage >= 3 else num) * width
        grads = (trainable_shard if stage >= 2 else trainable) * width
        adam = (trainable_shard if stage >= 1 else trainable) * adam_width
        if offload.optimizer:
            adam = 0
            # Stage 1 still holds every gradient until the step; only partitioned ones move.
            if stage >= 2:
                grads = 0
        if offload.param:
            weights = 0
        return weights + grads + adam

    def bytes_per_gpu(self, stage: int, mbs: int, offload: Offload = Offload()) -> int:
        """Bytes per GPU for model states plus activations of ``mbs`` samples per GPU."""
        _check_mbs(mbs)
        return self.model_state_bytes(stage, offload) + mbs * self._activation_bytes

    def fits(self, stage: int, mbs: int, offload: Offload = Offload()) -> bool:
        """Whether ``mbs`` samples per GPU fit in ``usable_bytes``."""
        return self.bytes_per_gpu(stage, mbs, offload) <= self.usable_bytes

    def max_mbs(
        self,
        stage: int,
        offload: Offload = Offload(),
        *,
        reserved_bytes: int = 0,
        activation_factor: float = 1.0,
    ) -> int:
        """Largest micro-batch (samples per GPU) that fits; 0 when even 1 does not.

        ``reserved_bytes``: also kept free (communication buckets); ``activation_factor``:
        the true activation bytes per sample over the profile's (see
        :data:`STEP_ACTIVATION_FACTOR`)."""
        free = self.usable_bytes - self.model_state_bytes(stage, offload) - reserved_bytes
        per_sample = self._activation_bytes * activation_factor
        if float(per_sample).is_integer():  # exact for any size (floats round past 2**53)
            return max(free // int(per_sample), 0)
        return max(int(free // per_sample), 0)

    def max_mbs_per_stage(
        self, stages: Iterable[int], offload: Offload = Offload()
    ) -> dict[int, int]:
        """``max_mbs`` for each stage, keyed by stage."""
        return {stage: self.max_mbs(stage, offload) for stage in stages}

    @property
    def _activation_bytes(self) -> int:
        # A measured 0 means below the profiler's resolution, not free; 1 byte keeps max_mbs
        # finite and consistent with fits().
        return max(self.profile.activation_mem_per_gpu, 1)


def _check_stage(stage: int, offload: Offload) -> None:
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in STAGES:
        raise ValueError(f"ZeRO stage must be one of 0, 1, 2, 3, got {stage!r}")
    if offload.optimizer and stage < 1:
        raise ValueError(f"optimizer offload needs ZeRO stage 1-3, got stage {stage}")
    if offload.param and stage < 3:
        raise ValueError(f"parameter offload needs ZeRO stage 3, got stage {stage}")


def _check_mbs(mbs: int) -> None:
    if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1:
        raise ValueError(f"micro-batch size must be a positive integer, got {mbs!r}")
