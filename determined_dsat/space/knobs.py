"""The ZeRO knobs worth searching, per stage, and offload options.

Values are DeepSpeed's (0.19.8) defaults plus one or two settings on either side
that commonly change throughput. Every key is accepted by DeepSpeed's
``DeepSpeedZeroConfig`` (which forbids unknown keys), at every stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Knobs = Mapping[str, Sequence[Any]]

_BUCKETS = (50_000_000, 200_000_000, 500_000_000, 1_000_000_000)

_STAGE_1: dict[str, tuple[Any, ...]] = {
    "reduce_bucket_size": _BUCKETS,
    "allgather_bucket_size": _BUCKETS,
}
_STAGE_2: dict[str, tuple[Any, ...]] = {
    **_STAGE_1,
    "overlap_comm": (True, False),
    "reduce_scatter": (True, False),
    "contiguous_gradients": (True, False),
}
_STAGE_3: dict[str, tuple[Any, ...]] = {
    "reduce_bucket_size": _BUCKETS,
    "overlap_comm": (True, False),
    "contiguous_gradients": (True, False),
    "stage3_prefetch_bucket_size": (10_000_000, 50_000_000, 200_000_000),
    "stage3_param_persistence_threshold": (10_000, 100_000, 1_000_000),
    "stage3_max_live_parameters": (100_000_000, 1_000_000_000),
    "stage3_max_reuse_distance": (100_000_000, 1_000_000_000),
}

ZERO_KNOBS: dict[int, dict[str, tuple[Any, ...]]] = {0: {}, 1: _STAGE_1, 2: _STAGE_2, 3: _STAGE_3}

CPU_OFFLOAD = {"device": "cpu", "pin_memory": True}


def knobs_for_stage(
    stage: int, offload_optimizer: bool, offload_param: bool
) -> dict[str, tuple[Any, ...]]:
    """The knob table of one stage, with the offload choices the user opted into."""
    if stage not in ZERO_KNOBS:
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    table = dict(ZERO_KNOBS[stage])
    if offload_optimizer and stage >= 1:
        table["offload_optimizer"] = (None, CPU_OFFLOAD)
    if offload_param and stage == 3:
        table["offload_param"] = (None, CPU_OFFLOAD)
    return table


def sample_zero_config(
    stage: int, table: Mapping[str, Sequence[Any]], rng: np.random.Generator
) -> dict[str, Any]:
    """One random ``zero_optimization`` block for ``stage`` (keys in table order).

    An offload choice of ``None`` means "no offload" and leaves the key out.
    """
    config: dict[str, Any] = {"stage": stage}
    for key, choices in table.items():
        value = choices[int(rng.integers(len(choices)))]
        if value is not None:
            config[key] = dict(value) if isinstance(value, Mapping) else value
    return config


def offload_of(zero: Mapping[str, Any]) -> tuple[bool, bool]:
    """(optimizer offloaded, params offloaded) of a ``zero_optimization`` block."""

    def on(key: str) -> bool:
        block = zero.get(key)
        return isinstance(block, Mapping) and block.get("device", "none") not in ("none", None)

    return on("offload_optimizer"), on("offload_param")
