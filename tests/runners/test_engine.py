"""The search engine: a finished trial is observed before anything it triggers runs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from determined import searcher

from determined_dsat.runners.engine import EngineTrial, SearchEngine
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.trials.records import Outcome, TrialResult


class OneAfterAnother(searcher.SearchMethod):
    """Creates a trial, and one more each time a trial finishes."""

    def __init__(self) -> None:
        self.created = 0

    def _next(self) -> list[searcher.Operation]:
        self.created += 1
        rid = uuid.uuid4()
        return [searcher.Create(rid, {"n": self.created}, None),
                searcher.ValidateAfter(rid, 1)]  # fmt: skip

    def initial_operations(self, state: searcher.SearcherState) -> list[searcher.Operation]:
        return self._next()

    def on_trial_created(self, state: Any, request_id: uuid.UUID) -> list[searcher.Operation]:
        return []

    def on_validation_completed(
        self, state: Any, request_id: uuid.UUID, metric: Any, train_length: int
    ) -> list[searcher.Operation]:
        return [searcher.Close(request_id), *self._next()]

    def on_trial_closed(self, state: Any, request_id: uuid.UUID) -> list[searcher.Operation]:
        return []

    def on_trial_exited_early(
        self, state: Any, request_id: uuid.UUID, exited_reason: searcher.ExitedReason
    ) -> list[searcher.Operation]:
        return []

    def progress(self, state: Any) -> float:
        return 0.0


class FailsSecondLaunch(TrialExecutor):
    def __init__(self) -> None:
        self.queue: list[str] = []
        self.launches = 0

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        self.launches += 1
        if self.launches == 2:
            raise RuntimeError("the second launch fails")
        self.queue.append(request_id)

    def next_completion(self) -> Completion:
        rid = self.queue.pop(0)
        return Completion(rid, TrialResult(Outcome.OK, {"throughput": 1.0}, 1.0), 1)

    @property
    def num_running(self) -> int:
        return len(self.queue)

    def cancel_all(self) -> None:
        self.queue.clear()


def test_a_failing_launch_does_not_hide_the_trial_that_finished_before_it() -> None:
    observed: list[str] = []

    def observe(trial: EngineTrial) -> None:
        observed.append(trial.request_id)

    executor = FailsSecondLaunch()
    engine = SearchEngine(OneAfterAnother(), executor, observe)
    engine.start()
    first = executor.queue[0]
    with pytest.raises(RuntimeError, match="second launch"):
        engine.complete(executor.next_completion())
    assert observed == [first]
