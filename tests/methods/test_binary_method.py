"""``binary``: every finished lineage ends on the true largest micro-batch that fits.

Landscapes are drawn from seeds and then made to agree with the memory model exactly, or to
use less (the model is pessimistic: bisection must widen past its estimate) or more memory
(the model is optimistic: the first probes run out of memory) than it predicts. The truth is
``Landscape.true_max_mbs(stage)``; lineages are checked only once their bisection is over.
"""

from __future__ import annotations

import pathlib
from typing import Any

import attrs
import pytest

from determined_dsat.build import build_method
from determined_dsat.methods import bisect
from determined_dsat.methods.binary import BinaryOptions
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import TrialRecord

VARIANTS = {
    "drawn": None,
    "accurate": (1.0, 1.0),
    "model-pessimistic": (0.8, 0.7),
    "model-optimistic": (1.25, 1.35),
}


def landscape_for(seed: int, variant: str) -> Landscape:
    landscape = Landscape.draw(seed)
    errors = VARIANTS[variant]
    if errors is None:
        return landscape
    model_error, activation_error = errors
    return attrs.evolve(
        landscape,
        model_error={s: model_error for s in range(4)},
        activation_error=activation_error,
    )


def seeds_with_room(count: int) -> list[int]:
    """Seeds whose stage-1..3 true ceilings are all between 2 and 400 in every variant,
    so lineages have something to bisect and end within the budget."""
    seeds, seed = [], 0
    while len(seeds) < count:
        if all(
            2 <= landscape_for(seed, v).true_max_mbs(s) <= 400 for v in VARIANTS for s in (1, 2, 3)
        ):
            seeds.append(seed)
        seed += 1
    return seeds


SEEDS = seeds_with_room(3)


def is_allowed(grid: MicroBatchGrid, mbs: int) -> bool:
    if mbs < 1 or mbs % grid.divisible_by:
        return False
    return grid.train_batch_size is None or (grid.train_batch_size // grid.slots) % mbs == 0


def largest_allowed_up_to(grid: MicroBatchGrid, limit: int) -> int | None:
    fitting = [m for m in range(1, limit + 1) if is_allowed(grid, m)]
    return fitting[-1] if fitting else None


def run_binary(
    landscape: Landscape,
    grid: MicroBatchGrid,
    max_trials: int = 64,
    concurrent: int = 2,
    stages: tuple[int, ...] = (1, 2, 3),
) -> DSATSearchMethod:
    space = ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=stages,
        grid=grid,
        start_profile_step=3,
        end_profile_step=5,
    )
    settings = SearchSettings(
        method="binary",
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=BinaryOptions(),
        metric=Metric.THROUGHPUT,
        zero_stages=stages,
        max_trials=max_trials,
        max_concurrent_trials=concurrent,
    )
    method = build_method(settings, space, grid.slots)
    executor = ReplayExecutor(ReplayFunction(landscape, "test"), space.ds_config_from_hparams)
    engine = SearchEngine(method, executor)
    engine.start()
    engine.run()
    assert engine.shutdown is not None
    return method


def lineages(method: DSATSearchMethod) -> dict[str, list[TrialRecord]]:
    out: dict[str, list[TrialRecord]] = {}
    for record in method.tracker.records():
        if record.spec.lineage_id is not None:
            out.setdefault(record.spec.lineage_id, []).append(record)
    return out


def lineage_ended(records: list[TrialRecord], grid: MicroBatchGrid) -> bool:
    """Whether the lineage's bisection is over (refinement probes below it may follow)."""
    latest = split_refinement(records)[0][-1]
    if not latest.finished:
        return False
    assert latest.spec.bounds is not None
    return bisect.narrow(latest.spec.bounds, latest.spec.mbs, latest.succeeded, grid) is None


def split_refinement(records: list[TrialRecord]) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """A lineage's bisection probes, then its refinement probes (those proposed after the
    bisection's range ran out: they carry no bounds)."""
    for i, record in enumerate(records):
        if i > 0 and record.spec.bounds is None:
            return records[:i], records[i:]
    return records, []


def throughput(record: TrialRecord) -> float:
    assert record.result is not None
    return float(record.result.metrics["throughput"])


