"""``--max-mbs``: the micro-batch grid never offers a micro-batch above the cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.errors import ConfigError
from determined_dsat.space.batch import MicroBatchGrid


@given(
    cap=st.integers(1, 200),
    d=st.sampled_from([1, 2, 4, 8]),
    tbs=st.one_of(st.none(), st.sampled_from([64, 96, 256, 1024])),
    lo=st.integers(1, 300),
    hi=st.integers(1, 400),
    mbs=st.integers(1, 400),
)
def test_the_grid_stays_at_or_below_the_cap(
    cap: int, d: int, tbs: int | None, lo: int, hi: int, mbs: int
) -> None:
    try:
        grid = MicroBatchGrid(slots=1, train_batch_size=tbs, divisible_by=d, mbs_cap=cap)
    except ConfigError:
        return  # no micro-batch is left under these constraints
    inside = grid.candidates_in(lo, hi)
    assert all(m <= cap and grid.allowed(m) for m in inside)
    assert grid.count_in(lo, hi) == len(inside)
    assert [grid.nth_in(lo, hi, i) for i in range(len(inside))] == inside
    snapped = grid.snap_down(mbs)
    assert snapped is None or (snapped <= min(mbs, cap) and grid.allowed(snapped))
    following = grid.next_above(mbs)
    assert following is None or (following <= cap and following > mbs)
    top = grid.max_mbs
    assert top is not None and top <= cap and grid.allowed(top)
    assert not grid.allowed(cap + 1)


def test_a_cap_below_the_smallest_micro_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="--max-mbs 3 allows no micro-batch divisible by 4"):
        MicroBatchGrid(slots=1, divisible_by=4, mbs_cap=3)
