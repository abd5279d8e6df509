"""``model``'s memory surrogate and the knobs that change memory outside the memory model:
``contiguous_gradients`` at stages 2-3 and ZeRO-3's ``stage3_max_live_parameters`` /
``stage3_max_reuse_distance``.

An OOM of one block must not rule out a sibling that differs only in such a knob and needs
less memory (the hard evidence once treated them as the same size), while it still rules
out every sibling that needs at least as much.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from test_method_contract import SEEDS, make_space

from determined_dsat.methods.surrogate.features import BlockTable, MemoryBasis
from determined_dsat.methods.surrogate.memory import MemoryObservation, MemorySurrogate
from determined_dsat.space.knobs import gathered_elements, loose_gradients
from determined_dsat.testing.synthetic import Landscape

LANDSCAPE = Landscape.draw(SEEDS[0])
TABLE = BlockTable(make_space(LANDSCAPE.slots))
BASIS = MemoryBasis.of(TABLE, LANDSCAPE.memory, 2)


def block_index(**zero: Any) -> int:
    """The first block of the table with these settings."""
    for i, block in enumerate(TABLE.blocks):
        if all(block.get(k) == v for k, v in zero.items()):
            return i
    raise LookupError(zero)


def sibling(block: int, **changes: Any) -> int:
    wanted = {**TABLE.blocks[block], **changes}
    index = TABLE.lookup(wanted)
    assert index is not None, wanted
    return index


def observation(block: int, mbs: int, fitted: bool) -> MemoryObservation:
    terms = BASIS.terms(TABLE, np.array([block], dtype=np.int64), np.array([float(mbs)]))
    return MemoryObservation.of(terms, fitted)


def p_fit(surrogate: MemorySurrogate, block: int, mbs: int) -> float:
    terms = BASIS.terms(TABLE, np.array([block], dtype=np.int64), np.array([float(mbs)]))
    return float(surrogate.fit_probability(terms)[0])


def prior_limit(block: int) -> int:
    """The largest micro-batch the prior gives at least even odds."""
    surrogate = MemorySurrogate([])
    mbs = 1
    while p_fit(surrogate, block, mbs + 1) >= 0.5:
        mbs += 1
    return mbs


def test_the_knob_terms_follow_deepspeeds_semantics() -> None:
    loose = {"stage": 2, "contiguous_gradients": False}
    assert loose_gradients(loose) and not loose_gradients({**loose, "contiguous_gradients": True})
    assert not loose_gradients({"stage": 1, "contiguous_gradients": False})
    assert loose_gradients({"stage": 3, "contiguous_gradients": False})
    small: Mapping[str, Any] = {
        "stage": 3,
        "stage3_max_live_parameters": 10**8,
        "stage3_max_reuse_distance": 10**8,
    }
    assert gathered_elements(small, 10**9) == 2e8
    assert gathered_elements(small, 10**6) == 2e6  # never more than the model
    assert gathered_elements({"stage": 3}, 10**10) == 2e9  # DeepSpeed's defaults, 1e9 each
    assert gathered_elements({"stage": 2}, 10**9) == 0.0


def test_an_oom_without_contiguous_gradients_leaves_the_contiguous_sibling_open() -> None:
    loose = block_index(stage=2, contiguous_gradients=False)
    contiguous = sibling(loose, contiguous_gradients=True)
    assert BASIS.loose[loose] == 1.0 and BASIS.loose[contiguous] == 0.0
    mbs = prior_limit(contiguous)
    surrogate = MemorySurrogate(
        [observation(loose, mbs, fitted=False), observation(contiguous, mbs - 1, fitted=True)]
    )
    assert p_fit(surrogate, loose, mbs) == 0.0
    assert p_fit(surrogate, loose, mbs + 5) == 0.0
    assert p_fit(surrogate, contiguous, mbs) > 0.05


def test_an_oom_with_contiguous_gradients_rules_out_the_loose_sibling() -> None:
    contiguous = block_index(stage=2, contiguous_gradients=True)
    loose = sibling(contiguous, contiguous_gradients=False)
    mbs = prior_limit(contiguous)
    surrogate = MemorySurrogate([observation(contiguous, mbs, fitted=False)])
    assert p_fit(surrogate, loose, mbs) == 0.0


def test_a_zero3_oom_with_large_live_limits_leaves_smaller_limits_open() -> None:
    large = block_index(stage=3, stage3_max_live_parameters=10**9, stage3_max_reuse_distance=10**9)
    small = sibling(large, stage3_max_live_parameters=10**8, stage3_max_reuse_distance=10**8)
    assert BASIS.gathered[small] < BASIS.gathered[large]
    mbs = prior_limit(large)
    surrogate = MemorySurrogate([observation(large, mbs, fitted=False)])
    assert p_fit(surrogate, large, mbs) == 0.0
    assert p_fit(surrogate, small, mbs) > 0.0
    # and the other way round: the smaller limits trained, so the larger are not certain
    trained = MemorySurrogate([observation(small, mbs, fitted=True)])
    assert p_fit(trained, small, mbs) == 1.0
    assert p_fit(trained, large, mbs) < 1.0
