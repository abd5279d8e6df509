"""``random``: early stopping, dropping stage 3 once a lower stage trains, trials per config."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from determined import searcher

from determined_dsat.build import build_method
from determined_dsat.methods.random_search import RandomOptions
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

OVERWRITE_KEY = "overwrite_deepspeed_args"
FLAT_THROUGHPUT = 123.0


def feasible_seeds(count: int) -> list[int]:
    seeds, seed = [], 0
    while len(seeds) < count:
        landscape = Landscape.draw(seed)
        if min(landscape.true_max_mbs(s) for s in (1, 2, 3)) >= 2:
            seeds.append(seed)
        seed += 1
    return seeds


SEEDS = feasible_seeds(4)


def flat(landscape: Landscape) -> Callable[[dict[str, Any]], Mapping[str, Any]]:
    """Every config fits and measures exactly the same: no trial after the first is a new best."""

    def source(config: dict[str, Any]) -> Mapping[str, Any]:
        if is_profiling_config(config):
            return landscape(config)
        return {"throughput": FLAT_THROUGHPUT}

    return source


class Run:
    def __init__(self) -> None:
        self.timeline: list[tuple[str, Any]] = []
        self.method: DSATSearchMethod | None = None
        self.engine: SearchEngine | None = None

    def creates(self) -> list[dict[str, Any]]:
        return [item for kind, item in self.timeline if kind == "create"]


class Recorder:
    def __init__(self, inner: DSATSearchMethod, run: Run) -> None:
        self.inner = inner
        self.run = run

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not name.startswith("on_") and name != "initial_operations":
            return target

        def call(*args: Any) -> Any:
            ops = target(*args)
            for op in ops:
                if isinstance(op, searcher.Create):
                    spec = self.inner.tracker[str(op.request_id)].spec
                    overwrites = json.loads(op.hparams)[OVERWRITE_KEY]
                    self.run.timeline.append(("create", {"spec": spec, "overwrites": overwrites}))
                elif isinstance(op, searcher.Shutdown):
                    self.run.timeline.append(("shutdown", op))
            return ops

        return call


class Executor(TrialExecutor):
    def __init__(self, inner: ReplayExecutor, run: Run) -> None:
        self.inner = inner
        self.run = run

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        self.inner.launch(request_id, hparams, length)

    def next_completion(self) -> Completion:
        completion = self.inner.next_completion()
        self.run.timeline.append(("complete", completion))
        return completion

    @property
    def num_running(self) -> int:
        return int(self.inner.num_running)

    def cancel_all(self) -> None:
        self.inner.cancel_all()


def run_random(
    source: Callable[[dict[str, Any]], Mapping[str, Any]],
    slots: int,
    options: RandomOptions,
    *,
    max_trials: int = 64,
    concurrent: int = 4,
) -> Run:
    space = ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=(1, 2, 3),
        grid=MicroBatchGrid(slots=slots),
        start_profile_step=3,
        end_profile_step=5,
    )
    settings = SearchSettings(
        method="random",
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=options,
        metric=Metric.THROUGHPUT,
        max_trials=max_trials,
        max_concurrent_trials=concurrent,
    )
    run = Run()
    run.method = build_method(settings, space, slots)
    executor = Executor(
        ReplayExecutor(ReplayFunction(source, "t"), space.ds_config_from_hparams), run
    )
    run.engine = SearchEngine(Recorder(run.method, run), executor)  # type: ignore[arg-type]
    run.engine.start()
    run.engine.run()
    assert run.engine.shutdown is not None
    return run


# ----- early stopping ------------------------------------------------------------------------


@pytest.mark.parametrize("patience", [1, 3, 10])
def test_early_stopping_serial_stops_after_exactly_n_trials_without_new_best(
    patience: int,
) -> None:
    landscape = Landscape.draw(SEEDS[0])
    run = run_random(
        flat(landscape),
        landscape.slots,
        RandomOptions(early_stopping=patience),
        concurrent=1,
    )
    search = [c for c in run.creates() if c["spec"].lineage_id is not None]
    # The first search trial sets the best; `patience` more find nothing better.
    assert len(search) == 1 + patience
    assert run.method is not None and run.method.stop_message is not None
    assert f"--early-stopping {patience}" in run.method.stop_message
    assert run.engine is not None and run.engine.shutdown is not None
    assert not run.engine.shutdown.failure


@pytest.mark.parametrize("patience", [2, 7])
def test_early_stopping_with_concurrency_creates_nothing_after_patience_ran_out(
    patience: int,
) -> None:
    landscape = Landscape.draw(SEEDS[1])
    concurrent = 4
    run = run_random(
        flat(landscape), landscape.slots, RandomOptions(early_stopping=patience), concurrent=4
    )
    since_best: int | None = None
    exhausted = False
    for kind, item in run.timeline:
        if kind == "complete" and item.result.metrics.get("throughput") == FLAT_THROUGHPUT:
            since_best = 0 if since_best is None else since_best + 1
            exhausted = exhausted or since_best >= patience
        elif kind == "create":
            assert not exhausted, "a trial was created after early stopping fired"
    assert exhausted
    search = [c for c in run.creates() if c["spec"].lineage_id is not None]
    assert 1 + patience <= len(search) <= 1 + patience + concurrent - 1
    assert isinstance(run.timeline[-1][1], searcher.Shutdown)


def test_without_early_stopping_flat_landscape_uses_the_budget() -> None:
    landscape = Landscape.draw(SEEDS[0])
    run = run_random(flat(landscape), landscape.slots, RandomOptions(), max_trials=30)
    assert len(run.creates()) == 30


# ----- stage 3 is dropped once stage 1 or 2 trains -----------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_no_stage3_trial_after_a_lower_stage_succeeded(seed: int) -> None:
    landscape = Landscape.draw(seed)
    stage3_before = 0
    for concurrent in (8, 16):
        run = run_random(landscape, landscape.slots, RandomOptions(), concurrent=concurrent)
        lower_ok = False
        specs = {}
        for kind, item in run.timeline:
            if kind == "create":
                spec = item["spec"]
                specs[spec.request_id] = spec
                if spec.stage == 3:
                    assert not lower_ok, "a stage-3 trial started after stage 1 or 2 trained"
                    stage3_before += 1
            elif kind == "complete":
                spec = specs.get(item.request_id)
                if spec is not None and spec.stage in (1, 2) and item.result.outcome.succeeded:
                    lower_ok = True
        assert lower_ok, "no stage-1/2 trial succeeded: the rule was never in force"
    # With 8-16 random configs in the first batch, stage 3 is drawn before anything trained.
    assert stage3_before > 0, "stage 3 was never tried: the rule was never tested"


def test_stage3_is_searched_when_lower_stages_never_fit() -> None:
    """The rule only drops stage 3 after a lower stage trained: if none fits, stage 3 runs."""
    landscape = Landscape.draw(SEEDS[0])

    def only_stage3(config: dict[str, Any]) -> Mapping[str, Any]:
        if not is_profiling_config(config) and config["zero_optimization"]["stage"] != 3:
            raise MemoryError("lower stages never fit")
        return landscape(config)

    run = run_random(only_stage3, landscape.slots, RandomOptions(), max_trials=40)
    assert run.method is not None
    best = run.method.tracker.best()
    assert best is not None and best.spec.stage == 3


# ----- trials per random config ------------------------------------------------------------


@pytest.mark.parametrize("per_config", [1, 2, 3, 5])
def test_trials_per_random_config_is_never_exceeded(per_config: int) -> None:
    largest = 0
    for seed in SEEDS[:2]:
        landscape = Landscape.draw(seed)
        run = run_random(
            landscape,
            landscape.slots,
            RandomOptions(trials_per_random_config=per_config),
            max_trials=48,
        )
        per_lineage: dict[str, int] = {}
        zeros: dict[str, str] = {}
        for create in run.creates():
            spec = create["spec"]
            if spec.lineage_id is None:
                continue
            per_lineage[spec.lineage_id] = per_lineage.get(spec.lineage_id, 0) + 1
            zero = json.dumps(create["overwrites"]["zero_optimization"], sort_keys=True)
            assert zeros.setdefault(spec.lineage_id, zero) == zero
        assert max(per_lineage.values()) <= per_config
        largest = max(largest, max(per_lineage.values()))
        # Lineages are distinct configs: the same ZeRO block is never searched twice.
        assert len(set(zeros.values())) == len(zeros)
    assert largest == per_config, "no lineage used its allowance: the cap was never tested"
