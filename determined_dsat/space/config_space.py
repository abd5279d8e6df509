"""The space a search explores: ZeRO stages, knobs, micro-batches, and the trial overwrites."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.space import ds_config as dsc
from determined_dsat.space.batch import BatchConfig, MicroBatchGrid, configured_gas
from determined_dsat.space.knobs import knobs_for_stage, offload_of, sample_zero_config
from determined_dsat.space.memory import MemoryModel, ModelProfile, Offload, Precision
from determined_dsat.trials.records import SearchBounds, TrialKind, TrialSpec


@attrs.frozen
class ConfigSpace:
    """What may be proposed and how a proposal becomes ds_config overwrites.

    ``base_ds_config`` is the user's ds_config; ``base_hparams`` the experiment's
    hyperparameters (which point at it). Overwrites never mutate either.
    """

    base_ds_config: Mapping[str, Any]
    base_hparams: Mapping[str, Any]
    stages: tuple[int, ...]
    grid: MicroBatchGrid
    start_profile_step: int
    end_profile_step: int
    offload_optimizer: bool = False
    offload_param: bool = False
    mbs_tolerance: float = 0.0

    @property
    def precision(self) -> Precision:
        return Precision.from_ds_config(self.user_ds_config)

    @property
    def user_ds_config(self) -> dict[str, Any]:
        """The ds_config as the user's trial would see it without any search overwrites."""
        user_overwrites = self.base_hparams.get(dsc.OVERWRITE_KEY) or {}
        return dsc.merge_overwrites(self.base_ds_config, user_overwrites)

    @property
    def user_stage(self) -> int:
        zero = self.user_ds_config.get("zero_optimization") or {}
        return int(zero.get("stage", 0)) if isinstance(zero, Mapping) else 0

    def knob_table(self, stage: int) -> dict[str, tuple[Any, ...]]:
        return knobs_for_stage(stage, self.offload_optimizer, self.offload_param)

    def sample_zero(self, stage: int, rng: np.random.Generator) -> dict[str, Any]:
        """A random ``zero_optimization`` block for ``stage`` from the knob table."""
        return sample_zero_config(stage, self.knob_table(stage), rng)

    def memory_model(self, profile: ModelProfile) -> MemoryModel:
        return MemoryModel(
            profile=profile, slots_per_trial=self.grid.slots, precision=self.precision
        )

    def estimated_max_mbs(self, memory: MemoryModel | None, zero: Mapping[str, Any]) -> int:
        """The memory model's largest micro-batch for a zero block (1 without a model)."""
        if memory is None:
            return self.grid.min_mbs
        optimizer, param = offload_of(zero)
        stage = int(zero.get("stage", 0))
        return memory.max_mbs(stage, Offload(optimizer=optimizer, param=param and stage == 3))

    def initial_bounds(
        self,
        memory: MemoryModel | None,
        zero: Mapping[str, Any],
        range_factor: float = 1.0,
        evidence: tuple[int | None, int | None] = (None, None),
    ) -> SearchBounds:
        """The micro-batch range a new lineage starts from.

        Without evidence the ceiling is the memory model's estimate scaled by
        ``range_factor``, and soft (a success there widens the range). ``evidence`` is
        what other lineages of the same stage learned, (largest micro-batch that
        trained, smallest that ran out of memory): a known OOM makes the ceiling just
        below it hard, since other knobs move memory use only a little.
        """
        lo = self.grid.min_mbs
        cap = self.grid.max_mbs
        max_ok, min_oom = evidence
        estimate = math.floor(self.estimated_max_mbs(memory, zero) * range_factor)
        if min_oom is not None and (max_ok is None or min_oom > max_ok):
            ceiling = min_oom - 1 if max_ok is not None else min(min_oom - 1, max(lo, estimate))
            hi = self.grid.snap_down(ceiling) or lo
            return SearchBounds(lo=lo, hi=max(lo, hi), hi_is_hard=True)
        hi = max(lo, estimate, max_ok or 0)
        if cap is not None and hi >= cap:
            return SearchBounds(lo=lo, hi=cap, hi_is_hard=True)
        snapped = self.grid.snap_down(hi)
        return SearchBounds(lo=lo, hi=max(lo, snapped or lo), hi_is_hard=False)

    def profile_spec(self, request_id: str) -> TrialSpec:
        """The one-step model-info profiling trial at the smallest micro-batch."""
        mbs = self.grid.min_mbs
        return TrialSpec(
            request_id=request_id,
            kind=TrialKind.PROFILE,
            mbs=mbs,
            gas=self.grid.batch_config(mbs).gradient_accumulation_steps,
            zero={"stage": self.user_stage},
        )

    def baseline_spec(self, request_id: str) -> TrialSpec:
        """The user's own ds_config, measured as it is: their micro-batch, accumulation
        and ZeRO block (``train_batch_size`` made consistent, as DeepSpeed requires)."""
        user = self.user_ds_config
        mbs = user.get("train_micro_batch_size_per_gpu")
        if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1:
            mbs = self.grid.min_mbs
        zero = user.get("zero_optimization")
        return TrialSpec(
            request_id=request_id,
            kind=TrialKind.BASELINE,
            mbs=mbs,
            gas=configured_gas(user),
            zero=dict(zero) if isinstance(zero, Mapping) else {"stage": 0},
        )

    def overwrites(self, spec: TrialSpec) -> dict[str, Any]:
        """The ``overwrite_deepspeed_args`` of a trial: batch, ZeRO block and autotuning."""
        section = dsc.autotuning_section(self.start_profile_step, self.end_profile_step)
        if spec.kind is TrialKind.BASELINE:
            own = BatchConfig(spec.mbs * spec.gas * self.grid.slots, spec.mbs, spec.gas)
            return {**own.to_overwrites(), dsc.AUTOTUNING_KEY: section}
        batch = self.grid.batch_config(spec.mbs).to_overwrites()
        if spec.kind is TrialKind.PROFILE:
            return {**batch, dsc.AUTOTUNING_KEY: dsc.profiling_section()}
        return {**batch, "zero_optimization": dict(spec.zero), dsc.AUTOTUNING_KEY: section}

    def hparams(self, spec: TrialSpec) -> dict[str, Any]:
        """The trial's full hyperparameters: the user's, with our overwrites merged in."""
        ours = {dsc.OVERWRITE_KEY: self.overwrites(spec), dsc.USE_DSAT_MODE_KEY: True}
        return dsc.merge_overwrites(self.base_hparams, ours)

    def full_ds_config(self, spec: TrialSpec) -> dict[str, Any]:
        """The complete ds_config a trial runs with."""
        return dsc.merge_overwrites(self.user_ds_config, self.overwrites(spec))

    def ds_config_from_hparams(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The complete ds_config that a trial created with ``hparams`` runs with."""
        overwrites = hparams.get(dsc.OVERWRITE_KEY) or {}
        return dsc.merge_overwrites(self.base_ds_config, overwrites)

    def best_ds_config(self, spec: TrialSpec) -> dict[str, Any]:
        """A complete ds_config for a user to train with: no autotuning section."""
        return dsc.without_autotuning(self.full_ds_config(spec))
