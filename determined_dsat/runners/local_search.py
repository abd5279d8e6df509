"""A search whose trials are DeepSpeed processes on this machine (``--backend local``)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.report.summary import print_summary
from determined_dsat.runners.cluster.configs import custom_experiment_config
from determined_dsat.runners.devices import Slots, check_slots_per_trial, detect_slots
from determined_dsat.runners.entrypoint import LocalCommand, parse_entrypoint
from determined_dsat.runners.local import LocalExecutor, LocalTrialOptions
from determined_dsat.runners.session import Session
from determined_dsat.runners.warmup import warm_up_ops
from determined_dsat.settings import OffloadTarget, SearchSettings
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import full_experiment_hparams
from determined_dsat.space.experiment import Experiment
from determined_dsat.space.memory import Precision
from determined_dsat.store.run_dir import RunDirectory
from determined_dsat.store.run_log import log_to_run_dir
from determined_dsat.trials.records import Outcome
from determined_dsat.trials.search_outcome import SearchOutcome
from determined_dsat.trials.specs import hparams_of

logger = logging.getLogger("determined_dsat")

FULL_EXPERIMENT_ID = "full-experiment"


def run_local(settings: SearchSettings, experiment: Experiment) -> int:
    """Run the search locally, then the full experiment if asked; returns the exit code."""
    command = _local_command(experiment)
    slots = detect_slots()
    settings = _fit_to_machine(settings, experiment, slots)
    if settings.run_full_experiment and not experiment.max_length:
        raise ConfigError(
            f"{experiment.config_path.name}: --run-full-experiment needs searcher.max_length "
            "(how long to train with the best config)"
        )
    options = LocalTrialOptions(
        experiment_config=trial_experiment_config(settings, experiment),
        model_dir=experiment.model_dir,
        command=command,
        slots_per_trial=experiment.slots_per_trial,
        includes=settings.include,
        trial_timeout_s=settings.trial_timeout_s,
        memory_limit_mb=settings.trial_memory_limit,
    )

    def make_executor(_: ConfigSpace, run_dir: RunDirectory) -> LocalExecutor:
        return LocalExecutor(options, slots, run_dir.trial_dir)

    # The full training has its own limits: a trial's timeout would kill a long training.
    full_run = attrs.evolve(
        options,
        trial_timeout_s=settings.full_experiment_timeout_s or math.inf,
        memory_limit_mb=settings.full_experiment_memory_limit,
    )

    session = Session(settings, experiment, make_executor)
    logger.info("local backend: %d %s slot(s) %s", len(slots.ids), slots.kind, list(slots.ids))
    # Lock first: a refused second runner must not touch the live run's logs.
    with session.run_dir, _terminate_as_interrupt(), log_to_run_dir(session.run_dir):
        offload = OffloadTarget.OPTIMIZER in settings.offload
        warm_up_ops(experiment.ds_config, slots, session.run_dir.warmup_log_path, offload)
        outcome = session.run()
        print_summary(settings.metric, session.run_dir, outcome)
        if settings.run_full_experiment and outcome.best is not None:
            executor = LocalExecutor(full_run, slots, session.run_dir.trial_dir)
            return _run_full_experiment(session, executor, outcome, experiment)
    return 1 if outcome.failed else 0


def trial_experiment_config(settings: SearchSettings, experiment: Experiment) -> dict[str, Any]:
    """The experiment config a local trial sees: the user's, with the ``searcher`` block of
    the ``custom`` experiment a cluster's trials get. Determined's HF ``DetCallback`` reads
    that block: with ``name: custom`` it trains to the operation's length instead of
    checking the user's ``max_length`` (a plain number, or one other than ``--max_steps``,
    fails there)."""
    custom = custom_experiment_config(settings, experiment.raw, {}, runner_experiment_id=0)
    return {**experiment.raw, "searcher": custom["searcher"]}


def _local_command(experiment: Experiment) -> LocalCommand:
    where = f"{experiment.config_path.name}: entrypoint"
    entrypoint = experiment.raw.get("entrypoint")
    if not isinstance(entrypoint, (str, list)):
        raise ConfigError(f"{experiment.config_path.name}: entrypoint is missing")
    return parse_entrypoint(entrypoint, where)


def _fit_to_machine(
    settings: SearchSettings, experiment: Experiment, slots: Slots
) -> SearchSettings:
    check_slots_per_trial(slots, experiment.slots_per_trial, experiment.config_path.name)
    if not slots.gpu and Precision.from_ds_config(experiment.ds_config) is Precision.FP16:
        raise ConfigError(
            f"{experiment.ds_config_path.name}: fp16 is enabled, but DeepSpeed cannot train in "
            "fp16 on a CPU (seen with DeepSpeed 0.19.8); enable bf16 or neither for a CPU search"
        )
    available = len(slots.ids)
    if experiment.slots_per_trial > available:
        raise ConfigError(
            f"{experiment.config_path.name}: resources.slots_per_trial is "
            f"{experiment.slots_per_trial} but this machine has {available} {slots.kind}(s)"
        )
    cap = available if settings.max_slots is None else min(settings.max_slots, available)
    return attrs.evolve(settings, max_slots=cap)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so the same cleanup stops every trial process."""

    def interrupt(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_full_experiment(
    session: Session, executor: LocalExecutor, outcome: SearchOutcome, experiment: Experiment
) -> int:
    assert outcome.best is not None and experiment.max_length is not None
    hparams = full_experiment_hparams(hparams_of(session.space, outcome.best.spec))
    print(f"Training for {experiment.max_length} batches with the best config ...", file=sys.stderr)
    executor.launch(FULL_EXPERIMENT_ID, hparams, experiment.max_length)
    try:
        completion = executor.next_completion()
    finally:
        executor.cancel_all()
    trial_dir = session.run_dir.trial_dir(FULL_EXPERIMENT_ID)
    if completion.result.outcome is not Outcome.OK:
        print(
            f"The full experiment failed ({completion.result.outcome.value}); logs in {trial_dir}"
        )
        return 1
    print(
        f"Full experiment done in {completion.result.duration_s:.0f} s: "
        f"metrics {dict(completion.result.metrics)}; checkpoints in {trial_dir / 'checkpoints'}"
    )
    return 0
