"""One search on this machine: the run directory, the method, an executor and the engine.

Shared by the local and replay backends, which differ only in their executor.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from determined_dsat.build import build_method, build_space
from determined_dsat.errors import ConfigError
from determined_dsat.report import console
from determined_dsat.runners.engine import EngineTrial, SearchEngine
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.outcome import short_detail
from determined_dsat.settings import SearchSettings
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import OVERWRITE_KEY
from determined_dsat.space.experiment import Experiment
from determined_dsat.store.run_dir import RunDirectory
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord, TrialResult
from determined_dsat.trials.search_outcome import SearchOutcome

logger = logging.getLogger("determined_dsat")

SESSION_STATE_VERSION = 1
# Settings that define a search; a resumed run must not change them.
_SEARCH_DEFINING = ("method", "metric", "random_seed", "zero_stages", "max_trials", "backend")

ExecutorFactory = Callable[[ConfigSpace, RunDirectory], TrialExecutor]


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
        self._elapsed_offset = 0.0
        self._estimated = False

    def run(self) -> SearchOutcome:
        """Run (or resume) the search to its end; the caller holds the run directory."""
        if not self.run_dir.locked:
            raise RuntimeError(f"enter the run directory {self.run_dir.path} before the search")
        executor = self._make_executor(self.space, self.run_dir)
        self.executor = executor
        engine = SearchEngine(
            self.method, executor, self._on_trial_finished, None, clock=self._elapsed_s
        )
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

    def _elapsed_s(self) -> float:
        """The search's wall seconds, across resumes (the executor's clock: simulated on
        replay)."""
        return self._elapsed_offset + self.executor.elapsed_s()

    def _announce_plan(self) -> None:
        """Say, before any trial runs, how many trials and how much time the search may
        spend."""
        plan = self.method.driver.planned_trials()
        budget = self.settings.time_budget_s
        message = (
            f"planned budget: {self.settings.max_trials} trials at most (profiling trial "
            f"included), {self.method.tracker.limits.concurrent_cap} at once"
            + ("" if budget is None else f", within {_duration(budget)} (--time-budget)")
            + (f"; {plan}" if plan else "")
        )
        self._say(message)

    def _say(self, message: str) -> None:
        logger.info("%s", message)
        print(f"dsat: {message}", file=self._stream, flush=True)

    def _estimate_wall_time(self) -> None:
        """Once a trial has trained, say how long the rest of the search will take at that
        pace (once)."""
        tracker = self.method.tracker
        typical = tracker.typical_duration_s()
        trained = any(r.succeeded and r.spec.kind is not TrialKind.PROFILE
                      for r in tracker.finished_records())  # fmt: skip
        if self._estimated or typical is None or not trained:
            return
        self._estimated = True
        left = max(0, tracker.limits.max_trials - tracker.num_finished)
        rounds = -(-left // max(1, tracker.limits.concurrent_cap))
        estimate = rounds * typical
        budget = tracker.time_left_s
        if budget is not None:
            estimate = min(estimate, max(0.0, budget))
        self._say(
            f"a trial takes about {_duration(typical)}; the rest of the search at most about "
            f"{_duration(estimate)} ({left} trials, {tracker.limits.concurrent_cap} at once)"
        )

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
        if state.get("executor") is not None:
            executor.load_state_dict(state["executor"])
        else:
            engine.resume(finished=frozenset(logged))
        # The time already spent counts against --time-budget; the clock goes on from it.
        self._elapsed_offset = self.method.tracker.elapsed_s - executor.elapsed_s()
        self._estimated = True
        self._already_logged = set(logged)
        self._restore_best()
        for trial in list(engine.trials.values()):
            line = logged.get(trial.request_id)
            if trial.result is None and line is not None:
                # Finished and logged before the crash, but not in the saved state.
                executor.take(trial.request_id)
                engine.complete(_completion_from_line(line, trial))
        logger.info(
            "resumed: %d trials finished, %d running",
            self.method.tracker.num_finished,
            self.method.tracker.num_running,
        )

    def _restore_best(self) -> None:
        """Check the best pair on disk against the saved state; rewrite it when a crash
        left it inconsistent, missing or behind."""
        best, metrics = self.method.tracker.recommended(), self.method.tracker.recommended_metrics()
        if best is None or metrics is None:
            return
        self._best_key = (best.spec.request_id, json.dumps(metrics, sort_keys=True))
        config = self.method.best_ds_config() or {}
        try:
            pair = self.run_dir.read_best()
        except ConfigError as exc:
            logger.warning("%s; rewriting it from the saved search state", exc)
            pair = None
        if pair is None or pair.ds_config != config or pair.metrics != dict(metrics):
            self.run_dir.write_best(config, metrics)

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
        best, metrics = tracker.recommended(), tracker.recommended_metrics()
        key = None if best is None else (best.spec.request_id, json.dumps(metrics, sort_keys=True))
        if best is not None and metrics is not None and key != self._best_key:
            self._best_key = key
            self.run_dir.write_best(self.method.best_ds_config() or {}, metrics)
        label = None if best is None else console.best_label(best, self.settings.metric)
        self._bar.update(tracker.num_finished, tracker.num_running, label, tracker.time_left_s)
        self._estimate_wall_time()

    def _checkpoint(self, engine: SearchEngine, executor: TrialExecutor) -> None:
        fresh = self.method.tracker.finished_since(self._journaled)
        self.run_dir.append_journal([r.to_json() for r in fresh])
        self._journaled += len(fresh)
        self.run_dir.write_state(
            {
                "version": SESSION_STATE_VERSION,
                "method": self.method.state_dict(self._journaled),
                "engine": engine.state_dict(),
                "executor": executor.state_dict(),
            }
        )

    def _outcome(self) -> SearchOutcome:
        return self.method.outcome()


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
        text += f" ({short_detail(record.result.detail)})"
    return text


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
