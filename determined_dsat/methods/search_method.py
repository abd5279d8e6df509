"""A :class:`SearchDriver` as Determined's ``SearchMethod``: the event API every runner
(cluster, local, replay) drives.

The shim only translates: events become ``tell``/``ask`` calls, specs become ``Create`` and
``ValidateAfter`` operations, an ending becomes ``Shutdown``. Runners that know more than
Determined's ``ERRORED`` (an OOM, a timeout) say so with :meth:`note_outcome` first.
"""

from __future__ import annotations

import json
import pathlib
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from determined import searcher

from determined_dsat.jsonio import write_json_atomic
from determined_dsat.methods.confirm import best_searched
from determined_dsat.methods.driver import SearchDriver
from determined_dsat.space.ds_config import trial_length
from determined_dsat.trials.records import OUTCOME_KEY, Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.search_outcome import SearchOutcome
from determined_dsat.trials.specs import best_ds_config_of, hparams_of

METHOD_STATE_FILE = "dsat_method_state.json"
"""The method's state in a search runner's checkpoints (``SearchMethod.save``)."""

_EXIT_OUTCOMES = {
    searcher.ExitedReason.ERRORED: Outcome.ERROR,
    searcher.ExitedReason.INVALID_HP: Outcome.INVALID,
    searcher.ExitedReason.USER_CANCELED: Outcome.CANCELLED,
}
_OUTCOMES = {o.value: o for o in Outcome}
Ops = list[searcher.Operation]


