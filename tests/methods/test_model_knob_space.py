"""``model``'s knob space: fitted to the profiled model, and its prior at one rank.

A bucket, a live-parameter limit or a reuse distance beyond the model's size behaves as
one that holds the whole model, and a larger bucket only costs memory (DeepSpeed 0.19.8
allocates it whole). With one rank per trial no collective has a peer, so the knobs that
only shape collectives have little left to change.
"""

from __future__ import annotations

import attrs
import numpy as np
from test_method_contract import SEEDS, make_space, run_search

from determined_dsat.methods.surrogate.features import (
    COMMUNICATION_KNOBS,
    ONE_RANK_COMMUNICATION_SCALE,
    BlockTable,
)
from determined_dsat.space.knobs import MODEL_SIZED_KNOBS, ZERO_KNOBS, fit_to_model
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import TrialKind

SMALL_MODEL = 7_386_624  # the examples' GPT


def test_fit_to_model_keeps_one_value_at_or_above_the_model_for_every_model_sized_knob() -> None:
    fitted = fit_to_model(ZERO_KNOBS[3], SMALL_MODEL)
    for name, values in ZERO_KNOBS[3].items():
        if name not in MODEL_SIZED_KNOBS:
            assert fitted[name] == values
            continue
        above = [v for v in fitted[name] if v >= SMALL_MODEL]
        assert above == [min(v for v in values if v >= SMALL_MODEL)], name
        assert [v for v in fitted[name] if v < SMALL_MODEL] == [
            v for v in values if v < SMALL_MODEL
        ]


def test_the_model_searches_only_blocks_that_differ_for_a_small_model() -> None:
    landscape = attrs.evolve(
        Landscape.draw(SEEDS[0]), num_params=SMALL_MODEL, activation_per_sample=2_000_000
    )
    space = make_space(landscape.slots, stages=(0, 1, 2, 3))
    run = run_search("model", landscape, space, max_trials=24)
    search = [r for r in run.method.tracker.records() if r.spec.kind is TrialKind.SEARCH]
    assert search
    limits = {name: min(v for v in ZERO_KNOBS[3][name] if v >= SMALL_MODEL)
              for name in ("reduce_bucket_size", "stage3_max_live_parameters",
                           "stage3_max_reuse_distance")}  # fmt: skip
    limits["allgather_bucket_size"] = min(
        v for v in ZERO_KNOBS[1]["allgather_bucket_size"] if v >= SMALL_MODEL
    )
    for record in search:
        for name, limit in limits.items():
            assert record.spec.zero.get(name, 0) <= limit, (name, record.spec.zero)
    full, fitted = BlockTable(space), BlockTable(space, SMALL_MODEL)
    assert len(fitted) < len(full) / 10


def _prior_sd(table: BlockTable) -> dict[str, np.ndarray]:
    _, sd = table.prior()
    out = {knob.name: sd[list(knob.columns)] for knob in table.knobs}
    for stage, column in table.stage_column.items():
        out[f"stage {stage}"] = sd[[column]]
    return out


def test_at_one_rank_the_prior_leaves_little_to_collective_knobs_and_zero_1_2() -> None:
    stages = (0, 1, 2, 3)
    one, two = (
        _prior_sd(BlockTable(make_space(1, stages))),
        _prior_sd(BlockTable(make_space(2, stages))),
    )
    assert one.keys() == two.keys()
    checked = set()
    for name, sd in two.items():
        if name in COMMUNICATION_KNOBS:
            np.testing.assert_allclose(one[name], sd * ONE_RANK_COMMUNICATION_SCALE)
            checked.add(name)
        elif name in ("stage 1", "stage 2"):
            assert np.all(one[name] < sd / 2)
        else:
            np.testing.assert_allclose(one[name], sd)
    assert checked == set(COMMUNICATION_KNOBS)