def check_refinement_probe(probe: TrialRecord, lineage: list[TrialRecord]) -> None:
    """A probe below the largest fit is asked only when throughput fell: the lineage's best
    result (of the trials before it: a lineage runs one at a time) is not its largest
    success, and the probe lies strictly between the nearest micro-batches tried on either
    side of the best."""
    before = [r for r in lineage if r.succeeded and r.spec.seq < probe.spec.seq]
    assert len(before) >= 2, probe.spec
    best = max(before, key=throughput)
    assert best.spec.mbs < max(r.spec.mbs for r in before), (probe.spec.mbs, best.spec.mbs)
    tried = [r.spec.mbs for r in lineage if r.spec.seq < probe.spec.seq]
    below = max((m for m in tried if m < best.spec.mbs), default=0)
    above = min(m for m in tried if m > best.spec.mbs)
    assert below < probe.spec.mbs < above and probe.spec.mbs != best.spec.mbs, (
        below,
        probe.spec.mbs,
        above,
    )


GRIDS: dict[str, Any] = {
    "free": lambda slots: MicroBatchGrid(slots=slots),
    "divisible-by-4": lambda slots: MicroBatchGrid(slots=slots, divisible_by=4),
    "fixed-1024-per-gpu": lambda slots: MicroBatchGrid(slots=slots, train_batch_size=1024 * slots),
}


def check_lineages_end_on_true_max(landscape: Landscape, grid: MicroBatchGrid) -> dict[str, int]:
    method = run_binary(landscape, grid)
    seen = {"ended": 0, "widened": 0, "oom": 0, "refined": 0}
    for records in lineages(method).values():
        tried = [r.spec.mbs for r in records]
        assert len(set(tried)) == len(tried), f"an mbs was retried in a lineage: {tried}"
        assert len({repr(sorted(r.spec.zero.items())) for r in records}) == 1
        stage = records[0].spec.stage
        truth = landscape.true_max_mbs(stage, zero=records[0].spec.zero)
        records, refinement = split_refinement(records)
        for i, r in enumerate(records):
            if not r.finished:
                continue
            seen["oom"] += not r.succeeded
            # Every later probe of the lineage heeds this result: above a success, below
            # an OOM (a bisection never asks what it already knows).
            for later in records[i + 1 :] + refinement:
                if r.succeeded and later in records:
                    assert later.spec.mbs > r.spec.mbs, (tried, r.spec.mbs)
                elif not r.succeeded:
                    assert later.spec.mbs < r.spec.mbs, (tried, r.spec.mbs)
        for probe in refinement:
            check_refinement_probe(probe, records + refinement)
            seen["refined"] += 1
        if not lineage_ended(records, grid):
            continue
        seen["ended"] += 1
        ok = [r.spec.mbs for r in records if r.succeeded]
        first_bounds = records[0].spec.bounds
        assert first_bounds is not None
        # A lineage started under another lineage's OOM at its stage is capped just below
        # it (memory differs little between knob settings); it must find the largest
        # allowed mbs under both its own true limit and that cap.
        capped = first_bounds.hi_is_hard and (
            grid.max_mbs is None or first_bounds.hi < grid.max_mbs
        )
        limit = min(truth, first_bounds.hi) if capped else truth
        expected = largest_allowed_up_to(grid, limit)
        if grid.max_mbs is not None and expected is not None:
            expected = min(expected, grid.max_mbs)
        assert (max(ok) if ok else None) == expected, (stage, truth, tried)
        if ok and max(ok) > first_bounds.hi:
            seen["widened"] += 1
    assert seen["ended"] > 0, "no lineage ended within the budget"
    return seen


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_finished_lineages_found_true_max_mbs(variant: str, grid_name: str) -> None:
    totals = {"ended": 0, "widened": 0, "oom": 0}
    for seed in SEEDS:
        landscape = landscape_for(seed, variant)
        seen = check_lineages_end_on_true_max(landscape, GRIDS[grid_name](landscape.slots))
        totals = {k: totals[k] + seen[k] for k in totals}
    if variant == "model-pessimistic" and grid_name != "fixed-1024-per-gpu":
        assert totals["widened"] > 0, "the estimate was never exceeded: widening untested"
    if variant == "model-optimistic":
        assert totals["oom"] > 0, "no probe ran out of memory: the ceiling was never found"


