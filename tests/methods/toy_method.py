"""A toy search method, written as a plug-in would be: one module with its policy, options
and CLI arguments, registered with one line (``registry.register(METHOD)``)."""

from __future__ import annotations

import argparse

import attrs
import numpy as np

from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.spec import MethodSpec, add_option, at_least
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.view import TrackerView


@attrs.frozen
class ToyOptions:
    """``toy``: try micro-batches 1, 2, ... up to ``largest`` at the first stage."""

    largest: int = 3


class ToyPolicy(SearchPolicy):
    name = "toy"
    options: ToyOptions

    def __init__(self, space: ConfigSpace, options: ToyOptions) -> None:
        super().__init__(space, options)
        self.next_mbs = 1

    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        out = []
        while len(out) < capacity and self.next_mbs <= self.options.largest:
            stage = self.space.stages[0]
            out.append(Proposal({"stage": stage}, self.next_mbs, lineage_id="toy"))
            self.next_mbs += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"next_mbs": self.next_mbs}

    def load_state_dict(self, state: dict[str, int]) -> None:  # type: ignore[override]
        self.next_mbs = int(state["next_mbs"])


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_option(p, "--largest", "the largest micro-batch to try", type=int, default=3)


def _read_options(a: argparse.Namespace) -> ToyOptions:
    at_least("--largest", a.largest, 1)
    return ToyOptions(a.largest)


METHOD = MethodSpec(
    name=ToyPolicy.name,
    help="a toy: micro-batches 1..N at one stage",
    options=ToyOptions,
    policy=ToyPolicy,
    add_arguments=_add_arguments,
    read_options=_read_options,
)
