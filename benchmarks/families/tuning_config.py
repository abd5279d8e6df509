"""A trial's ds_config as the tuning landscapes read it, with DeepSpeed 0.19.8's defaults.

Only what changes memory or speed is kept. A knob the config leaves out takes the default
of DeepSpeed 0.19.8's ``DeepSpeedZeroConfig`` (``overlap_comm`` is True at stage 3 only);
a knob DeepSpeed ignores at a stage is ignored here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

DEFAULT_END_PROFILE_STEP = 5

# Knobs DeepSpeed 0.19.8 reads at each stage (its names; stage-3 ones also without prefix).
RELEVANT_KNOBS: dict[int, frozenset[str]] = {
    0: frozenset(),
    1: frozenset(
        {
            "reduce_bucket_size",
            "allgather_bucket_size",
            "overlap_comm",
            "reduce_scatter",
            "contiguous_gradients",
            "allgather_partitions",
        }
    ),
    3: frozenset(
        {
            "reduce_bucket_size",
            "overlap_comm",
            "contiguous_gradients",
            "stage3_prefetch_bucket_size",
            "stage3_param_persistence_threshold",
            "stage3_max_live_parameters",
            "stage3_max_reuse_distance",
        }
    ),
}
RELEVANT_KNOBS[2] = RELEVANT_KNOBS[1]

_UNPREFIXED = {
    "prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "param_persistence_threshold": "stage3_param_persistence_threshold",
    "max_live_parameters": "stage3_max_live_parameters",
    "max_reuse_distance": "stage3_max_reuse_distance",
}


@attrs.frozen
class ZeroSetup:
    """The ``zero_optimization`` block, every knob resolved (sizes in elements)."""

    stage: int = 0
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    overlap_comm: bool = False
    reduce_scatter: bool = True
    contiguous_gradients: bool = True
    allgather_partitions: bool = True
    prefetch_bucket_size: int = 50_000_000
    param_persistence_threshold: int = 100_000
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    offload_optimizer: bool = False
    offload_param: bool = False


@attrs.frozen
class TrialSetup:
    """What one trial runs: its ZeRO block, micro-batch, accumulation and precision."""

    zero: ZeroSetup
    mbs: int
    gas: int
    weight_bytes: int  # 2 for bf16/fp16 mixed precision, 4 for fp32 training
    end_profile_step: int


def _offloaded(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("device", "none") not in ("none", None)


def zero_setup(block: Mapping[str, Any]) -> ZeroSetup:
    """A ``zero_optimization`` block resolved against DeepSpeed's defaults.

    Raises ``ValueError`` for a stage outside 0-3 (DeepSpeed refuses it)."""
    stage = int(block.get("stage", 0))
    if stage not in RELEVANT_KNOBS:
        raise ValueError(f"zero_optimization.stage must be 0-3, got {stage}")
    knobs = {_UNPREFIXED.get(k, k): v for k, v in block.items()}
    relevant = RELEVANT_KNOBS[stage]

    def number(name: str, default: int) -> int:
        return int(knobs[name]) if name in relevant and name in knobs else default

    def flag(name: str, default: bool) -> bool:
        return bool(knobs[name]) if name in relevant and name in knobs else default

    return ZeroSetup(
        stage=stage,
        reduce_bucket_size=max(1, number("reduce_bucket_size", 500_000_000)),
        allgather_bucket_size=max(1, number("allgather_bucket_size", 500_000_000)),
        overlap_comm=flag("overlap_comm", stage == 3),
        reduce_scatter=flag("reduce_scatter", True),
        contiguous_gradients=flag("contiguous_gradients", True),
        allgather_partitions=flag("allgather_partitions", True),
        prefetch_bucket_size=number("stage3_prefetch_bucket_size", 50_000_000),
        param_persistence_threshold=number("stage3_param_persistence_threshold", 100_000),
        max_live_parameters=number("stage3_max_live_parameters", 1_000_000_000),
        max_reuse_distance=number("stage3_max_reuse_distance", 1_000_000_000),
        offload_optimizer=stage >= 1 and _offloaded(block.get("offload_optimizer")),
        offload_param=stage == 3 and _offloaded(block.get("offload_param")),
    )


def _batch(ds_config: Mapping[str, Any], slots: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) as DeepSpeed resolves them from any two of three."""
    raw_mbs = ds_config.get("train_micro_batch_size_per_gpu")
    raw_gas = ds_config.get("gradient_accumulation_steps")
    raw_tbs = ds_config.get("train_batch_size")
    tbs = None if raw_tbs is None else int(raw_tbs)
    if raw_mbs is None:
        if tbs is None:
            raise ValueError(
                "ds_config sets neither train_micro_batch_size_per_gpu nor train_batch_size"
            )
        gas = int(raw_gas or 1)
        mbs = tbs // (gas * slots)
    else:
        mbs = int(raw_mbs)
        if raw_gas is not None:
            gas = int(raw_gas)
        else:
            gas = max(1, tbs // (mbs * slots)) if tbs is not None and mbs > 0 else 1
    if mbs < 1 or gas < 1:
        raise ValueError(f"micro-batch {mbs} and accumulation steps {gas} must be positive")
    if tbs is not None and tbs != mbs * gas * slots:
        raise ValueError(
            f"train_batch_size {tbs} != micro-batch {mbs} x accumulation {gas} x {slots} GPUs"
        )
    return mbs, gas


def _enabled(ds_config: Mapping[str, Any], key: str) -> bool:
    section = ds_config.get(key)
    return isinstance(section, Mapping) and bool(section.get("enabled", False))


def trial_setup(ds_config: Mapping[str, Any], slots: int) -> TrialSetup:
    """A full ds_config as a trial on ``slots`` GPUs runs it; ``ValueError`` where DeepSpeed
    would refuse the batch sizes or the stage."""
    mbs, gas = _batch(ds_config, slots)
    half = _enabled(ds_config, "bf16") or _enabled(ds_config, "fp16")
    autotuning = ds_config.get("autotuning")
    end = DEFAULT_END_PROFILE_STEP
    if isinstance(autotuning, Mapping) and "end_profile_step" in autotuning:
        end = max(1, int(autotuning["end_profile_step"]))
    return TrialSetup(
        zero=zero_setup(ds_config.get("zero_optimization") or {}),
        mbs=mbs,
        gas=gas,
        weight_bytes=2 if half else 4,
        end_profile_step=end,
    )
