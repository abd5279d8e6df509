"""The user's ds_config and the overwrites a trial applies to it, without mutation."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

AUTOTUNING_KEY = "autotuning"
OVERWRITE_KEY = "overwrite_deepspeed_args"
CONFIG_KEY = "deepspeed_config"
USE_DSAT_MODE_KEY = "_use_dsat_mode"
MODEL_INFO_PATH = "model_info.json"
METRIC_PATH = "autotuning_metric.json"


def merge_overwrites(base: Mapping[str, Any], overwrites: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``overwrites`` merged in; nested mappings merge key by key.

    Neither argument is modified. A non-mapping value in ``overwrites`` replaces the
    value in ``base`` wholesale.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in overwrites.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = merge_overwrites(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def without_autotuning(ds_config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a ds_config that a user can train with: the autotuning section removed."""
    return {k: copy.deepcopy(v) for k, v in ds_config.items() if k != AUTOTUNING_KEY}


def full_experiment_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's hyperparameters for a normal training run: no autotuning, no dsat mode."""
    result = {k: v for k, v in hparams.items() if k != USE_DSAT_MODE_KEY}
    overwrites = dict(result.get(OVERWRITE_KEY) or {})
    overwrites.pop(AUTOTUNING_KEY, None)
    result[OVERWRITE_KEY] = overwrites
    return result


def autotuning_section(start_profile_step: int, end_profile_step: int) -> dict[str, Any]:
    """The ``autotuning`` block that makes DeepSpeed profile a few steps, write metrics, exit."""
    return {
        "enabled": True,
        "start_profile_step": start_profile_step,
        "end_profile_step": end_profile_step,
        "metric_path": METRIC_PATH,
    }


def profiling_section() -> dict[str, Any]:
    """The ``autotuning`` block of the one-step model-info profiling trial."""
    return {
        "enabled": True,
        "model_info_path": MODEL_INFO_PATH,
        "model_info": {"profile": True},
    }


def trial_length(end_profile_step: int) -> int:
    """Searcher length (batches) of a search trial.

    DeepSpeed (seen on 0.8.3 through 0.19.8) exits from ``engine.step()`` once
    ``global_steps`` passes ``end_profile_step``, which happens during the optimizer step
    numbered ``end_profile_step + 1``; the trial must not stop first. One step more than
    that: scripts written as upstream's examples count a step when
    ``is_gradient_accumulation_boundary()`` holds *after* ``engine.step()``, which with
    gradient accumulation is one micro-batch before DeepSpeed's own count, so at
    ``end_profile_step + 1`` they would stop one micro-batch short of the exit. The exit
    ends every trial at the same step whatever the length, so the extra step costs nothing.
    """
    return end_profile_step + 2


def is_profiling_config(ds_config: Mapping[str, Any]) -> bool:
    """Whether a full ds_config is the model-info profiling trial's."""
    section = ds_config.get(AUTOTUNING_KEY)
    if not isinstance(section, Mapping):
        return False
    info = section.get("model_info")
    return isinstance(info, Mapping) and bool(info.get("profile"))
