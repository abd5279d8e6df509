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
# A small reduce bucket fills early in backward, so with overlap_comm its reduction hides
# behind the rest of backward, and it costs little memory; upstream's grid reaches 1e6.
_REDUCE_BUCKETS = (10_000_000, *_BUCKETS)

_STAGE_1: dict[str, tuple[Any, ...]] = {
    "reduce_bucket_size": _REDUCE_BUCKETS,
    "allgather_bucket_size": _BUCKETS,
}
_STAGE_2: dict[str, tuple[Any, ...]] = {
    **_STAGE_1,
    "overlap_comm": (True, False),
    "reduce_scatter": (True, False),
    "contiguous_gradients": (True, False),
}
_STAGE_3: dict[str, tuple[Any, ...]] = {
    "reduce_bucket_size": _REDUCE_BUCKETS,
    "overlap_comm": (True, False),
    "contiguous_gradients": (True, False),
    # 5e8 is the prefetch bucket of DeepSpeed's own autotuner's stage-3 template.
    "stage3_prefetch_bucket_size": (10_000_000, 50_000_000, 200_000_000, 500_000_000),
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


BUCKET_KNOBS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")
"""Knobs in elements that size a communication buffer DeepSpeed allocates whole."""

MODEL_SIZED_KNOBS = (*BUCKET_KNOBS, "stage3_max_live_parameters", "stage3_max_reuse_distance")
"""Knobs in elements whose effect stops growing at the model's size: a bucket that holds
every gradient, a live-parameter limit or a reuse distance that the whole model stays
under (ZeRO-3 then never releases a gathered parameter early)."""


def fit_to_model(table: Mapping[str, Sequence[Any]], num_params: int) -> dict[str, tuple[Any, ...]]:
    """The knob table without model-sized values beyond the model (``MODEL_SIZED_KNOBS``):
    they all behave as the smallest of them at or above ``num_params``, which stays, so
    "one bucket" remains a choice. A larger bucket only costs: DeepSpeed (0.19.8, with
    ``contiguous_gradients``) still allocates its full size."""
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in table.items():
        if key not in MODEL_SIZED_KNOBS or not all(isinstance(v, (int, float)) for v in values):
            out[key] = tuple(values)
            continue
        small = [v for v in values if v <= num_params]
        large = sorted(v for v in values if v > num_params)
        out[key] = tuple(small + large[:1])
    return out


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


NUMERIC_DEFAULTS: dict[str, float] = {
    "reduce_bucket_size": 500_000_000.0,
    "allgather_bucket_size": 500_000_000.0,
    "stage3_prefetch_bucket_size": 50_000_000.0,
    "stage3_param_persistence_threshold": 100_000.0,
    "stage3_max_live_parameters": 1_000_000_000.0,
    "stage3_max_reuse_distance": 1_000_000_000.0,
}
"""DeepSpeed 0.19.8's defaults (``DeepSpeedZeroConfig()``) of the numeric knobs we search."""

BUCKET_DEFAULTS: dict[str, float] = {
    key: NUMERIC_DEFAULTS[key] for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size")
}
"""DeepSpeed 0.19.8's defaults (elements) for the buckets that stay allocated during a step."""


def overlap_comm(zero: Mapping[str, Any]) -> bool:
    """Whether a block overlaps communication; DeepSpeed 0.19.8 turns it on at stage 3."""
    if "overlap_comm" in zero:
        return bool(zero["overlap_comm"])
    return int(zero.get("stage", 0)) == 3


def bucket_elements(zero: Mapping[str, Any]) -> float:
    """Elements of the communication buffers a block keeps during a step.

    The reduce bucket at stages 1-3 and, at stage 3, the prefetch bucket; both are
    double-buffered when communication overlaps computation. Stage 0 has none.
    """
    stage = int(zero.get("stage", 0))
    if stage == 0:
        return 0.0
    elements = float(zero.get("reduce_bucket_size", BUCKET_DEFAULTS["reduce_bucket_size"]))
    if stage == 3:
        prefetch = BUCKET_DEFAULTS["stage3_prefetch_bucket_size"]
        elements += float(zero.get("stage3_prefetch_bucket_size", prefetch))
    return elements * (2.0 if overlap_comm(zero) else 1.0)


def loose_gradients(zero: Mapping[str, Any]) -> bool:
    """Whether a block keeps gradients as separate tensors until they are reduced: stages 2
    and 3 without ``contiguous_gradients`` (DeepSpeed 0.19.8 defaults it to True)."""
    stage = int(zero.get("stage", 0))
    return stage >= 2 and not bool(zero.get("contiguous_gradients", True))


def gathered_elements(zero: Mapping[str, Any], num_params: int) -> float:
    """Upper bound on the parameters (elements) ZeRO-3 keeps gathered at once: what
    ``stage3_max_live_parameters`` lets live plus what ``stage3_max_reuse_distance`` keeps
    for reuse, each at most the model. Zero below stage 3."""
    if int(zero.get("stage", 0)) != 3:
        return 0.0
    live = float(
        zero.get("stage3_max_live_parameters", NUMERIC_DEFAULTS["stage3_max_live_parameters"])
    )
    reuse = float(
        zero.get("stage3_max_reuse_distance", NUMERIC_DEFAULTS["stage3_max_reuse_distance"])
    )
    size = float(max(num_params, 0))
    return min(live, size) + min(reuse, size)
