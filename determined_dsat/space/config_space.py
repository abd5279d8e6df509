"""The space a search explores: ZeRO stages, knobs, micro-batches, and the trial overwrites."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.space import ds_config as dsc
from determined_dsat.space.batch import BatchConfig, MicroBatchGrid, SearchBounds, configured_gas
from determined_dsat.space.knobs import (
    bucket_elements,
    fit_to_model,
    knobs_for_stage,
    offload_of,
    sample_zero_config,
)
from determined_dsat.space.memory import (
    STEP_ACTIVATION_FACTOR,
    MemoryModel,
    ModelProfile,
    Offload,
    Precision,
)
from determined_dsat.space.user_batch import resolve_user_batch
from determined_dsat.space.window import (
    AUTO_WARMUP_STEPS,
    MAX_MEASURED_STEPS,
    ProfileWindow,
)


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
    hf_batch: tuple[int, int] | None = None
    """(micro-batch, gas) a Hugging Face Trainer fills ``"auto"`` batch values with."""
    auto_window: bool = False
    """Whether each trial's profiling window is chosen from the step times seen so far
    (``space/window.py``); otherwise every trial measures ``start..end_profile_step``."""

    @property
    def fixed_window(self) -> ProfileWindow:
        """The window of trials that do not choose their own."""
        return ProfileWindow(self.start_profile_step, self.end_profile_step)

    @property
    def last_profile_step(self) -> int:
        """The last step any trial of this space measures (its length must go past it)."""
        if self.auto_window:
            return AUTO_WARMUP_STEPS + MAX_MEASURED_STEPS - 1
        return self.end_profile_step

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

    def knob_table(self, stage: int, num_params: int | None = None) -> dict[str, tuple[Any, ...]]:
        """The knobs searched at ``stage``; with the model's ``num_params``, without the
        model-sized values beyond the model (:func:`knobs.fit_to_model`)."""
        table = knobs_for_stage(stage, self.offload_optimizer, self.offload_param)
        return table if num_params is None else fit_to_model(table, num_params)

    def sample_zero(
        self, stage: int, rng: np.random.Generator, profile: ModelProfile | None = None
    ) -> dict[str, Any]:
        """A random ``zero_optimization`` block for ``stage`` from the knob table (fitted
        to the model once its ``profile`` is known)."""
        num_params = None if profile is None else profile.num_params
        return sample_zero_config(stage, self.knob_table(stage, num_params), rng)

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
        buckets = int(bucket_elements(zero) * self.precision.bytes_per_param)
        return memory.max_mbs(
            stage,
            Offload(optimizer=optimizer, param=param and stage == 3),
            reserved_bytes=buckets,
            activation_factor=STEP_ACTIVATION_FACTOR,
        )

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

    @property
    def user_batch(self) -> tuple[int, int]:
        """(micro-batch, gradient accumulation) the user's own ds_config runs with, as
        DeepSpeed resolves them; the smallest micro-batch when it gives neither
        ``train_batch_size`` nor ``train_micro_batch_size_per_gpu``."""
        user = self.user_ds_config
        batch = resolve_user_batch(user, self.grid.slots, "ds_config", self.hf_batch)
        if batch is None:
            return self.grid.min_mbs, configured_gas(user)
        return batch.train_micro_batch_size_per_gpu, batch.gradient_accumulation_steps

    @property
    def baseline_is_candidate(self) -> bool:
        """Whether the user's own batch keeps the search's batch constraints (the global
        batch of ``--train-batch-size``, ``--divisible-by``, ``--max-mbs``), so that the
        baseline may be recommended when nothing searched beats it."""
        mbs, gas = self.user_batch
        tbs = self.grid.train_batch_size
        if tbs is not None and mbs * gas * self.grid.slots != tbs:
            return False
        return self.grid.allowed(mbs)

    @property
    def user_zero(self) -> dict[str, Any]:
        """The user's own ``zero_optimization`` block (stage 0 when there is none)."""
        zero = self.user_ds_config.get("zero_optimization")
        return dict(zero) if isinstance(zero, Mapping) else {"stage": 0}

    def profile_overwrites(self) -> dict[str, Any]:
        """Overwrites of the one-step model-info profiling trial (the smallest micro-batch)."""
        batch = self.grid.batch_config(self.grid.min_mbs).to_overwrites()
        return {**batch, dsc.AUTOTUNING_KEY: dsc.profiling_section()}

    def baseline_overwrites(
        self, mbs: int, gas: int, window: ProfileWindow | None = None
    ) -> dict[str, Any]:
        """Overwrites that measure the user's own batch settings (their ZeRO block stays);
        ``window``: the steps measured (None: :attr:`fixed_window`)."""
        own = BatchConfig(mbs * gas * self.grid.slots, mbs, gas)
        return {**own.to_overwrites(), dsc.AUTOTUNING_KEY: self._autotuning(window)}

    def search_overwrites(
        self, mbs: int, zero: Mapping[str, Any], window: ProfileWindow | None = None
    ) -> dict[str, Any]:
        """Overwrites of a searched configuration: batch, ZeRO block and autotuning."""
        return self._trial_overwrites(self.grid.batch_config(mbs), zero, window)

    def remeasure_overwrites(
        self, mbs: int, gas: int, zero: Mapping[str, Any], window: ProfileWindow | None = None
    ) -> dict[str, Any]:
        """Overwrites of a re-measurement: the original's exact batch and ZeRO block."""
        batch = BatchConfig(mbs * gas * self.grid.slots, mbs, gas)
        return self._trial_overwrites(batch, zero, window)

    def _trial_overwrites(
        self, batch: BatchConfig, zero: Mapping[str, Any], window: ProfileWindow | None
    ) -> dict[str, Any]:
        autotuning = self._autotuning(window)
        overwrites = batch.to_overwrites()
        return {**overwrites, "zero_optimization": dict(zero), dsc.AUTOTUNING_KEY: autotuning}

    def _autotuning(self, window: ProfileWindow | None) -> dict[str, Any]:
        steps = self.fixed_window if window is None else window
        return dsc.autotuning_section(steps.start, steps.end)

    def hparams_with(self, overwrites: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full hyperparameters: the user's, with ``overwrites`` merged in."""
        ours = {dsc.OVERWRITE_KEY: dict(overwrites), dsc.USE_DSAT_MODE_KEY: True}
        return dsc.merge_overwrites(self.base_hparams, ours)

    def ds_config_with(self, overwrites: Mapping[str, Any]) -> dict[str, Any]:
        """The complete ds_config a trial with ``overwrites`` runs with."""
        return dsc.merge_overwrites(self.user_ds_config, overwrites)

    def ds_config_from_hparams(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The complete ds_config that a trial created with ``hparams`` runs with."""
        overwrites = hparams.get(dsc.OVERWRITE_KEY) or {}
        return dsc.merge_overwrites(self.base_ds_config, overwrites)
