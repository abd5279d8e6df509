"""Start a search on the chosen backend and report how it ended."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from determined_dsat.errors import SearchError
from determined_dsat.report.summary import print_summary
from determined_dsat.runners.replay import ReplayExecutor, load_replay_source
from determined_dsat.runners.session import Session
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.experiment import Experiment
from determined_dsat.store.run_dir import RunDirectory
from determined_dsat.store.run_log import log_to_run_dir

logger = logging.getLogger("determined_dsat")


def run_search(settings: SearchSettings, experiment: Experiment) -> int:
    """Run a search to its end; returns the process exit code (0 when a config was found)."""
    if settings.backend is Backend.REPLAY:
        return _run_replay(settings, experiment)
    if settings.backend is Backend.LOCAL:
        from determined_dsat.runners.local_search import run_local

        return run_local(settings, experiment)
    from determined_dsat.runners.cluster.submit import submit

    submit(settings, experiment)
    return 0


def _run_replay(settings: SearchSettings, experiment: Experiment) -> int:
    if settings.replay_source is None:
        raise SearchError("--backend replay needs --replay-source")
    source = load_replay_source(
        settings.replay_source, experiment.model_dir, settings.replay_errors_as_trials
    )

    def make_executor(space: ConfigSpace, _: RunDirectory) -> ReplayExecutor:
        def ds_config_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
            return space.ds_config_from_hparams(hparams)

        return ReplayExecutor(source, ds_config_of)

    if settings.run_full_experiment:
        logger.warning("--run-full-experiment does nothing with --backend replay")
    session = Session(settings, experiment, make_executor)
    with session.run_dir, log_to_run_dir(session.run_dir):
        outcome = session.run()
    print_summary(settings.metric, session.run_dir, outcome)
    return 1 if outcome.failed else 0
