"""Which search space's knob table has the larger optimum, landscape by landscape."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs
import numpy as np

from benchmarks.efficiency import _REL_TOL, LandscapeInfo


@attrs.frozen
class TableComparison:
    """Over the feasible landscapes: which knob table's optimum is the larger, by how much.

    Gaps are relative, larger optimum over smaller minus one.
    """

    landscapes: int
    ours_larger: int
    upstream_larger: int
    equal: int
    mean_gap: float  # over all feasible landscapes (0 where equal)
    mean_gap_ours_larger: float
    mean_gap_upstream_larger: float
    max_gap_ours_larger: float
    max_gap_upstream_larger: float
    mean_upstream_over_ours: float  # mean of upstream optimum / ours (signed comparison)


def compare_tables(infos: Iterable[LandscapeInfo]) -> TableComparison:
    ours_gaps: list[float] = []
    upstream_gaps: list[float] = []
    ratios: list[float] = []
    equal = 0
    for info in infos:
        if not info.feasible:
            continue
        ours, up = info.ours_space_optimum, info.upstream_space_optimum
        ratios.append(up / ours if ours > 0 else math.inf)
        if math.isclose(ours, up, rel_tol=_REL_TOL):
            equal += 1
        elif ours > up:
            ours_gaps.append(ours / up - 1.0 if up > 0 else math.inf)
        else:
            upstream_gaps.append(up / ours - 1.0 if ours > 0 else math.inf)
    count = len(ratios)

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    return TableComparison(
        landscapes=count,
        ours_larger=len(ours_gaps),
        upstream_larger=len(upstream_gaps),
        equal=equal,
        mean_gap=(sum(ours_gaps) + sum(upstream_gaps)) / count if count else 0.0,
        mean_gap_ours_larger=mean(ours_gaps),
        mean_gap_upstream_larger=mean(upstream_gaps),
        max_gap_ours_larger=max(ours_gaps, default=0.0),
        max_gap_upstream_larger=max(upstream_gaps, default=0.0),
        mean_upstream_over_ours=mean(ratios),
    )
