"""``binary``: bisection on micro-batch size for a handful of random ZeRO configurations.

As many lineages run as trials may run at once; when one's range is exhausted, a new
random configuration takes its place until the trial budget is spent.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.lineage import (
    LineageBook,
    bisection_step,
    continue_then_start,
    start_lineage,
)
from determined_dsat.methods.spec import MethodSpec, add_search_range_factor, range_factor
from determined_dsat.methods.trial_cost import ProposalCost, TimeLimit
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.view import TrackerView


@attrs.frozen
class BinaryOptions:
    """``binary``: ``search_range_factor`` scales the memory model's micro-batch ceiling."""

    search_range_factor: float = 1.0


class BinaryPolicy(SearchPolicy):
    name = "binary"
    options: BinaryOptions

    def __init__(self, space: ConfigSpace, options: BinaryOptions) -> None:
        super().__init__(space, options)
        self.book = LineageBook()

    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        def next_step(lineage_id: str) -> Proposal | None:
            latest = view.latest_in_lineage(lineage_id)
            return None if latest is None else bisection_step(latest, self.space, view=view)

        def new_lineage() -> Proposal | None:
            zero = self.book.sample_zero(self.space, self.space.stages, rng, view.profile)
            if zero is None:
                return None
            factor = self.options.search_range_factor
            return start_lineage(self.book, self.space, view, zero, factor)

        limit = TimeLimit(view.trial_allowance_s, lambda: ProposalCost.of(view, self.space))
        proposals = continue_then_start(
            self.book, view, capacity, next_step, new_lineage, limit.proposal_cost, limit
        )
        self.held_back_for_time = limit.held_back
        return proposals

    def state_dict(self) -> dict[str, Any]:
        return {"book": self.book.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.book.load_state_dict(state["book"])


def _read_options(a: argparse.Namespace) -> BinaryOptions:
    return BinaryOptions(range_factor(a.search_range_factor))


METHOD = MethodSpec(
    name=BinaryPolicy.name,
    help="bisection on micro-batch size for random ZeRO configs",
    options=BinaryOptions,
    policy=BinaryPolicy,
    add_arguments=add_search_range_factor,
    read_options=_read_options,
)
