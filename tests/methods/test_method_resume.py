"""Resume equality: a method restored from its JSON state at any event boundary continues
exactly as the uninterrupted method did, for every method in ``registry.methods()``.

The uninterrupted run is recorded through the engine as the sequence of calls the method
received (events and the runner's outcome notes) and what each returned. The same events
are then fed to a fresh adapter; at event ``k`` its ``state_dict()`` goes through
``json.dumps``/``json.loads`` into another fresh adapter (built with
``session.build_method``), which receives the remaining events. Every operation it returns
must equal the uninterrupted run's.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from determined import searcher

from determined_dsat.build import build_method
from determined_dsat.methods import registry
from determined_dsat.methods.asha import AshaOptions
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape

METHODS = sorted(registry.methods())
EVENT_METHODS = (
    "initial_operations",
    "on_trial_created",
    "on_validation_completed",
    "on_trial_exited_early",
    "on_trial_closed",
    "progress",
)
NOTES = ("note_outcome",)

Event = tuple[str, tuple[Any, ...]]


def feasible_seeds(count: int) -> list[int]:
    seeds, seed = [], 0
    while len(seeds) < count:
        if Landscape.draw(seed).optimum() > 0:
            seeds.append(seed)
        seed += 1
    return seeds


SEEDS = feasible_seeds(2)


def make_space(slots: int) -> ConfigSpace:
    return ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=(1, 2, 3),
        grid=MicroBatchGrid(slots=slots),
        start_profile_step=3,
        end_profile_step=5,
    )


def make_settings(method: str, options: Any = None, **kw: Any) -> SearchSettings:
    return SearchSettings(
        method=method,
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=options or registry.get(method).options(),
        metric=Metric.THROUGHPUT,
        random_seed=kw.pop("random_seed", 1234),
        **kw,
    )


def normalize(result: Any) -> Any:
    """Operations as comparable plain values (Create hparams as canonical JSON)."""
    if not isinstance(result, list):
        return result
    out = []
    for op in result:
        if isinstance(op, searcher.Create):
            hparams = json.dumps(json.loads(op.hparams), sort_keys=True)
            out.append(("create", str(op.request_id), hparams, op.checkpoint))
        elif isinstance(op, searcher.ValidateAfter):
            out.append(("validate_after", str(op.request_id), int(op.length)))
        elif isinstance(op, searcher.Close):
            out.append(("close", str(op.request_id)))
        elif isinstance(op, searcher.Shutdown):
            out.append(("shutdown", op.cancel, op.failure))
        elif isinstance(op, searcher.Progress):
            out.append(("progress", op.progress))
        else:
            raise AssertionError(f"unexpected operation {op!r}")
    return out


class Recorder:
    """Forwards the engine's calls to a method and records each call with its result."""

    def __init__(self, inner: DSATSearchMethod) -> None:
        self.inner = inner
        self.events: list[Event] = []
        self.results: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in EVENT_METHODS + NOTES:
            return target

        def call(*args: Any) -> Any:
            recorded = args[1:] if name in EVENT_METHODS else args
            self.events.append((name, copy.deepcopy(recorded)))
            result = target(*args)
            self.results.append(normalize(result))
            return result

        return call


def feed(method: DSATSearchMethod, events: list[Event]) -> list[Any]:
    results = []
    for name, args in events:
        if name in EVENT_METHODS:
            result = getattr(method, name)(searcher.SearcherState(), *copy.deepcopy(args))
        else:
            result = getattr(method, name)(*args)
        results.append(normalize(result))
    return results


@attrs.frozen
class Scenario:
    name: str
    source: Callable[[dict[str, Any]], Mapping[str, Any]]
    slots: int
    settings: Callable[[str], SearchSettings]


def scenarios() -> list[Scenario]:
    out = []
    for seed in SEEDS:
        landscape = Landscape.draw(seed)
        out.append(
            Scenario(
                f"landscape{seed}",
                landscape,
                landscape.slots,
                lambda m: make_settings(m, max_trials=40, max_concurrent_trials=4),
            )
        )
    tight = attrs.evolve(
        Landscape.draw(SEEDS[0]), model_error={s: 1.25 for s in range(4)}, activation_error=1.3
    )

    def ooms(method: str) -> SearchSettings:
        options = None
        if method == "asha":
            options = AshaOptions(min_binary_search_trials=1, divisor=2, asha_early_stopping=1)
        elif method == "random":
            options = registry.get("random").options(trials_per_random_config=3, early_stopping=12)
        return make_settings(
            method, options, max_trials=48, max_concurrent_trials=5, max_slots=3 * tight.slots
        )

    out.append(Scenario("ooms", tight, tight.slots, ooms))
    first = Landscape.draw(SEEDS[0])
    out.append(
        Scenario(
            "baseline-and-confirm",
            first,
            first.slots,
            lambda m: make_settings(
                m, max_trials=30, max_concurrent_trials=3, baseline=True, confirm_top=3
            ),
        )
    )
    return out


