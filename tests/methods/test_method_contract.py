"""The contract every registered search method keeps, checked through the engine and replay.

Each test is parametrized over ``registry.methods()``, so a method added to the registry is
held to the same contract without touching this file. Trials come from seeded synthetic
landscapes (``runners.synthetic.Landscape``), whose ground truth (true memory ceiling, true
throughput, optimum) the assertions are derived from.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from determined import searcher

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: E402

from determined_dsat.build import build_method  # noqa: E402
from determined_dsat.methods import registry  # noqa: E402
from determined_dsat.methods.search_method import DSATSearchMethod  # noqa: E402
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.executor import Completion, TrialExecutor  # noqa: E402
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction  # noqa: E402
from determined_dsat.settings import Backend, SearchSettings  # noqa: E402
from determined_dsat.space.batch import MicroBatchGrid  # noqa: E402
from determined_dsat.space.config_space import ConfigSpace  # noqa: E402
from determined_dsat.space.metric import Metric  # noqa: E402
from determined_dsat.testing.synthetic import Landscape  # noqa: E402
from determined_dsat.trials.records import Outcome  # noqa: E402

METHODS = sorted(registry.methods())
OVERWRITE_KEY = "overwrite_deepspeed_args"

BASE_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
}
BASE_HPARAMS: dict[str, Any] = {"deepspeed_config": "ds_config.json", "lr": 1e-4}


def feasible_seeds(count: int, stages: tuple[int, ...] = (1, 2, 3)) -> list[int]:
    """The first ``count`` landscape seeds on which some config of ``stages`` fits at all."""
    seeds: list[int] = []
    seed = 0
    while len(seeds) < count:
        if Landscape.draw(seed).optimum(stages) > 0:
            seeds.append(seed)
        seed += 1
    return seeds


SEEDS = feasible_seeds(8)


def make_space(
    slots: int,
    stages: tuple[int, ...] = (1, 2, 3),
    *,
    offload: bool = False,
    train_batch_size: int | None = None,
    divisible_by: int = 1,
    mbs_cap: int | None = None,
) -> ConfigSpace:
    return ConfigSpace(
        base_ds_config=BASE_DS_CONFIG,
        base_hparams=BASE_HPARAMS,
        stages=stages,
        grid=MicroBatchGrid(
            slots=slots,
            train_batch_size=train_batch_size,
            divisible_by=divisible_by,
            mbs_cap=mbs_cap,
        ),
        start_profile_step=3,
        end_profile_step=5,
        offload_optimizer=offload,
        offload_param=offload and 3 in stages,
    )


def make_settings(method: str, **kw: Any) -> SearchSettings:
    options = kw.pop("method_options", None) or registry.get(method).options()
    return SearchSettings(
        method=method,
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=options,
        metric=kw.pop("metric", Metric.THROUGHPUT),
        zero_stages=kw.pop("zero_stages", (1, 2, 3)),
        **kw,
    )


def is_profile_hparams(hparams: Mapping[str, Any]) -> bool:
    section = (hparams.get(OVERWRITE_KEY) or {}).get("autotuning") or {}
    return bool((section.get("model_info") or {}).get("profile"))


class MethodRecorder:
    """Stands between the engine and a method; appends every call and its result to a timeline."""

    def __init__(self, inner: DSATSearchMethod, timeline: list[tuple[str, Any]]) -> None:
        self.inner = inner
        self.timeline = timeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _ops(self, name: str, *args: Any) -> list[searcher.Operation]:
        ops = list(getattr(self.inner, name)(*args))
        self.timeline.append(("ops", (name, args[1:], ops)))
        return ops

    def initial_operations(self, s: Any) -> list[searcher.Operation]:
        return self._ops("initial_operations", s)

    def on_trial_created(self, s: Any, rid: Any) -> list[searcher.Operation]:
        return self._ops("on_trial_created", s, rid)

    def on_validation_completed(
        self, s: Any, rid: Any, metric: Any, length: int
    ) -> list[searcher.Operation]:
        return self._ops("on_validation_completed", s, rid, metric, length)

    def on_trial_exited_early(self, s: Any, rid: Any, reason: Any) -> list[searcher.Operation]:
        return self._ops("on_trial_exited_early", s, rid, reason)

    def on_trial_closed(self, s: Any, rid: Any) -> list[searcher.Operation]:
        return self._ops("on_trial_closed", s, rid)

    def progress(self, s: Any) -> float:
        return float(self.inner.progress(s))


class WatchingExecutor(TrialExecutor):
    """Wraps an executor: records launches and completions, and the most trials ever running."""

    def __init__(
        self,
        inner: ReplayExecutor,
        timeline: list[tuple[str, Any]],
        transform: Callable[[Completion], Completion] | None = None,
    ) -> None:
        self.inner = inner
        self.timeline = timeline
        self.transform = transform
        self.running: set[str] = set()
        self.max_running = 0
        self.launched: list[str] = []
        self.completions: list[Completion] = []

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        assert request_id not in self.running, "a running trial was launched twice"
        self.running.add(request_id)
        self.launched.append(request_id)
        self.max_running = max(self.max_running, len(self.running))
        self.timeline.append(("launch", request_id))
        self.inner.launch(request_id, hparams, length)

    def next_completion(self) -> Completion:
        completion = self.inner.next_completion()
        if self.transform is not None:
            completion = self.transform(completion)
        self.running.discard(completion.request_id)
        self.completions.append(completion)
        self.timeline.append(("complete", completion))
        return completion

    @property
    def num_running(self) -> int:
        return int(self.inner.num_running)

    def elapsed_s(self) -> float:
        return self.inner.elapsed_s()

    def cancel_all(self) -> None:
        self.running.clear()
        self.inner.cancel_all()


@attrs.define
class Run:
    engine: SearchEngine
    method: DSATSearchMethod
    executor: WatchingExecutor
    space: ConfigSpace
    settings: SearchSettings
    timeline: list[tuple[str, Any]]

    def ops(self) -> list[searcher.Operation]:
        return [op for kind, item in self.timeline if kind == "ops" for op in item[2]]

    def creates(self) -> list[searcher.Create]:
        return [op for op in self.ops() if isinstance(op, searcher.Create)]

    def outcome_of(self) -> dict[str, Outcome]:
        return {c.request_id: c.result.outcome for c in self.executor.completions}


def run_search(
    method: str,
    source: Callable[[dict[str, Any]], Mapping[str, Any]],
    space: ConfigSpace,
    *,
    transform: Callable[[Completion], Completion] | None = None,
    **settings_kw: Any,
) -> Run:
    settings = make_settings(method, zero_stages=space.stages, **settings_kw)
    inner = build_method(settings, space, space.grid.slots)
    timeline: list[tuple[str, Any]] = []
    executor = WatchingExecutor(
        ReplayExecutor(
            ReplayFunction(source, "test", errors_as_trials=True), space.ds_config_from_hparams
        ),
        timeline,
        transform,
    )
    engine = SearchEngine(MethodRecorder(inner, timeline), executor)  # type: ignore[arg-type]
    engine.start()
    engine.run()
    return Run(engine, inner, executor, space, settings, timeline)


# ----- structural contract ----------------------------------------------------------------

LIMITS = [
    pytest.param({"max_trials": 2, "max_concurrent_trials": 4}, id="profile+1"),
    pytest.param({"max_trials": 12, "max_concurrent_trials": 1}, id="serial"),
    pytest.param({"max_trials": 30, "max_concurrent_trials": 3}, id="mct3"),
    pytest.param(
        {"max_trials": 40, "max_concurrent_trials": 16, "max_slots_trials": 2}, id="slots"
    ),
]


def check_contract(run: Run, max_trials: int, cap: int) -> None:
    slots = run.space.grid.slots
    timeline = run.timeline
    ops = run.ops()

    # The engine ends with exactly one Shutdown, and it is the last operation.
    assert run.engine.shutdown is not None
    shutdowns = [i for i, op in enumerate(ops) if isinstance(op, searcher.Shutdown)]
    assert shutdowns == [len(ops) - 1]

    creates = run.creates()
    assert 1 <= len(creates) <= max_trials
    ids = [str(c.request_id) for c in creates]
    assert len(set(ids)) == len(ids), "request ids are reused"

    # Every Create is immediately followed by a ValidateAfter of the same trial.
    for i, op in enumerate(ops):
        if isinstance(op, searcher.Create):
            nxt = ops[i + 1]
            assert isinstance(nxt, searcher.ValidateAfter)
            assert nxt.request_id == op.request_id
            assert int(nxt.length) >= 1

    # The profiling trial is created first and alone until it has finished.
    first = json.loads(creates[0].hparams)
    assert is_profile_hparams(first)
    assert not any(is_profile_hparams(json.loads(c.hparams)) for c in creates[1:])
    profile_id = ids[0]
    profile_done = False
    for kind, item in timeline:
        if kind == "complete" and item.request_id == profile_id:
            profile_done = True
        if kind == "ops" and not profile_done:
            late = [op for op in item[2] if isinstance(op, searcher.Create)]
            assert all(str(op.request_id) == profile_id for op in late)

    # Concurrency: neither the trial limit nor the slot limit is ever exceeded.
    assert run.executor.max_running <= cap

    # Every search trial's overwrites: a ZeRO block DeepSpeed accepts, consistent batches.
    for create in creates[1:]:
        overwrites = json.loads(create.hparams)[OVERWRITE_KEY]
        zero = overwrites["zero_optimization"]
        assert zero["stage"] in run.space.stages
        DeepSpeedZeroConfig(**zero)  # pydantic, extra keys forbidden: raises on a bad key
        mbs = overwrites["train_micro_batch_size_per_gpu"]
        gas = overwrites["gradient_accumulation_steps"]
        assert mbs >= 1 and gas >= 1
        assert overwrites["train_batch_size"] == mbs * gas * slots
        # The full ds_config the trial runs with keeps the user's settings.
        full = run.space.ds_config_from_hparams(json.loads(create.hparams))
        assert full["bf16"] == {"enabled": True}
        assert full["optimizer"] == BASE_DS_CONFIG["optimizer"]


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("method", METHODS)
def test_structural_contract(method: str, seed: int, limits: dict[str, int]) -> None:
    landscape = Landscape.draw(seed)
    slots = landscape.slots
    limits = dict(limits)
    slot_trials = limits.pop("max_slots_trials", None)
    max_slots = None if slot_trials is None else slot_trials * slots + slots - 1
    space = make_space(slots)
    run = run_search(method, landscape, space, max_slots=max_slots, **limits)
    cap = limits["max_concurrent_trials"]
    if max_slots is not None:
        cap = min(cap, max_slots // slots)
    check_contract(run, limits["max_trials"], cap)
    assert len(run.creates()) >= 2, "no search trial was ever created"
    if cap > 1 and limits["max_trials"] > cap + 1:
        # Otherwise "never more than the cap" would hold trivially.
        assert run.executor.max_running > 1, "trials never ran concurrently"


@pytest.mark.parametrize(
    ("stages", "offload", "batch"),
    [
        pytest.param((0, 1, 2, 3), True, {}, id="all-stages-offload"),
        pytest.param((3,), True, {"divisible_by": 2}, id="stage3-offload-div2"),
        pytest.param((1, 2), False, {"train_batch_size": 0}, id="fixed-batch"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_contract_other_spaces(
    method: str, stages: tuple[int, ...], offload: bool, batch: dict[str, int]
) -> None:
    seed = feasible_seeds(1, stages)[0]
    landscape = Landscape.draw(seed)
    if batch.get("train_batch_size") == 0:
        # A global batch of 64 samples per GPU: micro-batches must divide 64.
        batch = {"train_batch_size": 64 * landscape.slots}
    space = make_space(landscape.slots, stages, offload=offload, **batch)
    run = run_search(method, landscape, space, max_trials=30, max_concurrent_trials=4)
    check_contract(run, 30, 4)
    for create in run.creates()[1:]:
        overwrites = json.loads(create.hparams)[OVERWRITE_KEY]
        mbs = overwrites["train_micro_batch_size_per_gpu"]
        assert space.grid.allowed(mbs)
        if "divisible_by" in batch:
            assert mbs % batch["divisible_by"] == 0
        if "train_batch_size" in batch:
            assert overwrites["train_batch_size"] == batch["train_batch_size"]


# ----- failures steer and stop --------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_oom_steers_lineage_to_smaller_mbs(method: str) -> None:
    """After a trial that did not fit, the next trial of its lineage tries a smaller mbs."""
    steered = 0
    for seed in SEEDS[:4]:
        # The memory model underestimates real use by 25-35 %: early probes run out of memory.
        landscape = attrs.evolve(
            Landscape.draw(seed),
            model_error={s: 1.25 for s in range(4)},
            activation_error=1.35,
        )
        space = make_space(landscape.slots)
        run = run_search(method, landscape, space, max_trials=40, max_concurrent_trials=4)
        outcomes = run.outcome_of()
        tracker = run.method.tracker
        lineages: dict[str, list[Any]] = {}
        for record in tracker.records():
            if record.spec.lineage_id is not None:
                lineages.setdefault(record.spec.lineage_id, []).append(record.spec)
        for specs in lineages.values():
            for before, after in zip(specs, specs[1:]):
                if before.request_id in outcomes and outcomes[before.request_id].too_big:
                    # The OOM really was beyond the landscape's true ceiling.
                    assert before.mbs > landscape.true_max_mbs(before.stage, zero=before.zero)
                    assert after.mbs < before.mbs
                    steered += 1
    assert steered > 0, "no lineage ever continued after an OOM: the test proved nothing"


class Poison(Exception):
    """Raised by the replay source for the chosen trial."""


def poisoned(landscape: Landscape, nth: int) -> Callable[[dict[str, Any]], Mapping[str, Any]]:
    """The landscape, except that its ``nth`` search trial (1-based) raises ``Poison``."""
    calls = {"search": 0}

    def source(config: dict[str, Any]) -> Mapping[str, Any]:
        result = landscape(config)
        if "num_params" not in result:
            calls["search"] += 1
            if calls["search"] == nth:
                raise Poison(f"chosen config {json.dumps(config, sort_keys=True)}")
        return result

    return source


def turn_poison_into(outcome: Outcome) -> Callable[[Completion], Completion]:
    def transform(c: Completion) -> Completion:
        if c.result.outcome is Outcome.ERROR and c.result.detail.startswith("Poison"):
            return attrs.evolve(c, result=attrs.evolve(c.result, outcome=outcome))
        return c

    return transform


@pytest.mark.parametrize("outcome", [Outcome.INVALID, Outcome.CANCELLED])
@pytest.mark.parametrize("nth", [1, 6])
@pytest.mark.parametrize("method", METHODS)
def test_invalid_or_cancelled_trial_stops_search(method: str, nth: int, outcome: Outcome) -> None:
    landscape = Landscape.draw(SEEDS[0])
    space = make_space(landscape.slots)
    run = run_search(
        method,
        poisoned(landscape, nth),
        space,
        transform=turn_poison_into(outcome),
        max_trials=40,
        max_concurrent_trials=3,
    )
    shutdown = run.engine.shutdown
    assert shutdown is not None
    [hit] = [c for c in run.executor.completions if c.result.outcome is outcome]
    # Nothing is created once the method has seen the trial end.
    seen = False
    for kind, item in run.timeline:
        if kind == "complete" and item.request_id == hit.request_id:
            seen = True
        elif kind == "ops" and seen:
            assert not any(isinstance(op, searcher.Create) for op in item[2])
    assert seen
    assert isinstance(run.ops()[-1], searcher.Shutdown)
    assert len(run.creates()) < 40
    if outcome is Outcome.CANCELLED:
        assert shutdown.cancel
    else:
        assert shutdown.failure and not shutdown.cancel
        assert run.method.failed
    assert run.method.stop_message is not None
    assert outcome.value in run.method.stop_message
    assert run.method.tracker[hit.request_id].result.outcome is outcome  # type: ignore[union-attr]


def failing_profile(kind: str, landscape: Landscape) -> Callable[[dict[str, Any]], Mapping]:
    def source(config: dict[str, Any]) -> Mapping[str, Any]:
        result = landscape(config)
        if "num_params" in result:
            if kind == "oom":
                raise MemoryError("profiling step ran out of memory")
            if kind == "crash":
                raise RuntimeError("NCCL error")
            if kind == "bad-metrics":
                return {k: v for k, v in result.items() if k != "gpu_mem"}
        return result

    return source


@pytest.mark.parametrize("kind", ["oom", "crash", "bad-metrics"])
@pytest.mark.parametrize("method", METHODS)
def test_failed_profiling_trial_shuts_down_failed(method: str, kind: str) -> None:
    landscape = Landscape.draw(SEEDS[0])
    space = make_space(landscape.slots)
    run = run_search(
        method, failing_profile(kind, landscape), space, max_trials=20, max_concurrent_trials=4
    )
    assert run.engine.shutdown is not None
    assert run.engine.shutdown.failure
    assert run.method.failed
    assert len(run.creates()) == 1, "no search trial may start without a profile"
    message = run.method.stop_message
    assert message is not None and "profiling" in message
    if kind == "bad-metrics":
        assert "gpu_mem" in message


# ----- search quality -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_finds_near_optimal_config(method: str) -> None:
    """With 64 trials the best config found reaches >= 90 % of the optimum on most landscapes.

    Why 90 %: the micro-batch part of the problem is solved exactly by bisection (throughput
    rises with mbs, so the true ceiling is optimal), which leaves only the ZeRO knobs. Each
    knob value multiplies throughput by a factor in [0.90, 1.04] and the optimum uses the best
    value of every knob; a random choice of a 2-4 valued knob is the best one with
    probability 1/4-1/2 and otherwise loses a few percent on average. Over the dozen or more
    configs that 64 trials cover, the best one is within a few percent per stage of the optimum,
    while stage choice (stage efficiency differs by up to ~28 %) is covered by sampling all
    stages. 2 % measurement noise can make the search keep a slightly worse config. Single
    landscapes can still fall short (few knobs drawn well), hence the median over 8.
    """
    ratios = []
    for seed in SEEDS:
        landscape = Landscape.draw(seed)
        space = make_space(landscape.slots)
        run = run_search(method, landscape, space, max_trials=64, max_concurrent_trials=4)
        best = run.method.tracker.best()
        value = None if best is None else landscape.true_throughput(best.spec.zero, best.spec.mbs)
        ratios.append(0.0 if value is None else value / landscape.optimum())
    assert all(r <= 1.0 + 1e-9 for r in ratios), ratios  # nothing beats the true optimum
    assert statistics.median(ratios) >= 0.9, ratios


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cap", [1, 6, 24])
def test_no_method_proposes_above_the_micro_batch_cap(method: str, cap: int) -> None:
    landscape = Landscape.draw(SEEDS[1])
    space = make_space(landscape.slots, mbs_cap=cap)
    run = run_search(method, landscape, space, max_trials=24, max_concurrent_trials=4)
    searched = [r.spec.mbs for r in run.method.tracker.records() if r.spec.kind.value == "search"]
    assert searched and max(searched) <= cap
    # A cap below the landscape's limit is where a bisection ends up: it tries the cap itself.
    limit = min(landscape.true_max_mbs(s) for s in (1, 2, 3))
    if cap < limit and method != "random":
        assert cap in searched
