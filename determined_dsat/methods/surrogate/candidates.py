"""Candidates of the ``model`` search: which (ZeRO block, micro-batch) pairs get scored.

Every block of the knob table, at micro-batches around its predicted memory limit (where
the memory surrogate says it fits with probability 99.5 %, 98 %, ..., 16 %), at fractions
of the safe one, at the smallest allowed micro-batch, and next to the block's own earlier
trials (just above the largest that trained, just below the smallest that did not); all
snapped down to the micro-batch grid. Blocks with a running trial, micro-batches at or
above a crash of the block, and configurations already tried are left out. Where a
stage's throughput collapsed (``collapse.py``), its blocks are bisected: nothing from the
collapse up, and between the largest micro-batch that trained below it and the collapse
only the geometric midpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate.collapse import Gap
from determined_dsat.methods.surrogate.features import BlockTable, MemoryBasis
from determined_dsat.methods.surrogate.memory import MemorySurrogate
from determined_dsat.space.batch import MicroBatchGrid

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

FIT_LEVELS = (2.6, 2.0, 1.6, 1.3, 1.0, 0.7, 0.4, 0.15, -0.15, -0.5, -1.0)
"""Standard scores of the fit probabilities at which a block's candidate micro-batches lie
(2.6: 99.5 % likely to fit, ..., -1: 16 %)."""
FRACTIONS = (0.25, 0.5, 0.75)
"""Smaller candidates, as fractions of the micro-batch that fits with 99.5 % probability."""
_PAIR = 1 << 32  # (block, value) pairs as one int64: block * _PAIR + value


def candidates(
    table: BlockTable,
    memory: MemorySurrogate,
    basis: MemoryBasis,
    grid: MicroBatchGrid,
    neighbours: Iterable[tuple[int, int]],
    *,
    busy: Iterable[int] = (),
    tried: Iterable[tuple[int, int]] = (),
    fail_from: Mapping[int, int] | None = None,
    gaps: Mapping[int, Gap] | None = None,
) -> tuple[IntArray, IntArray]:
    """Every (block, micro-batch) worth scoring, as two arrays.

    ``neighbours``: extra (block, micro-batch) pairs. Left out: ``busy`` blocks, ``tried``
    (block, micro-batch) pairs, and for each block in ``fail_from`` every micro-batch from
    the smallest that crashed or timed out.
    """
    n = len(table)
    unit = basis.unit_terms(table)
    levels = [memory.boundary(unit, z) / basis.activation for z in FIT_LEVELS]
    raw = np.stack(levels + [levels[0] * f for f in FRACTIONS], axis=1)
    raw = np.floor(np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0))
    limits = np.clip(raw, 0.0, 1e9).astype(np.int64)
    midpoints = [
        (block, gap.midpoint)
        for stage, gap in (gaps or {}).items()
        for block in np.flatnonzero(table.stage_of == stage)
    ]
    extra = np.array([*neighbours, *midpoints], dtype=np.int64).reshape(-1, 2)
    blocks = np.concatenate(
        [np.repeat(np.arange(n, dtype=np.int64), limits.shape[1]), extra[:, 0], np.arange(n)]
    ).astype(np.int64)
    values = np.concatenate(
        [limits.reshape(-1), extra[:, 1], np.full(n, grid.min_mbs, dtype=np.int64)]
    ).astype(np.int64)
    values = snap_down(grid, values)
    ok = values >= grid.min_mbs
    codes = np.unique(blocks[ok] * _PAIR + values[ok])
    block_of, mbs_of = codes // _PAIR, codes % _PAIR
    fail = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for block, mbs in (fail_from or {}).items():
        fail[block] = mbs
    keep = mbs_of < fail[block_of]
    for stage, gap in (gaps or {}).items():
        at_stage = table.stage_of[block_of] == stage
        inside = (mbs_of > gap.trained) & (mbs_of != snap_down(grid, np.array([gap.midpoint]))[0])
        keep &= ~(at_stage & ((mbs_of >= gap.collapsed) | inside))
    keep &= ~np.isin(block_of, np.array(sorted(busy), dtype=np.int64))
    done = [b * _PAIR + m for b, m in tried]
    if done:
        keep &= ~np.isin(codes, np.array(done, dtype=np.int64))
    return block_of[keep].astype(np.int64), mbs_of[keep].astype(np.int64)


def around(grid: MicroBatchGrid, block: int, mbs: int, trained: bool) -> list[tuple[int, int]]:
    """Candidates next to one finished trial of a block: just above (and 10 % above), and
    10 % and 20 % below, a micro-batch that trained; just below (and 5 % below) one that
    did not."""
    if trained:
        # Below too: throughput may fall near the memory limit (allocator flushes).
        below = [(block, int(mbs * 0.9)), (block, int(mbs * 0.8))]
        following = grid.next_above(mbs)
        return below if following is None else [(block, following), (block, int(mbs * 1.1)), *below]
    return [(block, mbs - 1), (block, int(mbs * 0.95))]


def snap_down(grid: MicroBatchGrid, values: IntArray) -> IntArray:
    """The largest allowed micro-batch not above each value (0 where there is none)."""
    if grid.train_batch_size is None:
        d = grid.divisible_by
        if grid.mbs_cap is not None:
            values = np.minimum(values, grid.mbs_cap)
        return (values // d) * d
    allowed = np.array(grid.fixed_candidates(), dtype=np.int64)
    index = np.searchsorted(allowed, values, side="right") - 1
    return np.where(index >= 0, allowed[np.maximum(index, 0)], 0)


def gas_of(grid: MicroBatchGrid, mbs: IntArray) -> IntArray:
    """Gradient accumulation steps that go with each micro-batch."""
    if grid.train_batch_size is None:
        return np.full(mbs.shape, grid.default_gas, dtype=np.int64)
    return np.asarray(grid.train_batch_size // (mbs * grid.slots), dtype=np.int64)


def feature_rows(
    table: BlockTable, cand_block: IntArray, cand_gas: IntArray
) -> tuple[Array, IntArray]:
    """The distinct throughput feature rows of the candidates, and each one's row."""
    codes, inverse = np.unique(cand_block * _PAIR + cand_gas, return_inverse=True)
    rows = table.block_rows[codes // _PAIR].copy()
    rows[:, table.gas_column] = np.log((codes % _PAIR).astype(float))
    return rows, inverse.reshape(-1).astype(np.int64)
