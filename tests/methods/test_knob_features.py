"""How a numeric knob enters the throughput model: centred on DeepSpeed's default."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.methods.surrogate.features import _knob_feature
from determined_dsat.space.knobs import NUMERIC_DEFAULTS, ZERO_KNOBS

GRIDS = st.lists(st.integers(min_value=3, max_value=11), min_size=2, max_size=6, unique=True)


def test_deepspeeds_default_is_the_centre_of_every_searched_numeric_knob() -> None:
    for stage in (1, 2, 3):
        for name, values in ZERO_KNOBS[stage].items():
            feature = _knob_feature(name, values, 0)
            if feature is None or feature.kind != "log":
                continue
            assert name in NUMERIC_DEFAULTS, name
            assert feature.values(NUMERIC_DEFAULTS[name])[0] == 0.0


@given(GRIDS)
def test_every_value_of_the_grid_lies_within_one_scale(exponents: list[int]) -> None:
    values = [10**e for e in exponents]
    feature = _knob_feature("reduce_bucket_size", values, 0)
    assert feature is not None
    zs = [feature.values(v)[0] for v in values]
    assert max(abs(z) for z in zs) <= 1.0 + 1e-9
    assert math.isclose(max(abs(z) for z in zs), 1.0)
    default = math.log10(NUMERIC_DEFAULTS["reduce_bucket_size"])
    low, high = min(exponents), max(exponents)
    # The centre is the default, or the end of the grid nearest to it.
    assert math.isclose(feature.center, min(max(default, low), high))
