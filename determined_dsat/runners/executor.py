"""What runs trials: the executor contract the engine drives (local processes, replay).

``launch`` starts a trial, ``next_completion`` blocks until one of the launched trials
ends, ``cancel_all`` stops every running trial (also on Ctrl-C). Executors that can
resume exactly (the replay's simulated clock) override ``state_dict``/``load_state_dict``;
``take`` drops a trial known to have finished already (logged before a crash).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.trials.records import TrialResult


@attrs.frozen
class Completion:
    """A trial that ended, as an executor saw it (``length``: what it was asked to run)."""

    request_id: str
    result: TrialResult
    length: int


class TrialExecutor(abc.ABC):
    """Runs trials for the engine; see the module docstring."""

    @abc.abstractmethod
    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        """Start a trial with these hyperparameters for ``length`` batches."""

    @abc.abstractmethod
    def next_completion(self) -> Completion:
        """Block until a launched trial ends; its completion."""

    @property
    @abc.abstractmethod
    def num_running(self) -> int:
        """Trials launched and not yet returned by :meth:`next_completion`."""

    @abc.abstractmethod
    def cancel_all(self) -> None:
        """Stop every running trial (no completions for them)."""

    def elapsed_s(self) -> float:
        """Seconds of trial time this executor has seen: wall seconds since its first call
        here (the replay executor's simulated clock instead)."""
        started = getattr(self, "_started_at", None)
        if started is None:
            started = self._started_at = time.monotonic()
        return time.monotonic() - float(started)

    def take(self, request_id: str) -> None:  # noqa: B027 - nothing to drop by default
        """Forget a running trial known to have finished (on resume)."""

    def state_dict(self) -> dict[str, Any] | None:
        """What an exact resume needs (None: relaunch the running trials instead)."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore :meth:`state_dict`."""
