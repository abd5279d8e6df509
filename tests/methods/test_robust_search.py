"""What real clusters do that a tidy landscape does not: a wave of trials started together,
throughput that falls before the memory limit, and noise that crowns the wrong winner."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from test_method_contract import METHODS, make_space, run_search

from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.trials.records import TrialKind

GIB = 1024**3
PROFILE = {
    "num_params": 200_000_000,
    "trainable_num_params": 200_000_000,
    "activation_mem_per_gpu": 200_000_000,
    "gpu_mem": 40 * GIB,
}


class Peaked:
    """One GPU: a micro-batch fits up to ``limit`` at every stage and knob; throughput
    rises with the micro-batch, peaks at ``peak`` and falls after it (allocator flushes,
    caches); stage 1 is best. Noise-free unless ``noise``."""

    def __init__(self, limit: int, peak: int, noise: float = 0.0, seed: int = 0) -> None:
        self.limit, self.peak, self.noise = limit, peak, noise
        self.rng = np.random.default_rng(seed)

    def true(self, config: Mapping[str, Any]) -> float | None:
        mbs = int(config["train_micro_batch_size_per_gpu"])
        if mbs > self.limit:
            return None
        stage = int((config.get("zero_optimization") or {}).get("stage", 0))
        rising = mbs / (mbs + 4.0)
        falling = math.exp(-max(0.0, mbs - self.peak) / (0.25 * self.peak))
        return 100.0 * rising * falling * (1.0 - 0.03 * stage)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(config):
            return dict(PROFILE)
        value = self.true(config)
        if value is None:
            raise MemoryError("does not fit")
        return {"throughput": value * float(self.rng.normal(1.0, self.noise))}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_a_best_below_the_largest_fit(method: str) -> None:
    """Over peaks from a third to two thirds of the memory limit, 16 trials at once. One
    peak alone was a coin flip for ``model``: before its knob table was fitted to the
    model and its batch incumbent taken per component, it got 99.7 % of the optimum at
    peak 60 but 66 % at peak 40 and 81 % at 50; now 98.0 %, 84 % and 99.2 %."""
    shares = []
    for peak in (40, 50, 60, 70, 80):
        landscape = Peaked(limit=120, peak=peak)
        run = run_search(method, landscape, make_space(1, (1, 2)), max_trials=40)
        best = run.method.best_ds_config()
        assert best is not None
        value = landscape.true(best)
        optimum = max(landscape.true({"train_micro_batch_size_per_gpu": m,
                                      "zero_optimization": {"stage": 1}}) or 0
                      for m in range(1, 121))  # fmt: skip
        assert value is not None and value >= 0.8 * optimum, (method, peak, best)
        assert best["train_micro_batch_size_per_gpu"] < 100  # not the largest that fits
        shares.append(value / optimum)
    assert statistics.median(shares) >= 0.975, (method, shares)


@pytest.mark.parametrize("method", ["binary", "asha", "random"])
def test_a_wave_of_new_lineages_spreads_its_first_probes(method: str) -> None:
    landscape = Peaked(limit=30, peak=30)
    run = run_search(method, landscape, make_space(1, (2,)), max_trials=20, max_concurrent_trials=8)
    records = sorted(run.method.tracker.records(), key=lambda r: r.spec.seq)
    first_wave = [r for r in records if r.spec.kind is TrialKind.SEARCH][:6]
    probes = [r.spec.mbs for r in first_wave]
    assert len(set(probes)) >= 4, probes  # not all at the same micro-batch
    ooms = sum(1 for r in first_wave if r.result is not None and not r.succeeded)
    assert ooms < len(first_wave)  # the spread puts some below the limit


@pytest.mark.parametrize("method", ["binary", "asha"])
def test_a_wave_spreads_above_and_below_its_first_probe(method: str) -> None:
    """The first probe is the middle of the range; the rest of the wave goes both ways,
    not only down to micro-batches too small to be fast."""
    landscape = Peaked(limit=400, peak=400)
    run = run_search(method, landscape, make_space(1, (2,)), max_trials=20, max_concurrent_trials=8)
    records = sorted(run.method.tracker.records(), key=lambda r: r.spec.seq)
    probes = [r.spec.mbs for r in records if r.spec.kind is TrialKind.SEARCH][:6]
    assert min(probes[1:]) < probes[0] < max(probes[1:]), probes
    assert len(set(probes)) >= 5, probes


def test_remeasurement_changes_a_lucky_pick() -> None:
    """Two micro-batches whose true throughputs differ by 3 %, measured with 3 % noise:
    the seed makes the worse one's single measurement the highest; the confirmation rounds
    re-measure the leaders and the better one wins."""
    flat = {30: 100.0, 31: 97.0}

    class Lucky(Peaked):
        def true(self, config: Mapping[str, Any]) -> float | None:
            mbs = int(config["train_micro_batch_size_per_gpu"])
            return flat.get(mbs, 50.0 + mbs) if mbs <= 31 else None

    chosen: list[int] = []
    for seed in range(40):
        landscape = Lucky(limit=31, peak=31, noise=0.03, seed=seed)
        run = run_search("binary", landscape, make_space(1, (0,)), max_trials=24, confirm_top=3,
                         mbs_tolerance=0.0)  # fmt: skip
        tracker = run.method.tracker
        singles = {r.spec.mbs: r for r in tracker.records() if r.spec.kind is TrialKind.SEARCH}
        if 30 not in singles or 31 not in singles:
            continue
        lucky = tracker.score(singles[31]) > tracker.score(singles[30])  # type: ignore[operator]
        if not lucky:
            continue
        best = run.method.best_ds_config()
        assert best is not None
        chosen.append(int(best["train_micro_batch_size_per_gpu"]))
    assert len(chosen) >= 3  # the seeds produce lucky single draws
    # Confirmed, the truly faster micro-batch wins most of those runs.
    assert chosen.count(30) > len(chosen) / 2, chosen
