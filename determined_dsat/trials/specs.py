"""Trial specs that come from the config space, and the ds_config each spec runs with."""

from __future__ import annotations

from typing import Any

from determined_dsat.space import ds_config as dsc
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import TrialKind, TrialSpec


def profile_spec(space: ConfigSpace, request_id: str) -> TrialSpec:
    """The one-step model-info profiling trial at the smallest micro-batch."""
    mbs = space.grid.min_mbs
    return TrialSpec(
        request_id=request_id,
        kind=TrialKind.PROFILE,
        mbs=mbs,
        gas=space.grid.batch_config(mbs).gradient_accumulation_steps,
        zero={"stage": space.user_stage},
    )


def baseline_spec(space: ConfigSpace, request_id: str, seq: int = 0) -> TrialSpec:
    """The user's own ds_config, measured as it is: their micro-batch, accumulation and
    ZeRO block (``train_batch_size`` made consistent, as DeepSpeed requires). ``seq``: its
    place in the order the search created trials."""
    mbs, gas = space.user_batch
    return TrialSpec(
        request_id=request_id,
        kind=TrialKind.BASELINE,
        mbs=mbs,
        gas=gas,
        zero=space.user_zero,
        seq=seq,
    )


def overwrites_of(space: ConfigSpace, spec: TrialSpec) -> dict[str, Any]:
    """The ``overwrite_deepspeed_args`` a trial runs with: batch, ZeRO block, autotuning."""
    if spec.kind is TrialKind.PROFILE:
        return space.profile_overwrites()
    if spec.kind is TrialKind.BASELINE:
        return space.baseline_overwrites(spec.mbs, spec.gas, spec.window)
    if spec.kind is TrialKind.CONFIRM:
        # The exact batch of the original: a re-measured baseline keeps the user's own.
        return space.remeasure_overwrites(spec.mbs, spec.gas, spec.zero, spec.window)
    return space.search_overwrites(spec.mbs, spec.zero, spec.window)


def hparams_of(space: ConfigSpace, spec: TrialSpec) -> dict[str, Any]:
    """The trial's full hyperparameters: the user's, with the spec's overwrites merged in."""
    return space.hparams_with(overwrites_of(space, spec))


def ds_config_of(space: ConfigSpace, spec: TrialSpec) -> dict[str, Any]:
    """The complete ds_config a trial runs with."""
    return space.ds_config_with(overwrites_of(space, spec))


def best_ds_config_of(space: ConfigSpace, spec: TrialSpec) -> dict[str, Any]:
    """A complete ds_config for a user to train with: no autotuning section."""
    return dsc.without_autotuning(ds_config_of(space, spec))
