"""How a whole search ended, as the summary and the full experiment see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.trials.records import TrialRecord


@attrs.frozen
class SearchOutcome:
    """The best record (if any), why the search stopped, whether it failed, every finished
    record, the best's metrics (medians once confirmed), the baseline trial and how many
    measurements the best's metrics summarise."""

    best: TrialRecord | None
    message: str
    failed: bool
    records: tuple[TrialRecord, ...]
    best_metrics: Mapping[str, Any] | None = None
    baseline: TrialRecord | None = None
    measurements: int = 1