def landscape_with_estimate(seed: int, stage: int, estimate: int, shrink: float) -> Landscape:
    """A landscape whose memory model estimates ``estimate`` samples per GPU at ``stage``,
    while real activations take ``shrink`` times the modelled memory (so more fits)."""
    landscape = Landscape.draw(seed)
    memory = landscape.memory
    free = memory.usable_bytes - memory.model_state_bytes(stage)
    return attrs.evolve(
        landscape,
        activation_per_sample=free // estimate,
        model_error={s: 1.0 for s in range(4)},
        activation_error=shrink,
    )


def test_fixed_non_power_of_two_batch_finds_true_max() -> None:
    """Per-GPU batch 36 (candidates 1 2 3 4 6 9 12 18 36), a memory model that estimates 5
    samples per GPU while about 20 fit: the lineage must widen up to 18."""
    seed = next(s for s in range(100) if Landscape.draw(s).memory.max_mbs(2) > 100)
    landscape = landscape_with_estimate(seed, stage=2, estimate=5, shrink=0.25)
    assert landscape.memory.max_mbs(2) == 5
    assert 18 <= landscape.true_max_mbs(2) < 36
    grid = MicroBatchGrid(slots=landscape.slots, train_batch_size=36 * landscape.slots)
    method = run_binary(landscape, grid, stages=(2,))
    first = lineages(method)["L1"]
    assert lineage_ended(first, grid)
    assert max(r.spec.mbs for r in first if r.succeeded) == 18


def test_lineages_run_one_trial_at_a_time_and_chain_by_parent() -> None:
    landscape = landscape_for(SEEDS[0], "drawn")
    method = run_binary(landscape, MicroBatchGrid(slots=landscape.slots), concurrent=4)
    for records in lineages(method).values():
        assert records[0].spec.parent_id is None
        for before, after in zip(records, records[1:]):
            assert after.spec.parent_id == before.spec.request_id
            # The next step is only proposed once the previous one has finished.
            assert before.finished_seq is not None
            if after.finished_seq is not None:
                assert after.finished_seq > before.finished_seq


def test_search_range_factor_scales_the_first_probe() -> None:
    """A smaller factor starts lower; the lineage still ends on the true maximum."""
    landscape = landscape_for(SEEDS[0], "accurate")
    grid = MicroBatchGrid(slots=landscape.slots)
    first_probes: dict[float, tuple[int, dict[str, Any]]] = {}
    for factor in (1.0, 0.25):
        space = ConfigSpace(
            base_ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}},
            base_hparams={"deepspeed_config": "ds_config.json"},
            stages=(2,),
            grid=grid,
            start_profile_step=3,
            end_profile_step=5,
        )
        settings = SearchSettings(
            method="binary",
            config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
            model_dir=pathlib.Path("/nonexistent"),
            backend=Backend.REPLAY,
            run_dir=pathlib.Path("/nonexistent/run"),
            method_options=BinaryOptions(search_range_factor=factor),
            metric=Metric.THROUGHPUT,
            zero_stages=(2,),
            max_trials=40,
            max_concurrent_trials=1,
        )
        method = build_method(settings, space, grid.slots)
        executor = ReplayExecutor(ReplayFunction(landscape, "t"), space.ds_config_from_hparams)
        engine = SearchEngine(method, executor)
        engine.start()
        engine.run()
        first = lineages(method)["L1"]
        first_probes[factor] = (first[0].spec.mbs, first[0].spec.zero)
        assert lineage_ended(first, grid)
        assert max(r.spec.mbs for r in first if r.succeeded) == landscape.true_max_mbs(
            2, zero=first[0].spec.zero
        )
    # The first probe is the upper median of [1, floor(factor * estimate)], the estimate
    # keeping the lineage's buckets and a step's activations free.
    for factor, (probe, zero) in first_probes.items():
        estimate = space.estimated_max_mbs(landscape.memory, zero)
        assert estimate < landscape.memory.max_mbs(2)
        assert probe == 1 + int(factor * estimate) // 2
    assert first_probes[0.25][0] < first_probes[1.0][0]
