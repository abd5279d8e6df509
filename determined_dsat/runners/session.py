"""One search on this machine: the run directory, the method, an executor and the engine.

Shared by the local and replay backends, which differ only in their executor.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.methods.adapter import DSATSearchMethod
from determined_dsat.methods.registry import make_policy
from determined_dsat.report import console
from determined_dsat.report.run_dir import RunDirectory
from determined_dsat.runners.engine import Completion, EngineTrial, SearchEngine, TrialExecutor
from determined_dsat.settings import OffloadTarget, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid, configured_gas
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import OVERWRITE_KEY
from determined_dsat.space.experiment import Experiment
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord, TrialResult
from determined_dsat.trials.tracker import Limits, Tracker

logger = logging.getLogger("determined_dsat")

SESSION_STATE_VERSION = 1
# Settings that define a search; a resumed run must not change them.
_SEARCH_DEFINING = ("method", "metric", "random_seed", "zero_stages", "max_trials", "backend")

ExecutorFactory = Callable[[ConfigSpace, RunDirectory], TrialExecutor]


@attrs.frozen
class SearchOutcome:
    """How a search ended: the best record (if any) and the method's stop message."""

    best: TrialRecord | None
    message: str
    failed: bool
    records: tuple[TrialRecord, ...]
    best_metrics: Mapping[str, Any] | None = None
    baseline: TrialRecord | None = None
    measurements: int = 1


def build_space(settings: SearchSettings, experiment: Experiment) -> ConfigSpace:
    """The config space of a search from its settings and the user's experiment."""
    grid = MicroBatchGrid(
        slots=experiment.slots_per_trial,
        default_gas=configured_gas(experiment.ds_config),
        train_batch_size=settings.train_batch_size,
        divisible_by=settings.divisible_by,
    )
    return ConfigSpace(
        base_ds_config=experiment.ds_config,
        base_hparams=experiment.hparams,
        stages=settings.zero_stages,
        grid=grid,
        start_profile_step=settings.start_profile_step,
        end_profile_step=settings.end_profile_step,
        offload_optimizer=OffloadTarget.OPTIMIZER in settings.offload,
        offload_param=OffloadTarget.PARAM in settings.offload,
        mbs_tolerance=settings.mbs_tolerance,
    )


def build_method(settings: SearchSettings, space: ConfigSpace, slots: int) -> DSATSearchMethod:
    """The search method adapter for ``settings.method``."""
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
    )
    policy = make_policy(settings.method, space, settings.method_options)
    return DSATSearchMethod(
        policy,
        space,
        Tracker(settings.metric, limits),
        settings.random_seed,
        baseline=settings.baseline,
        confirm_top=settings.confirm_top,
    )


