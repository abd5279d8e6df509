"""The one bisection on micro-batch size that every method shares.

A lineage keeps an inclusive range of micro-batches still worth trying. A success
raises the floor; an OOM (or crash) lowers the ceiling and makes it hard. While the
ceiling is only the memory model's estimate, a success at it doubles the range
instead of ending the search: estimates err low as often as high.
"""

from __future__ import annotations

import math

from determined_dsat.space.batch import MicroBatchGrid, SearchBounds

WIDENING_TOLERANCE = 0.5
"""Above the memory estimate, a failed probe ends the search once the gap is this small."""


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
    bounds: SearchBounds,
    mbs: int,
    fitted: bool,
    grid: MicroBatchGrid,
    tolerance: float = 0.0,
) -> SearchBounds | None:
    """The range left after trying ``mbs``; None when nothing is left worth trying.

    ``fitted`` is whether the trial at ``mbs`` ran (any non-OOM, non-crash result).
    ``tolerance`` (a fraction) ends the refinement once every micro-batch left is within
    that fraction of the best one that fitted: throughput saturates with micro-batch
    size, so the last few percent are not worth an OOM. With a tolerance, a failed probe
    above the memory model's estimate also ends the upward search when the gap left is
    under :data:`WIDENING_TOLERANCE`. A tolerance of 0 finds the exact limit.
    """
    if not fitted:
        narrowed = SearchBounds(lo=bounds.lo, hi=mbs - 1, hi_is_hard=True)
        gap = (
            max(tolerance, WIDENING_TOLERANCE) if bounds.probe_ceiling and tolerance else tolerance
        )
        if _close_enough(narrowed, gap):
            return None
    elif not bounds.hi_is_hard and grid.count_in(mbs + 1, bounds.hi) == 0:
        widened = _widen(mbs, grid, galloping=bounds.probe_ceiling)
        return widened if widened is not None and size(widened, grid) > 0 else None
    else:
        narrowed = SearchBounds(lo=mbs + 1, hi=bounds.hi, hi_is_hard=bounds.hi_is_hard)
        if narrowed.hi_is_hard and _close_enough(narrowed, tolerance):
            return None
    return narrowed if size(narrowed, grid) > 0 else None


def _close_enough(bounds: SearchBounds, tolerance: float) -> bool:
    """Whether the range above the best success (``lo - 1``) is within ``tolerance`` of it."""
    best = bounds.lo - 1
    return tolerance > 0 and best >= 1 and bounds.hi <= best * (1 + tolerance)


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
