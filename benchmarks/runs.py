"""One benchmark search as a record: who searched, where, and every trial's columns.

A :class:`Run` is what the search-efficiency and robustness benchmarks keep of a search:
the implementation and method, the landscape (family, key, sweep), the random seed and the
number of trials at once, how it ended, the noise-free value of its final pick, and its
trials in completion order as compact columns (``recording.trials_to_json``): values are
fractions of the landscape's optimum, so a run scores without its landscape. It is also
the unit the benchmarks' worker processes send back, as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from benchmarks.recording import OUTCOME_CODES, TrialLog, trials_to_json

Entry = tuple[str, str]
"""(implementation, method): ``("ours", "model")``, ``("deepspeed", "grid")``, ..."""

OOM_CODE = OUTCOME_CODES["oom"]


def _tuple(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(values)


@attrs.frozen
class Run:
    """One search of one method on one landscape with one seed and concurrency."""

    impl: str
    method: str
    family: str
    landscape: str  # the landscape's key
    seed: int
    concurrency: int  # trials at once
    ended: str
    pick: float  # noise-free value of the final pick over the optimum (0: none, or OOM)
    outcomes: str  # one OUTCOME_CODES letter per trial, in completion order
    kinds: str  # one KIND_CODES letter per trial
    stage: tuple[int | None, ...] = attrs.field(converter=_tuple)
    mbs: tuple[int | None, ...] = attrs.field(converter=_tuple)
    fraction: tuple[float, ...] = attrs.field(converter=_tuple)  # noise-free / optimum
    finish_s: tuple[float, ...] = attrs.field(converter=_tuple)  # simulated clock
    sweep: str = ""  # e.g. "noise=0.03"; empty for the family's own draw

    @property
    def entry(self) -> Entry:
        return self.impl, self.method

    @property
    def num_trials(self) -> int:
        return len(self.outcomes)

    @property
    def oom_trials(self) -> int:
        return self.outcomes.count(OOM_CODE)

    @classmethod
    def of(
        cls,
        *,
        entry: Entry,
        family: str,
        landscape: str,
        seed: int,
        concurrency: int,
        ended: str,
        trials: Sequence[TrialLog],
        pick_value: float,
        optimum: float,
        sweep: str = "",
    ) -> Run:
        """A run from its logged trials (absolute values) and its landscape's optimum."""
        columns = trials_to_json(trials, optimum)
        return cls(
            impl=entry[0],
            method=entry[1],
            family=family,
            landscape=landscape,
            seed=seed,
            concurrency=concurrency,
            ended=ended,
            pick=round(pick_value / optimum, 6) if optimum > 0 else 0.0,
            sweep=sweep,
            **columns,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            field.name: list(v) if isinstance(v := getattr(self, field.name), tuple) else v
            for field in attrs.fields(Run)
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        names = {field.name for field in attrs.fields(Run)}
        return cls(**{k: v for k, v in data.items() if k in names})
