"""The searcher side of a live-trial test: a one-trial custom search run by determined's own
``SearchRunner`` in a thread, while the test runs the trial's process."""

from __future__ import annotations

import json
import pathlib
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from determined import searcher
from determined.experimental import client

from .records import TrialRecord
from .server import MasterDouble


class OneTrialSearch(searcher.SearchMethod):
    """One trial with ``hparams``: ``ValidateAfter(length)``, then ``Close``, then ``Shutdown``.

    ``completions`` holds (metric, train length) of each ``validationCompleted`` and
    ``exits`` each ``trialExitedEarly`` reason.
    """

    def __init__(self, hparams: Mapping[str, Any], length: int) -> None:
        super().__init__()
        self.hparams = dict(hparams)
        self.length = length
        self.request_id = uuid.uuid4()
        self.completions: list[tuple[Any, int]] = []
        self.exits: list[searcher.ExitedReason] = []

    def initial_operations(self, _: searcher.SearcherState) -> list[searcher.Operation]:
        return [searcher.Create(self.request_id, self.hparams, checkpoint=None)]

    def on_trial_created(
        self, _: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        return [searcher.ValidateAfter(request_id, self.length)]

    def on_validation_completed(
        self, _: searcher.SearcherState, request_id: uuid.UUID, metric: Any, train_length: int
    ) -> list[searcher.Operation]:
        self.completions.append((metric, train_length))
        return [searcher.Close(request_id)]

    def on_trial_exited_early(
        self,
        _: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> list[searcher.Operation]:
        self.exits.append(exited_reason)
        return []

    def on_trial_closed(
        self, _: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        return [searcher.Shutdown()]

    def progress(self, searcher_state: searcher.SearcherState) -> float:
        done = float(searcher_state.trial_progress.get(self.request_id, 0.0))
        return 1.0 if self.completions else min(done / self.length, 1.0)

    def save_method_state(self, path: pathlib.Path) -> None:
        metrics = [[metric, length] for metric, length in self.completions]
        (path / "one_trial.json").write_text(json.dumps(metrics))

    def load_method_state(self, path: pathlib.Path) -> None:
        loaded = json.loads((path / "one_trial.json").read_text())
        self.completions = [(metric, int(length)) for metric, length in loaded]


class SearchThread(threading.Thread):
    """``SearchRunner.run_experiment`` of a custom experiment, logged in as the user."""

    def __init__(
        self,
        master: MasterDouble,
        method: searcher.SearchMethod,
        config: Mapping[str, Any],
        model_dir: pathlib.Path,
        includes: Sequence[pathlib.Path] = (),
    ) -> None:
        super().__init__(name="search-runner", daemon=True)
        self.master = master
        self.runner = searcher.SearchRunner(method)
        d = client.Determined(master=master.url, user="determined", password="")
        self.session = d._session
        exp = d.create_experiment(dict(config), str(model_dir), includes=list(includes))
        self.experiment_id = exp.id
        self.runner.state.experiment_id = exp.id
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.runner.run_experiment(self.experiment_id, self.session, None, sleep_time=0)
        except BaseException as e:  # the test reports it
            self.error = e

    def wait_for_operation(self, timeout_s: float = 30.0) -> TrialRecord:
        """The experiment's one trial, once its ``ValidateAfter`` is pending."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            trials = list(self.master.experiment(self.experiment_id).trials.values())
            if trials and trials[0].pending_length is not None:
                return trials[0]
            time.sleep(0.02)
        raise AssertionError(f"no trial got a ValidateAfter within {timeout_s} s")

    def finish(self, timeout_s: float = 30.0) -> None:
        """Wait for the search to end; fails with the double's anomalies if it does not."""
        self.join(timeout_s)
        if self.is_alive():
            anomalies = self.master.experiment(self.experiment_id).anomalies
            # A user cancel ends the runner (experimentInactive) instead of leaving it polling.
            self.master.set_experiment_state(self.experiment_id, "CANCELED")
            self.join(5.0)
            raise AssertionError(f"the search did not end within {timeout_s} s: {anomalies}")
        if self.error is not None:
            raise self.error
