"""The one bisection on micro-batch size that every method shares.

A lineage keeps an inclusive range of micro-batches still worth trying. A success
raises the floor; an OOM (or crash) lowers the ceiling and makes it hard. While the
ceiling is only the memory model's estimate, a success at it doubles the range
instead of ending the search: estimates err low as often as high.
"""

from __future__ import annotations

import math

from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.trials.records import SearchBounds


def size(bounds: SearchBounds, grid: MicroBatchGrid) -> int:
    """How many allowed micro-batches remain in the range."""
    return grid.count_in(bounds.lo, bounds.hi)


def midpoint(bounds: SearchBounds, grid: MicroBatchGrid) -> int | None:
    """The next micro-batch to try in the range, or None if it is empty.

    Bisection takes the upper median: throughput grows with micro-batch size, so of two
    middle candidates the larger one teaches as much and is more likely the answer.
    Right after a widening it takes the new ceiling itself (galloping search).
    """
    n = size(bounds, grid)
    if n == 0:
        return None
    return grid.nth_in(bounds.lo, bounds.hi, n - 1 if bounds.probe_ceiling else n // 2)


def narrow(
    bounds: SearchBounds, mbs: int, fitted: bool, grid: MicroBatchGrid
) -> SearchBounds | None:
    """The range left after trying ``mbs``; None when nothing is left to try.

    ``fitted`` is whether the trial at ``mbs`` ran (any non-OOM, non-crash result).
    """
    if not fitted:
        narrowed: SearchBounds | None = SearchBounds(lo=bounds.lo, hi=mbs - 1, hi_is_hard=True)
    elif not bounds.hi_is_hard and grid.count_in(mbs + 1, bounds.hi) == 0:
        narrowed = _widen(mbs, grid, galloping=bounds.probe_ceiling)
    else:
        narrowed = SearchBounds(lo=mbs + 1, hi=bounds.hi, hi_is_hard=bounds.hi_is_hard)
    return narrowed if narrowed is not None and size(narrowed, grid) > 0 else None


def _widen(mbs: int, grid: MicroBatchGrid, galloping: bool) -> SearchBounds | None:
    """Grow the range above a success at the soft ceiling, and probe the new ceiling.

    The first step grows by half (the memory model is rarely off by more); further
    steps double, so a far-away limit still takes O(log) trials.
    """
    following = grid.next_above(mbs)
    if following is None:
        return None
    hi = max(2 * mbs if galloping else math.ceil(1.5 * mbs), following)
    cap = grid.max_mbs
    if cap is not None and hi >= cap:
        return SearchBounds(lo=mbs + 1, hi=cap, hi_is_hard=True, probe_ceiling=True)
    return SearchBounds(lo=mbs + 1, hi=hi, hi_is_hard=False, probe_ceiling=True)
