"""A ds_config's ZeRO block as the held-out landscapes read it, with DeepSpeed 0.19.8's
defaults (``deepspeed/runtime/zero/config.py``) for every knob it leaves out."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

OFFLOAD_KEYS = ("offload_optimizer", "offload_param")

# DeepSpeed accepts both the field names and the stage3_ aliases.
_ALIASES = {
    "stage3_prefetch_bucket_size": "prefetch_bucket_size",
    "stage3_param_persistence_threshold": "param_persistence_threshold",
    "stage3_max_live_parameters": "max_live_parameters",
    "stage3_max_reuse_distance": "max_reuse_distance",
}
_INT_KNOBS = (
    "reduce_bucket_size",
    "allgather_bucket_size",
    "prefetch_bucket_size",
    "param_persistence_threshold",
    "max_live_parameters",
    "max_reuse_distance",
    "sub_group_size",
)
_BOOL_KNOBS = ("reduce_scatter", "contiguous_gradients", "allgather_partitions")


@attrs.frozen
class ZeroSettings:
    """Every ZeRO knob the landscapes model (element counts for sizes)."""

    stage: int
    overlap_comm: bool
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    reduce_scatter: bool = True
    contiguous_gradients: bool = True
    allgather_partitions: bool = True
    prefetch_bucket_size: int = 50_000_000
    param_persistence_threshold: int = 100_000
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    sub_group_size: int = 1_000_000_000
    offload_optimizer: bool = False
    offload_param: bool = False


def _offloaded(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("device") not in (None, "none")


def zero_settings(zero: Mapping[str, Any]) -> ZeroSettings:
    """The settings of a ``zero_optimization`` block; knobs it leaves out take DeepSpeed
    0.19.8's defaults (``overlap_comm`` defaults to True at stage 3 only). Keys the
    landscapes do not model are ignored, as DeepSpeed would run with them."""
    stage = int(zero.get("stage", 0))
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage}")
    values: dict[str, Any] = {}
    for key, value in zero.items():
        name = _ALIASES.get(key, key)
        if name in _INT_KNOBS and value is not None:
            values[name] = int(value)
        elif name in _BOOL_KNOBS and value is not None:
            values[name] = bool(value)
    overlap = zero.get("overlap_comm")
    offload_optimizer = _offloaded(zero.get("offload_optimizer")) or bool(zero.get("cpu_offload"))
    return ZeroSettings(
        stage=stage,
        overlap_comm=stage == 3 if overlap is None else bool(overlap),
        offload_optimizer=stage >= 1 and offload_optimizer,
        offload_param=stage == 3 and _offloaded(zero.get("offload_param")),
        **values,
    )


def table_blocks(stage: int, table: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every ``zero_optimization`` block of one stage's knob table, offload left out."""
    knobs = [(key, values) for key, values in table.items() if key not in OFFLOAD_KEYS]
    names = [key for key, _ in knobs]
    for combination in itertools.product(*(values for _, values in knobs)):
        yield {"stage": stage, **dict(zip(names, combination, strict=True))}
