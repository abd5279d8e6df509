"""How a whole search ended, as the summary and the full experiment see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.trials.records import TrialRecord


@attrs.frozen
class SearchOutcome:
    """The recommended record (the search's best, or the baseline when nothing searched
    beat it), why the search stopped, whether it failed, every finished record, the
    recommendation's metrics (medians once confirmed), the baseline trial, how many
    measurements the metrics summarise, the ZeRO stages the search was asked to try and
    the search's own best (which the baseline may beat)."""

    best: TrialRecord | None
    message: str
    failed: bool
    records: tuple[TrialRecord, ...]
    best_metrics: Mapping[str, Any] | None = None
    baseline: TrialRecord | None = None
    measurements: int = 1
    stages: tuple[int, ...] = ()
    search_best: TrialRecord | None = None
    search_best_metrics: Mapping[str, Any] | None = None
