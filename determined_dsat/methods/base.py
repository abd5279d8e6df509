"""What a search method is: a pure policy that proposes trials from what it has seen.

Policies never do I/O, read clocks or touch global random state. They get a read-only
view of the trials (``TrackerView``) and an injected ``numpy.random.Generator``; their own
state is a JSON-able dict, so a resumed search makes the same decisions.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from determined_dsat.space.batch import SearchBounds
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.view import TrackerView


@attrs.frozen
class Proposal:
    """A trial a policy wants run. ``lineage_id`` groups the steps of one bisection."""

    zero: Mapping[str, Any]
    mbs: int
    lineage_id: str
    parent_id: str | None = None
    bounds: SearchBounds | None = None
    rung: int = 0

    @property
    def stage(self) -> int:
        return int(self.zero.get("stage", 0))


class SearchPolicy(abc.ABC):
    """Base class of search methods. Subclasses implement :meth:`propose`."""

    name: ClassVar[str]

    def __init__(self, space: ConfigSpace, options: Any) -> None:
        self.space = space
        self.options = options
        # How many trials the last propose held back because they would run past the
        # view's ``trial_allowance_s``: the search then ends on time, not as exhausted.
        # Set anew by every propose, so not state.
        self.held_back_for_time = 0

    @abc.abstractmethod
    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        """Up to ``capacity`` trials to start now. An empty list with nothing running ends the
        search. ``view`` must not be modified. Under a time budget, trials expected to run
        past ``view.trial_allowance_s`` are held back and counted in
        :attr:`held_back_for_time`."""

    def observe(self, view: TrackerView, record: TrialRecord) -> None:  # noqa: B027
        """Called once per finished search trial, before the next :meth:`propose`."""

    def stop_reason(self, view: TrackerView) -> str | None:
        """A plain-language reason to stop launching trials (e.g. early stopping), or None."""
        return None

    def planned_trials(self) -> str | None:
        """A one-line description of the planned budget, printed before the search."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that, with the tracker and RNG, reproduces future decisions."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore :meth:`state_dict`."""
