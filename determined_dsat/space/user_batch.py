"""The user's own batch settings, resolved as DeepSpeed resolves them.

DeepSpeed (0.19.8, ``runtime/config.py``, ``_set_batch_related_parameters``) takes any
consistent subset of ``train_batch_size`` (tbs), ``train_micro_batch_size_per_gpu`` (mbs)
and ``gradient_accumulation_steps`` (gas) and derives the rest, with ``world_size`` ranks:

- all three: they must satisfy ``tbs == mbs * gas * world_size``;
- tbs and mbs: ``gas = tbs // mbs // world_size``; tbs and gas: ``mbs = tbs // world_size //
  gas``; mbs and gas: ``tbs = mbs * gas * world_size``;
- tbs alone: ``gas = 1``, ``mbs = tbs // world_size``; mbs alone: ``gas = 1``,
  ``tbs = mbs * world_size``;

and then refuses any result that is not exactly consistent. HF's ``"auto"`` leaves a value
to the Trainer, which fills it from its own arguments (``hf`` below).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from determined_dsat.errors import ConfigError
from determined_dsat.space.batch import BatchConfig

_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _value(ds_config: Mapping[str, Any], key: str, where: str) -> int | None:
    raw = ds_config.get(key)
    if raw is None or raw == "auto":
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(f'{where}: {key} must be a positive integer or "auto", got {raw!r}')
    return raw


def resolve_user_batch(
    ds_config: Mapping[str, Any],
    slots: int,
    where: str,
    hf: tuple[int, int] | None = None,
) -> BatchConfig | None:
    """The (tbs, mbs, gas) DeepSpeed would run ``ds_config`` with on ``slots`` ranks; None
    when it gives neither tbs nor mbs.

    ``hf``: the (micro-batch, gas) a Hugging Face Trainer resolves ``"auto"`` values to
    (``--per_device_train_batch_size``, ``--gradient_accumulation_steps``); used for the
    values the ds_config leaves as ``"auto"``. Raises ``ConfigError`` naming the values
    when they are inconsistent.
    """
    tbs, mbs, gas = (_value(ds_config, key, where) for key in _KEYS)
    if hf is not None:
        if ds_config.get(_KEYS[1]) == "auto":
            mbs = hf[0]
        if ds_config.get(_KEYS[2]) == "auto":
            gas = hf[1]
    resolved = _derive(tbs, mbs, gas, slots)
    if resolved is None:
        return None
    t, m, g = resolved
    if m < 1 or g < 1 or t != m * g * slots:
        given = ", ".join(
            f"{key}={value}" for key, value in zip(_KEYS, (tbs, mbs, gas)) if value is not None
        )
        raise ConfigError(
            f"{where}: inconsistent batch settings ({given} with {slots} slot(s) per trial): "
            "DeepSpeed needs train_batch_size = train_micro_batch_size_per_gpu x "
            "gradient_accumulation_steps x slots"
        )
    return BatchConfig(t, m, g)


def _derive(
    tbs: int | None, mbs: int | None, gas: int | None, world: int
) -> tuple[int, int, int] | None:
    if tbs is not None and mbs is not None and gas is not None:
        return tbs, mbs, gas
    if tbs is not None and mbs is not None:
        return tbs, mbs, tbs // mbs // world
    if tbs is not None and gas is not None:
        return tbs, tbs // world // gas, gas
    if mbs is not None and gas is not None:
        return mbs * gas * world, mbs, gas
    if tbs is not None:
        return tbs, tbs // world, 1
    if mbs is not None:
        return mbs * world, mbs, 1
    return None
