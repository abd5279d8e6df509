"""A search put together from its settings: the config space and the search method.

Shared by every runner (local and replay sessions, the cluster's search runner) and by the
benchmarks, so they all set a search up exactly as ``dsat`` does.
"""

from __future__ import annotations

from determined_dsat.errors import ConfigError
from determined_dsat.methods import registry
from determined_dsat.methods.driver import SearchDriver
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.settings import OffloadTarget, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid, configured_gas
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.experiment import Experiment
from determined_dsat.space.hf_args import resolve_hf_batch
from determined_dsat.trials.tracker import Limits, Tracker


def build_space(settings: SearchSettings, experiment: Experiment) -> ConfigSpace:
    """The config space of a search from its settings and the user's experiment."""
    grid = MicroBatchGrid(
        slots=experiment.slots_per_trial,
        default_gas=configured_gas(experiment.ds_config),
        train_batch_size=settings.train_batch_size,
        divisible_by=settings.divisible_by,
        mbs_cap=settings.max_mbs,
    )
    return ConfigSpace(
        base_ds_config=experiment.ds_config,
        base_hparams=experiment.hparams,
        stages=settings.zero_stages,
        grid=grid,
        start_profile_step=settings.start_profile_step,
        end_profile_step=settings.end_profile_step,
        auto_window=settings.auto_profile_window,
        offload_optimizer=OffloadTarget.OPTIMIZER in settings.offload,
        offload_param=OffloadTarget.PARAM in settings.offload,
        mbs_tolerance=settings.mbs_tolerance,
        hf_batch=hf_batch_of(experiment),
    )


def hf_batch_of(experiment: Experiment) -> tuple[int, int] | None:
    """The (micro-batch, gas) an HF Trainer entrypoint resolves ``"auto"`` values to; None
    when the entrypoint is not an HF Trainer command (no ``--deepspeed``)."""
    entrypoint = experiment.raw.get("entrypoint")
    if not isinstance(entrypoint, (str, list)):
        return None
    where = f"{experiment.config_path.name}: entrypoint"
    batch = resolve_hf_batch(entrypoint, experiment.hparams, experiment.ds_config, where)
    return None if batch is None else (batch.mbs, batch.gas)


def build_driver(settings: SearchSettings, space: ConfigSpace, slots: int) -> SearchDriver:
    """The search driver of ``settings.method`` (``slots``: GPUs per trial)."""
    if settings.max_slots is not None and settings.max_slots < slots:
        raise ConfigError(
            f"--max-slots {settings.max_slots} is smaller than resources.slots_per_trial "
            f"({slots}): no trial could ever start"
        )
    limits = Limits(
        max_trials=settings.max_trials,
        max_concurrent_trials=settings.max_concurrent_trials,
        slots_per_trial=slots,
        max_slots=settings.max_slots,
        time_budget_s=settings.time_budget_s,
    )
    policy = registry.make_policy(settings.method, space, settings.method_options)
    return SearchDriver(
        policy,
        space,
        Tracker(settings.metric, limits, baseline_may_win=space.baseline_is_candidate),
        settings.random_seed,
        baseline=settings.baseline,
        confirm_top=settings.confirm_top,
    )


def build_method(settings: SearchSettings, space: ConfigSpace, slots: int) -> DSATSearchMethod:
    """The ``SearchMethod`` every runner drives: the driver behind the event API."""
    return DSATSearchMethod(build_driver(settings, space, slots))
