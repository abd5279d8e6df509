"""The batch believer's incumbent is taken per component of the model average.

Far from the data the components (one per half-saturation and noise) disagree by a
factor of several. A configuration believed at its predicted mean must not then
"improve" on itself under the components that put it above the average: its twin (the
same features, another block) may only keep what its own remaining uncertainty is worth.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_method_contract import make_space
from test_model_method import LANDSCAPE, training_set

from determined_dsat.methods.surrogate.acquisition import BatchScorer, expected_improvement
from determined_dsat.methods.surrogate.features import BlockTable
from determined_dsat.methods.surrogate.throughput import ThroughputSurrogate

TABLE = BlockTable(make_space(LANDSCAPE.slots))


@settings(max_examples=40, deadline=None)
@given(
    block=st.integers(0, len(TABLE) - 1),
    mbs=st.integers(1, 512),
    count=st.integers(0, 12),
    seed=st.integers(0, 10_000),
)
def test_a_believed_configuration_leaves_its_twin_only_its_own_uncertainty(
    block: int, mbs: int, count: int, seed: int
) -> None:
    mean, sd = TABLE.prior()
    observations = training_set(LANDSCAPE, TABLE, count, seed)
    surrogate = ThroughputSurrogate(mean, sd, TABLE.gas_column, observations)
    rows = TABLE.block_rows[[block, block]].copy()
    rows[:, TABLE.gas_column] = 0.0
    ones = np.ones(2)
    twins = np.full(2, float(mbs))
    incumbent = None if count == 0 else np.full(len(surrogate.components), -np.inf)
    scorer = BatchScorer(
        surrogate, rows, np.array([0, 1]), twins, ones, ones, ones.copy(), incumbent
    )
    scorer.believe(0)
    means, sds = scorer.mean_sd()
    own = [
        float(expected_improvement(means[k, [1]], sds[k, [1]], float(means[k, 1]))[0])
        for k in range(len(means))
    ]
    bound = float(scorer.weights @ np.array(own))
    assert scorer.scores()[1] <= bound + 1e-12
    # And the average would break it as soon as the components disagree.
    mixture = float(scorer.weights @ means[:, 1])
    spread = float(np.max(means[:, 1]) - np.min(means[:, 1]))
    if spread > 0.5:
        averaged = scorer.weights @ np.array(
            [
                float(expected_improvement(means[k, [1]], sds[k, [1]], mixture)[0])
                for k in range(len(means))
            ]
        )
        assert averaged > bound