class DSATSearchMethod(searcher.SearchMethod):
    """A DeepSpeed Autotune search: profiling trial first, then the driver's trials."""

    def __init__(self, driver: SearchDriver) -> None:
        with warnings.catch_warnings():
            # Determined 0.37 deprecates custom searchers; this package is their replacement.
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__()
        self.driver = driver
        self.shutdown_sent = False
        # Created and not yet closed by the master: a Shutdown waits for every trialClosed,
        # or the master may end the experiment while events are still to be answered.
        self._open: set[str] = set()
        self._noted: dict[str, TrialResult] = {}

    # ----- what runners and reports read -----
    @property
    def tracker(self) -> Any:
        return self.driver.tracker

    @property
    def policy(self) -> Any:
        return self.driver.policy

    @property
    def stop_message(self) -> str | None:
        return None if self.driver.ending is None else self.driver.ending.message

    @property
    def failed(self) -> bool:
        return self.driver.failed

    def best_ds_config(self) -> dict[str, Any] | None:
        """The ds_config the search recommends now, complete and without the autotuning
        section (what ``best_ds_config.json`` holds); None before any trial trained."""
        best = self.tracker.recommended()
        return None if best is None else best_ds_config_of(self.driver.space, best.spec)

    def outcome(self) -> SearchOutcome:
        """How the search stands (at its end: how it ended), for the summary."""
        tracker = self.tracker
        metrics = tracker.recommended_metrics()
        best = tracker.recommended()
        # The search's own best, never the user's config (which may have won).
        searched, searched_metrics = tracker.best(), tracker.best_metrics()
        if searched is not None and searched.spec.kind is not TrialKind.SEARCH:
            found = best_searched(tracker)
            searched = None if found is None else found.record
            searched_metrics = None if found is None else dict(found.metrics)
        return SearchOutcome(
            best=best,
            message=self.stop_message or "the search ended",
            failed=self.failed or best is None,
            records=tuple(tracker.finished_records()),
            best_metrics=metrics,
            baseline=tracker.baseline_record,
            measurements=int((metrics or {}).get("dsat_measurements", 1)),
            stages=tuple(self.driver.space.stages),
            search_best=searched,
            search_best_metrics=searched_metrics,
        )

    def note_time(self, elapsed_s: float) -> None:
        """The search's wall seconds so far, from the runner's clock (for --time-budget)."""
        self.tracker.note_time(elapsed_s)

    def note_outcome(self, request_id: str, result: TrialResult) -> None:
        """How a trial really ended (outcome, detail, duration), before the master's event:
        Determined only says ``ERRORED``; local and replay runners know more."""
        self._noted[request_id] = result

    # ----- SearchMethod events -----
    def initial_operations(self, searcher_state: searcher.SearcherState) -> Ops:
        return self._launch(self.driver.start(), length=1)

    def on_trial_created(
        self, searcher_state: searcher.SearcherState, request_id: uuid.UUID
    ) -> Ops:
        return []

    def on_validation_completed(
        self,
        searcher_state: searcher.SearcherState,
        request_id: uuid.UUID,
        metric: Any,
        train_length: int,
    ) -> Ops:
        rid = str(request_id)
        if rid not in self.tracker:
            return []
        metrics = dict(metric) if isinstance(metric, Mapping) else {"value": metric}
        outcome = _OUTCOMES.get(str(metrics.pop(OUTCOME_KEY, Outcome.OK.value)), Outcome.OK)
        noted = self._noted.pop(rid, None)
        duration = None if noted is None else noted.duration_s
        self.driver.tell(rid, TrialResult(outcome, metrics, duration))
        return [searcher.Close(request_id)]

    def on_trial_exited_early(
        self,
        searcher_state: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> Ops:
        rid = str(request_id)
        if rid not in self.tracker:
            return []
        noted = self._noted.pop(rid, None)
        if noted is None:
            noted = TrialResult(_EXIT_OUTCOMES[exited_reason])
        self.driver.tell(rid, TrialResult(noted.outcome, {}, noted.duration_s, noted.detail))
        ending = self.driver.ending
        if ending is not None and ending.immediate and not self.shutdown_sent:
            return [self._shutdown()]
        return []

    def on_trial_closed(self, searcher_state: searcher.SearcherState, request_id: uuid.UUID) -> Ops:
        self._open.discard(str(request_id))
        self.driver.abandon(str(request_id), "closed before it reported")
        if self.shutdown_sent:
            return []
        if self.driver.ending is None:
            ops = self._launch(self.driver.ask(), trial_length(self.driver.space.last_profile_step))
            if ops or self.driver.ending is None:
                return ops
        idle = self.tracker.num_running == 0 and not self._open
        return [self._shutdown()] if idle else []

    def progress(self, searcher_state: searcher.SearcherState) -> float:
        tracker = self.tracker
        return float(min(1.0, tracker.num_finished / tracker.limits.max_trials))

    # ----- operations -----
    def _launch(self, specs: Sequence[TrialSpec], length: int) -> Ops:
        ops: Ops = []
        for spec in specs:
            rid = uuid.UUID(spec.request_id)
            self._open.add(spec.request_id)
            hparams = hparams_of(self.driver.space, spec)
            run_length = 1 if spec.kind is TrialKind.PROFILE else length
            ops.append(searcher.Create(request_id=rid, hparams=hparams, checkpoint=None))
            ops.append(searcher.ValidateAfter(request_id=rid, length=run_length))
        return ops

    def _shutdown(self) -> searcher.Shutdown:
        self.shutdown_sent = True
        ending = self.driver.ending
        failed = (ending is not None and ending.failed) or self.tracker.recommended() is None
        return searcher.Shutdown(cancel=ending is not None and ending.cancel, failure=failed)

    # ----- persistence -----
    def state_dict(self, journaled: int = 0) -> dict[str, Any]:
        """JSON-able state; :meth:`load_state_dict` on a fresh method continues identically."""
        return {
            **self.driver.state_dict(journaled),
            "shutdown_sent": self.shutdown_sent,
            "open_trials": sorted(self._open),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], journal: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        self.driver.load_state_dict(state, journal)
        self.shutdown_sent = bool(state.get("shutdown_sent", False))
        self._open = set(state.get("open_trials", []))

    def save_method_state(self, path: pathlib.Path) -> None:
        write_json_atomic(path / METHOD_STATE_FILE, self.state_dict())

    def load_method_state(self, path: pathlib.Path) -> None:
        self.load_state_dict(json.loads((path / METHOD_STATE_FILE).read_text()))
