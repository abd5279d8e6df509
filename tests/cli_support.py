"""Shared by the CLI tests: a stand-in for ``runners.launch`` (its fixtures are in
conftest.py)."""

from __future__ import annotations

from determined_dsat.settings import SearchSettings
from determined_dsat.space.experiment import Experiment


class Launch:
    """Stands in for ``determined_dsat.runners.launch``; records every ``run_search`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[SearchSettings, Experiment]] = []
        self.result: int | BaseException = 0

    def run_search(self, settings: SearchSettings, experiment: Experiment) -> int:
        self.calls.append((settings, experiment))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result

    @property
    def settings(self) -> SearchSettings:
        assert len(self.calls) == 1
        return self.calls[0][0]
