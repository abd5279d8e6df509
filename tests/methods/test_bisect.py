"""Properties of the shared micro-batch bisection (``methods.bisect``) on every kind of grid.

A bisection is run to its end against a threshold oracle ("a micro-batch fits iff it is
<= T"). The expected answer is computed here by brute force from the grid's definition
(multiples of ``divisible_by``; with a fixed ``train_batch_size`` also divisors of
``train_batch_size / slots``), never from the grid's own helpers.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from determined_dsat.methods import bisect
from determined_dsat.space.batch import MicroBatchGrid, SearchBounds


def is_allowed(grid: MicroBatchGrid, mbs: int) -> bool:
    if mbs < 1 or mbs % grid.divisible_by:
        return False
    if grid.train_batch_size is None:
        return True
    return (grid.train_batch_size // grid.slots) % mbs == 0


def allowed_in(grid: MicroBatchGrid, lo: int, hi: int) -> list[int]:
    return [m for m in range(max(lo, 1), hi + 1) if is_allowed(grid, m)]


def per_slot_cap(grid: MicroBatchGrid) -> int | None:
    return None if grid.train_batch_size is None else grid.train_batch_size // grid.slots


def expected_answer(grid: MicroBatchGrid, threshold: int) -> int | None:
    """The largest allowed micro-batch that fits."""
    cap = per_slot_cap(grid)
    top = threshold if cap is None else min(threshold, cap)
    found = allowed_in(grid, 1, top)
    return found[-1] if found else None


def starting_bounds(grid: MicroBatchGrid, ceiling: int) -> SearchBounds:
    """The range a lineage starts from, as ``ConfigSpace.initial_bounds`` builds it: the
    estimate snapped down onto the grid (soft), or the grid's cap (hard) when it is above."""
    smallest = _smallest(grid)
    cap = per_slot_cap(grid)
    if cap is not None and ceiling >= cap:
        return SearchBounds(lo=smallest, hi=max(allowed_in(grid, 1, cap)), hi_is_hard=True)
    below = allowed_in(grid, 1, ceiling)
    return SearchBounds(lo=smallest, hi=below[-1] if below else smallest, hi_is_hard=False)


def _smallest(grid: MicroBatchGrid) -> int:
    m = 1
    while not is_allowed(grid, m):
        m += 1
    return m


def run_bisection(
    grid: MicroBatchGrid, bounds: SearchBounds, threshold: int, limit: int = 10_000
) -> tuple[list[int], list[bool]]:
    probes: list[int] = []
    fitted: list[bool] = []
    current: SearchBounds | None = bounds
    while current is not None:
        mbs = bisect.midpoint(current, grid)
        assert mbs is not None, f"narrow returned a range with nothing in it: {current}"
        assert current.lo <= mbs <= current.hi
        probes.append(mbs)
        fitted.append(mbs <= threshold)
        current = bisect.narrow(current, mbs, mbs <= threshold, grid)
        assert len(probes) <= limit, "bisection does not terminate"
    return probes, fitted


@st.composite
def free_grids(draw: st.DrawFn) -> MicroBatchGrid:
    return MicroBatchGrid(
        slots=draw(st.integers(1, 8)),
        default_gas=draw(st.integers(1, 4)),
        divisible_by=draw(st.integers(1, 6)),
    )


@st.composite
def fixed_grids(draw: st.DrawFn) -> MicroBatchGrid:
    slots = draw(st.integers(1, 8))
    d = draw(st.integers(1, 4))
    per_slot = d * draw(st.integers(1, 96))
    return MicroBatchGrid(slots=slots, train_batch_size=slots * per_slot, divisible_by=d)


any_grids = st.one_of(free_grids(), fixed_grids())
thresholds = st.integers(0, 5000)
ceilings = st.integers(1, 5000)


def check_result(grid: MicroBatchGrid, probes: list[int], fitted: list[bool], t: int) -> None:
    assert len(set(probes)) == len(probes), f"an mbs was tried twice: {probes}"
    assert all(is_allowed(grid, m) for m in probes), probes
    ok = [m for m, f in zip(probes, fitted) if f]
    assert (max(ok) if ok else None) == expected_answer(grid, t), (probes, fitted)


# ----- midpoint and narrow ------------------------------------------------------------------


