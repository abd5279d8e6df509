"""The reach diagnosis: its classes, and its noise-free values against the landscape's own
optimum."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from benchmarks.efficiency import _landscapes
from benchmarks.reach_diagnosis import _read_runs, best_over_knobs, classify, knob_costs, optimum


@pytest.mark.parametrize(
    ("best_tried", "other_knobs", "stages", "expected"),
    [
        (0.995, 0.995, [2], "reached"),
        (0.95, 0.999, [1, 2], "knobs"),
        (0.95, 0.97, [1, 2], "micro-batch"),
        (0.95, 0.97, [1, 3], "stage"),
    ],
)
def test_classes(best_tried: float, other_knobs: float, stages: list[int], expected: str) -> None:
    assert classify(best_tried, other_knobs, 2, stages) == expected


def test_the_best_over_knobs_at_the_optimum_is_the_optimum() -> None:
    landscape = _landscapes("heldout", 30, "")[9]
    best = optimum(landscape)
    assert best is not None
    assert best_over_knobs(landscape, best.stage, best.mbs) == pytest.approx(best.throughput)
    costs = knob_costs(landscape, best)
    assert costs and all(0.0 <= left <= 1.0 + 1e-9 for left in costs.values())
    # heldout-09's optimum needs its small reduce bucket: the largest runs out of memory.
    assert costs[(best.stage, "reduce_bucket_size")] < 0.5


def test_runs_are_read_plain_or_gzipped(tmp_path: pathlib.Path) -> None:
    runs = {"runs": [{"landscape": "heldout-00", "fraction": [0.5]}]}
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    (plain / "runs.json").write_text(json.dumps(runs))
    with gzip.open(packed / "runs.json.gz", "wt") as out:
        out.write(json.dumps(runs))
    assert _read_runs(plain) == _read_runs(packed) == runs["runs"]