class Session:
    """Runs a search to its end in a run directory, resuming from it if asked."""

    def __init__(
        self,
        settings: SearchSettings,
        experiment: Experiment,
        make_executor: ExecutorFactory,
        progress_stream: Any = None,
    ) -> None:
        self.settings = settings
        self.run_dir = RunDirectory(settings.run_dir)
        self.space = build_space(settings, experiment)
        self.method = build_method(settings, self.space, experiment.slots_per_trial)
        self._make_executor = make_executor
        self._stream = sys.stderr if progress_stream is None else progress_stream
        self._best_key: tuple[str, str] | None = None
        self._already_logged: set[str] = set()
        self._journaled = 0

    def run(self) -> SearchOutcome:
        with self.run_dir:
            executor = self._make_executor(self.space, self.run_dir)
            self.executor = executor
            engine = SearchEngine(self.method, executor, self._on_trial_finished, None)
            engine._on_checkpoint = lambda: self._checkpoint(engine, executor)
            bar = console.ProgressBar(self.settings.max_trials, self._stream)
            self._bar = bar
            try:
                if self.settings.resume:
                    self._resume(engine, executor)
                else:
                    self.run_dir.write_settings(self.settings.to_json())
                    self._announce_plan()
                    engine.start()
                engine.run()
            finally:
                # Also on Ctrl-C: no trial process may outlive the search.
                executor.cancel_all()
                bar.close()
            return self._outcome()

    def _announce_plan(self) -> None:
        """Say, before any trial runs, how many trials the search may spend."""
        plan = self.method.policy.planned_trials()
        message = (
            f"planned budget: {self.settings.max_trials} trials at most (profiling trial "
            f"included), {self.method.tracker.limits.concurrent_cap} at once"
            + (f"; {plan}" if plan else "")
        )
        logger.info("%s", message)
        print(f"dsat: {message}", file=self._stream, flush=True)

    # ----- resume -----
    def _resume(self, engine: SearchEngine, executor: TrialExecutor) -> None:
        saved = self.run_dir.read_settings()
        if saved is not None:
            for key in _SEARCH_DEFINING:
                now = self.settings.to_json()[key]
                if saved.get(key) != now:
                    raise ConfigError(
                        f"{self.run_dir.settings_path}: --resume must keep {key} "
                        f"({saved.get(key)!r}); this command asks for {now!r}"
                    )
        state = self.run_dir.read_state()
        if state is None:
            raise ConfigError(f"{self.run_dir.path}: nothing to resume (no state.json)")
        if state.get("version") != SESSION_STATE_VERSION:
            raise ConfigError(f"{self.run_dir.state_path}: unsupported state version")
        journaled = int(state["method"]["tracker"].get("journaled", 0))
        journal = self.run_dir.read_journal()
        if len(journal) > journaled:
            # Written after the last saved state: the resumed search re-derives them.
            self.run_dir.rewrite_journal(journal[:journaled])
        self.method.load_state_dict(state["method"], journal)
        self._journaled = journaled
        engine.load_state_dict(state["engine"])
        logged = {line["request_id"]: line for line in self.run_dir.read_trials()}
        restore = getattr(executor, "load_state_dict", None)
        if restore is not None and state.get("executor") is not None:
            restore(state["executor"])
        else:
            engine.resume(finished=frozenset(logged))
        self._already_logged = set(logged)
        best = self.method.tracker.best()
        metrics = self.method.tracker.best_metrics()
        if best is not None:
            self._best_key = (best.spec.request_id, json.dumps(metrics, sort_keys=True))
        for trial in list(engine.trials.values()):
            line = logged.get(trial.request_id)
            if trial.result is None and line is not None:
                # Finished and logged before the crash, but not in the saved state.
                take = getattr(executor, "take", None)
                if take is not None:
                    take(trial.request_id)
                engine.complete(_completion_from_line(line, trial))
        logger.info(
            "resumed: %d trials finished, %d running",
            self.method.tracker.num_finished,
            self.method.tracker.num_running,
        )

    # ----- observers -----
    def _on_trial_finished(self, trial: EngineTrial) -> None:
        tracker = self.method.tracker
        if trial.request_id not in tracker:
            return
        record = tracker[trial.request_id]
        if record.result is None:
            return
        if trial.request_id not in self._already_logged:
            overwrites = trial.hparams.get(OVERWRITE_KEY) or {}
            self.run_dir.append_trial(record, overwrites)
            self._already_logged.add(trial.request_id)
            logger.info("%s", _describe_result(record, self.settings))
        best, metrics = tracker.best(), tracker.best_metrics()
        key = None if best is None else (best.spec.request_id, json.dumps(metrics, sort_keys=True))
        if best is not None and metrics is not None and key != self._best_key:
            self._best_key = key
            self.run_dir.write_best(self.space.best_ds_config(best.spec), metrics)
        label = None if best is None else console.best_label(best, self.settings.metric)
        self._bar.update(tracker.num_finished, tracker.num_running, label)

    def _checkpoint(self, engine: SearchEngine, executor: TrialExecutor) -> None:
        fresh = self.method.tracker.finished_since(self._journaled)
        self.run_dir.append_journal([r.to_json() for r in fresh])
        self._journaled += len(fresh)
        snapshot = getattr(executor, "state_dict", None)
        self.run_dir.write_state(
            {
                "version": SESSION_STATE_VERSION,
                "method": self.method.state_dict(self._journaled),
                "engine": engine.state_dict(),
                "executor": None if snapshot is None else snapshot(),
            }
        )

    def _outcome(self) -> SearchOutcome:
        tracker = self.method.tracker
        metrics = tracker.best_metrics()
        return SearchOutcome(
            best=tracker.best(),
            message=self.method.stop_message or "the search ended",
            failed=self.method.failed or tracker.best() is None,
            records=tuple(tracker.finished_records()),
            best_metrics=metrics,
            baseline=tracker.baseline_record,
            measurements=int((metrics or {}).get("dsat_measurements", 1)),
        )


def _completion_from_line(line: Mapping[str, Any], trial: EngineTrial) -> Completion:
    result = TrialResult(
        outcome=Outcome(line["status"]),
        metrics=dict(line.get("metrics") or {}),
        duration_s=line.get("duration_s"),
        detail=str(line.get("detail") or ""),
    )
    return Completion(request_id=trial.request_id, result=result, length=trial.length or 1)


def _describe_result(record: TrialRecord, settings: SearchSettings) -> str:
    assert record.result is not None
    what = "profiling trial" if record.spec.kind is TrialKind.PROFILE else "trial"
    text = f"{what} {record.finished_seq} ({console.describe_trial(record)}): "
    text += record.result.outcome.value
    score = settings.metric.score_of(record.result.metrics)
    if score is not None:
        text += ", " + console.format_metric(
            settings.metric, float(record.result.metrics[settings.metric.value])
        )
    if record.result.detail:
        text += f" ({record.result.detail})"
    return text