SCENARIOS = scenarios()


def record_run(scenario: Scenario, method: str) -> tuple[list[Event], list[Any]]:
    settings = scenario.settings(method)
    space = make_space(scenario.slots)
    recorder = Recorder(build_method(settings, space, scenario.slots))
    executor = ReplayExecutor(ReplayFunction(scenario.source, "test"), space.ds_config_from_hparams)
    engine = SearchEngine(recorder, executor)  # type: ignore[arg-type]
    engine.start()
    engine.run()
    assert engine.shutdown is not None
    return recorder.events, recorder.results


def boundaries(events: list[Event]) -> list[int]:
    """Event indices a runner can checkpoint at: never between a note and its event."""
    return [k for k in range(1, len(events)) if events[k - 1][0] not in NOTES]


def assert_plain_json(value: Any, path: str = "state") -> None:
    """Only JSON types, no bytes, and no string that looks like pickled or binary data."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: non-string key {key!r}"
            assert_plain_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_plain_json(item, f"{path}[{i}]")
    elif isinstance(value, str):
        assert not value.startswith(("gASV", "gAN", "\x80")), f"{path}: looks pickled"
        assert value.isprintable(), f"{path}: binary content"
    else:
        assert value is None or isinstance(value, (bool, int, float)), f"{path}: {type(value)}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("method", METHODS)
def test_resume_from_json_state_continues_identically(method: str, scenario: Scenario) -> None:
    events, expected = record_run(scenario, method)
    settings = scenario.settings(method)
    space = make_space(scenario.slots)

    # The events replayed into a fresh adapter reproduce the run: the method is deterministic.
    assert feed(build_method(settings, space, scenario.slots), events) == expected

    ks = boundaries(events)
    profile_closed = next(i + 1 for i, (name, _) in enumerate(events) if name == "on_trial_closed")
    # About 30 evenly spread checkpoints; 10 for model, whose every replayed event refits
    # its surrogates (30 made these four cases four minutes of the suite).
    points = 10 if method == "model" else 30
    chosen = sorted({ks[0], profile_closed, *ks[:: max(1, len(ks) // points)], ks[-1]})
    in_flight_seen = 0
    for k in chosen:
        first = build_method(settings, space, scenario.slots)
        before = feed(first, events[:k])
        if first.tracker.num_running > 1:
            in_flight_seen += 1
        text = json.dumps(first.state_dict())
        state = json.loads(text)
        assert isinstance(state.get("version"), int)
        assert_plain_json(state)
        resumed = build_method(settings, space, scenario.slots)
        resumed.load_state_dict(state)
        # Saving again right away gives the same state: nothing is lost in the round trip.
        assert json.loads(json.dumps(resumed.state_dict())) == state
        after = feed(resumed, events[k:])
        assert before + after == expected, f"resume at event {k} ({events[k][0]}) diverged"
    assert in_flight_seen > 0, "no resume point had trials in flight"


def build_and_load(
    settings: SearchSettings, space: ConfigSpace, slots: int, state: Mapping[str, Any]
) -> DSATSearchMethod:
    method = build_method(settings, space, slots)
    method.load_state_dict(json.loads(json.dumps(state)))
    return method


@pytest.mark.parametrize("method", METHODS)
def test_state_right_after_profiling_resumes_into_same_first_batch(method: str) -> None:
    """The resume point with the most still to decide: the profile has just been accepted."""
    scenario = SCENARIOS[0]
    events, expected = record_run(scenario, method)
    settings = scenario.settings(method)
    space = make_space(scenario.slots)
    k = next(i + 1 for i, (name, _) in enumerate(events) if name == "on_validation_completed")
    first = build_method(settings, space, scenario.slots)
    feed(first, events[:k])
    assert first.tracker.profile is not None
    resumed = build_and_load(settings, space, scenario.slots, first.state_dict())
    assert resumed.tracker.profile == first.tracker.profile
    assert feed(resumed, events[k:]) == expected[k:]
    creates = [op for ops in expected[k:] if isinstance(ops, list) for op in ops]
    created = sum(op[0] == "create" for op in creates)
    if resumed.policy.stop_reason(resumed.tracker) is None:
        assert created == settings.max_trials - 1
    else:  # the method stopped early on its own (``model``'s --min-improvement)
        assert 2 <= created < settings.max_trials - 1
        assert resumed.stop_message is not None and "budget" not in resumed.stop_message


@pytest.mark.parametrize("method", METHODS)
def test_state_refuses_other_version_or_method(method: str) -> None:
    scenario = SCENARIOS[0]
    settings = scenario.settings(method)
    space = make_space(scenario.slots)
    state = build_method(settings, space, scenario.slots).state_dict()
    with pytest.raises(ValueError, match="version"):
        build_and_load(settings, space, scenario.slots, {**state, "version": 999})
    other = next((m for m in METHODS if m != method), None)
    if other is not None:
        with pytest.raises(ValueError, match=method):
            build_and_load(scenario.settings(other), space, scenario.slots, state)
