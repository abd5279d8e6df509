"""``model``'s throughput surrogate past saturation: hinges in log micro-batch.

Throughput may fall with the micro-batch from some size on (caches; the allocator near
the memory limit has its own term). The surrogate must fit such a fall wherever it starts
and predict the peak below it, while saying nothing new about micro-batches below its
first knot (the saturation curve alone describes those).
"""

from __future__ import annotations

import math

import numpy as np
from test_method_contract import make_space

from determined_dsat.methods.surrogate.features import MBS_KNOTS, BlockTable, fill_mbs_features
from determined_dsat.methods.surrogate.throughput import (
    ThroughputObservation,
    ThroughputSurrogate,
)

TABLE = BlockTable(make_space(1, stages=(1,)))
BLOCK = 0


def rows_at(mbs: np.ndarray) -> np.ndarray:
    rows = np.repeat(TABLE.block_rows[[BLOCK]], mbs.shape[0], axis=0)
    rows[:, TABLE.gas_column] = 0.0
    return fill_mbs_features(TABLE, rows, mbs.astype(float), np.zeros(mbs.shape[0]))


def predicted(surrogate: ThroughputSurrogate, mbs: np.ndarray) -> np.ndarray:
    """Model-averaged posterior mean of log throughput at ``mbs`` (gas 1)."""
    means, _ = surrogate.predict_rows(rows_at(mbs))
    curve = surrogate.curve(mbs.astype(float), np.ones(mbs.shape[0]))
    return np.asarray(surrogate.weights @ (means + curve), dtype=float)


def test_the_prior_is_certain_about_the_hinges_below_the_first_knot() -> None:
    mean, sd = TABLE.prior()
    surrogate = ThroughputSurrogate(mean, sd, TABLE.gas_column, [])
    small = np.arange(1, int(MBS_KNOTS[0]) + 1)
    rows = rows_at(small)
    columns = list(TABLE.mbs_columns)
    assert np.all(rows[:, columns] == 0.0)
    _, variance = surrogate.predict_rows(rows)
    _, at_first = surrogate.predict_rows(rows_at(np.array([1])))
    assert np.allclose(variance, at_first)  # nothing but the block's own terms
    _, large = surrogate.predict_rows(rows_at(np.array([1024])))
    assert np.all(large > at_first)


def test_a_fall_past_a_knee_is_fitted_and_the_peak_predicted_below_it() -> None:
    for knee in (24.0, 96.0):
        tried = np.array([4, 8, 16, 32, 64, 128, 256, 512])

        def truth(m: np.ndarray, knee: float = knee) -> np.ndarray:
            saturating = m / (m + 2.0)
            past = np.maximum(m / knee, 1.0) ** -0.35
            return np.asarray(100.0 * saturating * past, dtype=float)

        mean, sd = TABLE.prior()
        observations = [
            ThroughputObservation(row, int(m), 1, math.log(float(v)))
            for row, m, v in zip(rows_at(tried), tried, truth(tried.astype(float)))
        ]
        surrogate = ThroughputSurrogate(mean, sd, TABLE.gas_column, observations)
        grid = np.arange(1, 513)
        fit = predicted(surrogate, grid)
        best = int(grid[np.argmax(fit)])
        assert knee / 2 <= best <= knee * 2, (knee, best)
        errors = np.abs(fit[tried - 1] - np.log(truth(tried.astype(float))))
        assert float(np.max(errors)) < 0.08, (knee, errors)  # a kink between knots
        # the largest micro-batch is predicted slower than the peak by most of the fall
        drop = fit[np.argmax(fit)] - fit[-1]
        true_drop = math.log(float(np.max(truth(grid.astype(float))) / truth(np.array([512.0]))[0]))
        assert drop > 0.7 * true_drop, (knee, drop, true_drop)
