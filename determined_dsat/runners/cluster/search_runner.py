"""The search runner on a Determined cluster.

``python3 -m determined_dsat.runners.cluster.search_runner`` is the entrypoint
of the ``single`` experiment that ``dsat`` submits. It rebuilds the
search from the settings file uploaded with it (JSON, never pickle), creates the
``custom`` experiment of trials and drives it with Determined's ``RemoteSearchRunner``
protocol. After every event it checkpoints, through the Core API, the searcher state,
the operations it answered with (as the master's JSON), ``trials.jsonl`` and the best
config so far; a restarted runner resumes from the newest checkpoint and re-posts the
answer to an event the master may not have received, so no trial is created twice.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import determined as det
from determined import core, searcher
from determined.common.api import errors as api_errors
from determined.experimental import client

from determined_dsat.build import build_method, build_space
from determined_dsat.errors import DsatError
from determined_dsat.jsonio import write_json_atomic
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.cluster.configs import custom_experiment_config, full_experiment_config
from determined_dsat.runners.cluster.operations import operations_from_json, operations_to_json
from determined_dsat.runners.cluster.results import ResultLog, write_best
from determined_dsat.settings import SearchSettings
from determined_dsat.space import ds_config as dsc
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.experiment import Experiment, load_experiment
from determined_dsat.store.layout import (
    FULL_EXPERIMENT_FILE,
    OPERATIONS_FILE,
    RUNNER_SETTINGS_FILE,
)
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.specs import best_ds_config_of, hparams_of, overwrites_of

logger = logging.getLogger("determined_dsat")

# Between polls of the master's searcher events (which long-poll themselves).
POLL_INTERVAL_S = 1.0


class ClusterSearchRunner(searcher.RemoteSearchRunner):
    """``RemoteSearchRunner`` whose checkpoints are JSON and carry the search's results."""

    def __init__(self, method: DSATSearchMethod, context: core.Context, space: ConfigSpace) -> None:
        with warnings.catch_warnings():
            # Determined 0.37 deprecates custom searchers; this package is their replacement.
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(method, context)
        self.method = method
        self.space = space
        self.results = ResultLog()
        self.full_experiment_id: int | None = None
        self._reported_best: str | None = None
        self._shutdown_posted = False
        self._clock_start: float | None = None

    def run_experiment(
        self,
        experiment_id: int,
        session: Any,
        prior_operations: list[searcher.Operation] | None,
        sleep_time: float | None = None,
    ) -> None:
        interval = POLL_INTERVAL_S if sleep_time is None else sleep_time
        super().run_experiment(experiment_id, session, prior_operations, sleep_time=interval)

    def post_operations(
        self,
        session: Any,
        experiment_id: int,
        event: Any,
        operations: list[searcher.Operation],
    ) -> None:
        # Once the master has our Shutdown it ends the experiment, possibly before it has
        # taken the answers to the rest of the batch; those no longer matter, and posting
        # them to an ended experiment fails.
        if self._shutdown_posted:
            return
        try:
            super().post_operations(session, experiment_id, event, operations)
        except api_errors.APIException as exc:
            if self.method.shutdown_sent and "could not be found" in str(exc):
                logger.info("the trials experiment has ended; answer to event dropped")
                return
            raise
        if any(isinstance(op, searcher.Shutdown) for op in operations):
            self._shutdown_posted = True

    def _get_operations(self, event: Any) -> list[searcher.Operation]:
        # The runner's wall clock, across restarts (the tracker keeps what was spent), is the
        # search's clock for --time-budget.
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now - self.method.tracker.elapsed_s
        self.method.note_time(now - self._clock_start)
        operations: list[searcher.Operation] = super()._get_operations(event)
        return operations

    @property
    def search_finished(self) -> bool:
        """The search ended by itself (not paused, killed or failed)."""
        method = self.method
        return (
            self.state.experiment_completed or method.shutdown_sent
        ) and not self.state.experiment_failed

    # ----- checkpoints -----
    def load_state(self, storage_id: str) -> tuple[int, list[searcher.Operation]]:
        with self.context.checkpoint.restore_path(storage_id) as path:
            self.state, experiment_id = self.search_method.load(path)
            operations = operations_from_json(json.loads((path / OPERATIONS_FILE).read_text()))
            self.results = ResultLog.read(path)
            full = path / FULL_EXPERIMENT_FILE
            if full.is_file():
                self.full_experiment_id = int(json.loads(full.read_text())["experiment_id"])
        logger.info(
            "resumed from checkpoint %s: %d trials finished, last event %d",
            storage_id,
            len(self.results.lines),
            self.state.last_event_id,
        )
        return experiment_id, operations

    def save_state(self, experiment_id: int, operations: list[searcher.Operation]) -> None:
        self.results.catch_up(self.method.tracker, self._overwrites)
        metadata = {"steps_completed": self.state.last_event_id}
        with self.context.checkpoint.store_path(metadata) as (path, _):
            self.search_method.save(self.state, path, experiment_id=experiment_id)
            write_json_atomic(path / OPERATIONS_FILE, operations_to_json(operations))
            self._write_results(path)
        self._report_best()

    def _write_results(self, path: pathlib.Path) -> None:
        self.results.write(path)
        tracker = self.method.tracker
        best, metrics = tracker.recommended(), tracker.recommended_metrics()
        if best is not None and metrics is not None:
            write_best(path, best_ds_config_of(self.space, best.spec), dict(metrics))
        if self.full_experiment_id is not None:
            write_json_atomic(
                path / FULL_EXPERIMENT_FILE, {"experiment_id": self.full_experiment_id}
            )

    def _overwrites(self, record: TrialRecord) -> dict[str, object]:
        return overwrites_of(self.space, record.spec)

    def _report_best(self) -> None:
        """Show the best metric so far in the runner experiment's metrics (Web UI)."""
        tracker = self.method.tracker
        best, metrics = tracker.recommended(), tracker.recommended_metrics()
        if best is None or metrics is None or self.context.distributed.rank != 0:
            return
        key = f"{best.spec.request_id}:{json.dumps(metrics, sort_keys=True, default=str)}"
        if key == self._reported_best:
            return
        self._reported_best = key
        metric = tracker.metric.value
        values = {
            metric: metrics.get(metric),
            "best_zero_stage": best.spec.stage,
            "best_micro_batch": best.spec.mbs,
            "trials_finished": tracker.num_finished,
        }
        try:
            self.context.train.report_validation_metrics(
                steps_completed=max(1, tracker.num_finished),
                metrics={k: v for k, v in values.items() if isinstance(v, (int, float))},
            )
        except api_errors.APIException as exc:
            logger.warning("could not report the best metric to the master: %s", exc)

    # ----- the full experiment -----
    def create_full_experiment(
        self, user_config: dict[str, Any], model_dir: str, includes: Sequence[pathlib.Path]
    ) -> int | None:
        """Train with the best config once (never twice, across restarts)."""
        if self.full_experiment_id is not None:
            logger.info("the full experiment %d exists already", self.full_experiment_id)
            return self.full_experiment_id
        best = self.method.tracker.recommended()
        if best is None:
            logger.warning("no trial succeeded: no full experiment to run")
            return None
        info = det.get_cluster_info()
        runner_id = info.trial.experiment_id if info is not None else 0
        config = full_experiment_config(user_config, hparams_of(self.space, best.spec), runner_id)
        exp = client.create_experiment(config, model_dir, list(includes))
        self.full_experiment_id = exp.id
        logger.info("Created full experiment %d with the best config", exp.id)
        self.save_state(self.state.experiment_id or 0, [])
        return exp.id


