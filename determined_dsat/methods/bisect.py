"""The one bisection on micro-batch size that every method shares.

A lineage keeps an inclusive range of micro-batches still worth trying. A success
raises the floor; an OOM (or crash) lowers the ceiling and makes it hard. While the
ceiling is only the memory model's estimate, a success at it doubles the range
instead of ending the search: estimates err low as often as high.
"""

from __future__ import annotations

from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.trials.records import SearchBounds


def size(bounds: SearchBounds, grid: MicroBatchGrid) -> int:
    """How many allowed micro-batches remain in the range."""
    return grid.count_in(bounds.lo, bounds.hi)


def midpoint(bounds: SearchBounds, grid: MicroBatchGrid) -> int | None:
    """The allowed micro-batch in the middle of the range (upper median), or None if empty.

    The upper median is taken because throughput grows with micro-batch size: of two
    middle candidates, the larger one teaches as much and is more likely the answer.
    """
    n = size(bounds, grid)
    if n == 0:
        return None
    return grid.nth_in(bounds.lo, bounds.hi, n // 2)


def narrow(
    bounds: SearchBounds, mbs: int, fitted: bool, grid: MicroBatchGrid
) -> SearchBounds | None:
    """The range left after trying ``mbs``; None when nothing is left to try.

    ``fitted`` is whether the trial at ``mbs`` ran (any non-OOM, non-crash result).
    """
    if not fitted:
        narrowed = SearchBounds(lo=bounds.lo, hi=mbs - 1, hi_is_hard=True)
    elif mbs >= bounds.hi and not bounds.hi_is_hard:
        narrowed = _widen(mbs, grid)
    else:
        narrowed = SearchBounds(lo=mbs + 1, hi=bounds.hi, hi_is_hard=bounds.hi_is_hard)
    return narrowed if size(narrowed, grid) > 0 else None


def _widen(mbs: int, grid: MicroBatchGrid) -> SearchBounds:
    hi = 2 * mbs
    cap = grid.max_mbs
    if cap is not None and hi >= cap:
        return SearchBounds(lo=mbs + 1, hi=cap, hi_is_hard=True)
    return SearchBounds(lo=mbs + 1, hi=hi, hi_is_hard=False)
