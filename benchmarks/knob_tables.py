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


def table_gaps(family_name: str, count: int) -> tuple[int, int, float]:
    """(feasible landscapes, landscapes where our table's optimum is below 99 % of the best
    over ours, upstream's and DeepSpeed's tables, the smallest such ratio)."""
    from benchmarks.efficiency import SpaceOptima, search_tables
    from benchmarks.families.catalog import family

    upstream, native_table = search_tables()
    feasible, short, worst = 0, 0, 1.0
    for landscape in family(family_name).draw(count):
        optima = SpaceOptima.of(landscape, upstream, native_table)
        ours = optima.ours
        best = max(ours, optima.upstream, optima.native)
        if best <= 0.0:
            continue
        feasible += 1
        worst = min(worst, ours / best)
        short += ours < 0.99 * best
    return feasible, short, worst


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Landscapes whose optimum our knob table cannot express (within 1 %)."
    )
    parser.add_argument("--families", nargs="+", default=["tuning", "heldout"])
    parser.add_argument("--landscapes", type=int, default=30)
    args = parser.parse_args()
    for name in args.families:
        feasible, short, worst = table_gaps(name, args.landscapes)
        print(f"{name}: {short} of {feasible} landscapes below 99 % (worst {worst:.3f})")


if __name__ == "__main__":
    main()