def package_dir() -> pathlib.Path:
    """This package's directory; uploaded with every experiment so trials can import it."""
    return pathlib.Path(__file__).resolve().parents[2]


def load_settings(path: pathlib.Path) -> SearchSettings:
    """The settings ``dsat`` uploaded (paths relative to the task's working directory)."""
    try:
        return SearchSettings.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DsatError(f"{path}: cannot read the search settings: {exc}") from exc


def run_on_cluster(
    settings: SearchSettings, experiment: Experiment, context: core.Context, runner_id: int
) -> int:
    """Run (or resume) the search; returns the custom experiment's id."""
    space = build_space(settings, experiment)
    method = build_method(settings, space, experiment.slots_per_trial)
    custom = custom_experiment_config(
        settings,
        experiment.raw,
        dsc.autotuning_section(settings.start_profile_step, settings.end_profile_step),
        runner_id,
        where=experiment.config_path.name,
    )
    runner = ClusterSearchRunner(method, context, space)
    includes = [*settings.include, package_dir()]
    trials_id = runner.run(custom, model_dir=str(experiment.model_dir), includes=includes)
    tracker = method.tracker
    best = tracker.recommended()
    logger.info(
        "search finished: %s; %d trials; best: %s",
        method.stop_message or "the search ended",
        tracker.num_finished,
        "none" if best is None else f"stage {best.spec.stage}, micro-batch {best.spec.mbs}",
    )
    if settings.run_full_experiment and runner.search_finished:
        runner.create_full_experiment(dict(experiment.raw), str(experiment.model_dir), includes)
    return trials_id


def main() -> int:
    """The entrypoint on the cluster."""
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    if info is None or info.task_type != "TRIAL":
        print("dsat: the search runner runs inside a Determined trial", file=sys.stderr)
        return 2
    try:
        settings = load_settings(pathlib.Path(RUNNER_SETTINGS_FILE))
        experiment = load_experiment(settings.config_path, settings.model_dir)
    except DsatError as exc:
        print(f"dsat: {exc}", file=sys.stderr)
        return 2
    # The runner writes no TensorBoard data (and the image may not have tensorboard).
    with det.core.init(tensorboard_mode=core.TensorboardMode.MANUAL) as context:
        run_on_cluster(settings, experiment, context, info.trial.experiment_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
