"""``asha``: promotions go to the top ``1/divisor`` of a rung, and rung budgets hold.

The replay function takes memory (and the profile) from a seeded landscape, but its
throughput is ``quality(zero) * mbs / (mbs + 8)`` with a distinct, known quality per ZeRO
block, without noise: which lineages are best at any moment is computed here from the
trials' reported metrics, independently of the method's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import pytest
from determined import searcher

from determined_dsat.build import build_method
from determined_dsat.methods import bisect
from determined_dsat.methods.asha import AshaOptions
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import TrialSpec


def quality(zero: Mapping[str, Any]) -> float:
    """A distinct value in [1, 2) per ZeRO block."""
    digest = hashlib.sha256(json.dumps(dict(zero), sort_keys=True).encode()).digest()
    return 1.0 + int.from_bytes(digest[:6], "little") / 2**48


class Controlled:
    """Landscape memory, controlled throughput."""

    def __init__(self, landscape: Landscape) -> None:
        self.landscape = landscape

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(config):
            return dict(self.landscape.profile.to_json())
        zero = config["zero_optimization"]
        mbs = config["train_micro_batch_size_per_gpu"]
        if mbs > self.landscape.true_max_mbs(int(zero["stage"])):
            raise MemoryError("does not fit")
        return {"throughput": quality(zero) * mbs / (mbs + 8)}


def seeds_with_room(count: int) -> list[int]:
    """Seeds whose stage 1-3 ceilings need several bisection steps (16..400 samples)."""
    seeds, seed = [], 0
    while len(seeds) < count:
        if all(16 <= Landscape.draw(seed).true_max_mbs(s) <= 400 for s in (1, 2, 3)):
            seeds.append(seed)
        seed += 1
    return seeds


SEEDS = seeds_with_room(3)


def budget(options: AshaOptions, rung: int) -> int:
    return options.min_binary_search_trials * options.divisor ** (
        options.asha_early_stopping + rung
    )


class Timeline:
    """Calls the method and, after each call, lets ``on_ops`` inspect what it created."""

    def __init__(self, inner: DSATSearchMethod, grid: MicroBatchGrid) -> None:
        self.inner = inner
        self.grid = grid
        self.completions: list[Completion] = []
        self.promotions: list[tuple[str, int, dict[str, float]]] = []
        self.violations: list[str] = []
        self.options: AshaOptions = inner.policy.options  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not name.startswith("on_") and name != "initial_operations":
            return target

        def call(*args: Any) -> Any:
            ops = target(*args)
            for op in ops:
                if isinstance(op, searcher.Create):
                    self._check_create(self.inner.tracker[str(op.request_id)].spec)
            return ops

        return call

    def _specs(self) -> list[TrialSpec]:
        return [r.spec for r in self.inner.tracker.records() if r.spec.lineage_id is not None]

    def _check_create(self, spec: TrialSpec) -> None:
        lid = spec.lineage_id
        if lid is None:
            return
        earlier = [s for s in self._specs() if s.lineage_id == lid and s.seq < spec.seq]
        if not earlier or earlier[-1].rung == spec.rung:
            return
        assert spec.rung == earlier[-1].rung + 1, "a lineage skipped a rung"
        self._check_promotion(lid, spec.rung - 1)

    def _check_promotion(self, lid: str, rung: int) -> None:
        """``lid`` leaves ``rung``: it must be in the top 1/divisor of those that completed it."""
        finished = {c.request_id: c for c in self.completions}
        scores: dict[str, float] = {}
        by_lineage: dict[str, list[TrialSpec]] = {}
        for spec in self._specs():
            by_lineage.setdefault(spec.lineage_id or "", []).append(spec)
        for other, specs in by_lineage.items():
            upto = [s for s in specs if s.rung <= rung]
            if not upto or any(s.request_id not in finished for s in upto):
                continue
            last = upto[-1]
            succeeded = finished[last.request_id].result.outcome.succeeded
            assert last.bounds is not None
            ended = bisect.narrow(last.bounds, last.mbs, succeeded, self.grid)
            if len(upto) < budget(self.options, rung) and ended is not None:
                continue  # still has budget and range in this rung: not completed
            values = [
                float(finished[s.request_id].result.metrics["throughput"])
                for s in upto
                if finished[s.request_id].result.outcome.succeeded
            ]
            scores[other] = max(values, default=-math.inf)
        top = len(scores) // self.options.divisor
        better = sum(score > scores.get(lid, -math.inf) for score in scores.values())
        self.promotions.append((lid, rung, scores))
        if lid not in scores:
            self.violations.append(f"{lid} promoted from rung {rung} without completing it")
        elif better >= top:
            self.violations.append(
                f"{lid} promoted from rung {rung} ranked {better + 1} of {len(scores)}, "
                f"top {top} allowed"
            )


class RecordingExecutor(TrialExecutor):
    def __init__(self, inner: ReplayExecutor, timeline: Timeline) -> None:
        self.inner = inner
        self.timeline = timeline
        self.num_running_max = 0

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        self.inner.launch(request_id, hparams, length)

    def next_completion(self) -> Completion:
        completion = self.inner.next_completion()
        self.timeline.completions.append(completion)
        return completion

    @property
    def num_running(self) -> int:
        return int(self.inner.num_running)

    def cancel_all(self) -> None:
        self.inner.cancel_all()


def run_asha(
    landscape: Landscape, options: AshaOptions, max_trials: int = 64, concurrent: int = 4
) -> Timeline:
    grid = MicroBatchGrid(slots=landscape.slots)
    space = ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=(1, 2, 3),
        grid=grid,
        start_profile_step=3,
        end_profile_step=5,
    )
    settings = SearchSettings(
        method="asha",
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=options,
        metric=Metric.THROUGHPUT,
        max_trials=max_trials,
        max_concurrent_trials=concurrent,
    )
    method = build_method(settings, space, grid.slots)
    timeline = Timeline(method, grid)
    source = ReplayFunction(Controlled(landscape), "controlled")
    executor = RecordingExecutor(ReplayExecutor(source, space.ds_config_from_hparams), timeline)
    engine = SearchEngine(timeline, executor)  # type: ignore[arg-type]
    engine.start()
    engine.run()
    assert engine.shutdown is not None
    return timeline


OPTIONS = [
    pytest.param(AshaOptions(), id="default"),
    pytest.param(AshaOptions(max_rungs=3, min_binary_search_trials=2, divisor=2), id="m2-eta2"),
    pytest.param(
        AshaOptions(min_binary_search_trials=1, divisor=3, asha_early_stopping=1), id="m1-eta3-s1"
    ),
    pytest.param(
        AshaOptions(min_binary_search_trials=1, divisor=2, asha_early_stopping=1), id="m1-eta2-s1"
    ),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_promotions_are_top_fraction_of_rung(options: AshaOptions) -> None:
    promotions = 0
    for seed in SEEDS:
        timeline = run_asha(Landscape.draw(seed), options)
        assert timeline.violations == []
        promotions += len(timeline.promotions)
    assert promotions > 0, "no lineage was ever promoted: nothing was checked"


@pytest.mark.parametrize("options", OPTIONS)
def test_rung_budgets(options: AshaOptions) -> None:
    reached_rung_1 = 0
    for seed in SEEDS:
        timeline = run_asha(Landscape.draw(seed), options)
        tracker = timeline.inner.tracker
        by_lineage: dict[str, list[TrialSpec]] = {}
        for record in tracker.records():
            if record.spec.lineage_id is not None:
                by_lineage.setdefault(record.spec.lineage_id, []).append(record.spec)
        for specs in by_lineage.values():
            rungs = [s.rung for s in specs]
            assert rungs == sorted(rungs), "a lineage went back to a lower rung"
            assert max(rungs) < options.max_rungs
            for k in range(max(rungs) + 1):
                used = sum(r <= k for r in rungs)
                assert used <= budget(options, k), (k, rungs)
                if k < max(rungs):
                    # Promoted out of rung k: only after spending exactly its budget.
                    assert used == budget(options, k), (k, rungs)
            reached_rung_1 += max(rungs) >= 1
    assert reached_rung_1 > 0


def test_planned_trials_names_the_rung_budgets() -> None:
    options = AshaOptions(max_rungs=3, min_binary_search_trials=2, divisor=3, asha_early_stopping=1)
    timeline = run_asha(Landscape.draw(SEEDS[0]), options, max_trials=4)
    plan = timeline.inner.policy.planned_trials()
    assert plan is not None
    assert ", ".join(str(budget(options, k)) for k in range(3)) in plan  # 6, 18, 54