@given(grid=any_grids, lo=st.integers(1, 300), width=st.integers(-3, 300), hard=st.booleans())
def test_midpoint_is_upper_median_of_allowed(
    grid: MicroBatchGrid, lo: int, width: int, hard: bool
) -> None:
    bounds = SearchBounds(lo=lo, hi=lo + width, hi_is_hard=hard)
    candidates = allowed_in(grid, lo, lo + width)
    assert bisect.size(bounds, grid) == len(candidates)
    expected = candidates[len(candidates) // 2] if candidates else None
    assert bisect.midpoint(bounds, grid) == expected


@given(grid=any_grids, lo=st.integers(1, 200), width=st.integers(0, 200), data=st.data())
def test_narrow_keeps_exactly_the_untried_side(
    grid: MicroBatchGrid, lo: int, width: int, data: st.DataObject
) -> None:
    hi = lo + width
    candidates = allowed_in(grid, lo, hi)
    if not candidates:
        return
    mbs = data.draw(st.sampled_from(candidates))
    hard = data.draw(st.booleans())
    bounds = SearchBounds(lo=lo, hi=hi, hi_is_hard=hard)

    after_fail = bisect.narrow(bounds, mbs, False, grid)
    below = [m for m in candidates if m < mbs]
    if below:
        assert after_fail is not None and after_fail.hi_is_hard
        assert allowed_in(grid, after_fail.lo, after_fail.hi) == below
    else:
        assert after_fail is None

    after_ok = bisect.narrow(bounds, mbs, True, grid)
    above = [m for m in candidates if m > mbs]
    if hard or mbs < hi:
        if above:
            assert after_ok is not None
            assert allowed_in(grid, after_ok.lo, after_ok.hi) == above
            assert after_ok.hi_is_hard == hard
        elif hard:
            assert after_ok is None
    else:
        # A success at a soft ceiling widens the range upward, never downward.
        if after_ok is not None:
            assert after_ok.lo == mbs + 1
            assert after_ok.hi >= mbs + 1


# ----- whole bisections -----------------------------------------------------------------------


@settings(max_examples=300)
@given(grid=any_grids, threshold=thresholds, ceiling=ceilings)
def test_bisection_without_widening_is_exact_and_logarithmic(
    grid: MicroBatchGrid, threshold: int, ceiling: int
) -> None:
    """Soft ceiling above the threshold, or the grid's hard cap: plain bisection.

    Each probe at least halves the candidates left (upper median: a success leaves
    ceil(n/2) - 1, a failure floor(n/2)), so n candidates take at most floor(log2 n) + 1.
    """
    bounds = starting_bounds(grid, ceiling)
    assume(bounds.hi_is_hard or threshold < bounds.hi)  # else it widens: tested below
    probes, fitted = run_bisection(grid, bounds, threshold)
    check_result(grid, probes, fitted, threshold)
    n = len(allowed_in(grid, bounds.lo, bounds.hi))
    assert len(probes) <= math.floor(math.log2(n)) + 1, (n, probes)


@settings(max_examples=300)
@given(grid=free_grids(), threshold=thresholds, ceiling=st.integers(1, 64))
@example(grid=MicroBatchGrid(slots=1), threshold=5000, ceiling=1)
@example(grid=MicroBatchGrid(slots=2, divisible_by=3), threshold=4999, ceiling=5)
def test_bisection_widens_past_a_low_soft_ceiling(
    grid: MicroBatchGrid, threshold: int, ceiling: int
) -> None:
    """Free global batch, estimate (soft ceiling) far below what fits: still exact.

    The bound: at most floor(log2(T / h)) + 1 widenings (each doubles the ceiling h and
    happens only after a success at it), so that many + 1 bisection phases, each over at
    most K candidates (all allowed mbs up to 2 max(T, h)): O(log(T/h) * log T) probes.
    """
    bounds = starting_bounds(grid, ceiling)
    probes, fitted = run_bisection(grid, bounds, threshold)
    check_result(grid, probes, fitted, threshold)
    h = bounds.hi
    k = len(allowed_in(grid, 1, 2 * max(threshold, h)))
    phases = (math.floor(math.log2(threshold / h)) + 2) if threshold >= h else 1
    assert len(probes) <= phases * (math.floor(math.log2(k)) + 1), probes


@settings(max_examples=300)
@given(grid=fixed_grids(), threshold=thresholds, ceiling=ceilings)
@example(
    grid=MicroBatchGrid(slots=1, train_batch_size=36), threshold=20, ceiling=4
)  # candidates 1 2 3 4 6 9 12 18 36: must find 18
@example(
    grid=MicroBatchGrid(slots=2, train_batch_size=52), threshold=20, ceiling=2
)  # per GPU 26, candidates 1 2 13 26: must find 13
def test_fixed_batch_bisection_widens_to_the_largest_fitting_divisor(
    grid: MicroBatchGrid, threshold: int, ceiling: int
) -> None:
    bounds = starting_bounds(grid, ceiling)
    probes, fitted = run_bisection(grid, bounds, threshold)
    check_result(grid, probes, fitted, threshold)


@settings(max_examples=200)
@given(threshold=st.integers(1, 10**6), ceiling=st.integers(1, 10**6))
@example(threshold=10**6, ceiling=1)
@example(threshold=1000, ceiling=250)
def test_widening_costs_logarithmically_many_probes(threshold: int, ceiling: int) -> None:
    """Exponential search bound: bisect the start range, double up to the threshold, then
    bisect the last doubling: log2(h) + log2(T/h) + log2(T) + 3 probes."""
    grid = MicroBatchGrid(slots=1)
    bounds = starting_bounds(grid, ceiling)
    probes, fitted = run_bisection(grid, bounds, threshold)
    check_result(grid, probes, fitted, threshold)
    h = bounds.hi
    bound = math.log2(h) + max(0.0, math.log2(threshold / h)) + math.log2(threshold) + 3
    assert len(probes) <= bound, (len(probes), bound)


@pytest.mark.parametrize("threshold", [0, 1, 7, 64, 65, 1000])
@pytest.mark.parametrize("ceiling", [1, 2, 63, 64, 4096])
def test_power_of_two_fixed_batch_is_exact(threshold: int, ceiling: int) -> None:
    """Powers of two (the common case) always double onto a candidate."""
    grid = MicroBatchGrid(slots=8, train_batch_size=8 * 64)
    probes, fitted = run_bisection(grid, starting_bounds(grid, ceiling), threshold)
    check_result(grid, probes, fitted, threshold)
    assert len(probes) <= 2 * 7


def run_with_tolerance(
    grid: MicroBatchGrid, bounds: SearchBounds, threshold: int, tolerance: float
) -> list[tuple[int, bool]]:
    probes: list[tuple[int, bool]] = []
    current: SearchBounds | None = bounds
    while current is not None:
        mbs = bisect.midpoint(current, grid)
        assert mbs is not None
        probes.append((mbs, mbs <= threshold))
        current = bisect.narrow(current, mbs, mbs <= threshold, grid, tolerance)
        assert len(probes) <= 200, "bisection with a tolerance does not terminate"
    return probes


@settings(max_examples=300)
@given(
    ceiling=st.integers(1, 400),
    threshold=st.integers(1, 2000),
    tolerance=st.sampled_from([0.02, 0.05, 0.1]),
    divisible_by=st.integers(1, 4),
)
def test_tolerance_stops_close_to_the_limit(
    ceiling: int, threshold: int, tolerance: float, divisible_by: int
) -> None:
    """With a tolerance, the best success is within the tolerance of the true limit when
    the limit is below the estimate, and within the widening gap above it; never beyond."""
    grid = MicroBatchGrid(slots=1, divisible_by=divisible_by)
    assume(threshold >= divisible_by)
    probes = run_with_tolerance(grid, starting_bounds(grid, ceiling), threshold, tolerance)
    ok = [m for m, fitted in probes if fitted]
    assert ok, "the smallest micro-batch fits, so some probe must succeed"
    best = max(ok)
    truth = (threshold // divisible_by) * divisible_by
    assert best <= truth
    gap = tolerance if truth <= ceiling else max(tolerance, bisect.WIDENING_TOLERANCE)
    # A success at `best`, with everything above it within the gap (or failed), ends it.
    assert truth <= best * (1 + gap) + divisible_by, (best, truth, probes)
    exact = run_bisection(grid, starting_bounds(grid, ceiling), threshold)[0]
    assert len(probes) <= len(exact), "a tolerance must never cost more probes"


def test_tolerance_zero_is_exact() -> None:
    grid = MicroBatchGrid(slots=1)
    probes = run_with_tolerance(grid, SearchBounds(lo=1, hi=1000), 617, 0.0)
    assert max(m for m, fitted in probes if fitted) == 617
