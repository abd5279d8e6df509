"""Trials answered by a benchmark landscape on the replay backend's simulated clock, logged.

:class:`LandscapeSource` is the replay source every search of the benchmarks sees: the
profiling config gets the landscape's profile, every other config one noisy measurement
(``landscape.measure``) or an OOM. It knows the simulated seconds each trial takes: the
measurement's ``duration_s``, :meth:`oom_duration_s` for an OOM, and for the profile the
landscape's own duration (its ``duration_s`` or ``expected_duration_s`` where it has one).

The noise of a measurement is seeded from (landscape, run seed, config, how often this run
asked for it): a re-measurement draws fresh noise, one run is reproducible whatever ran
before it in the process, and runs with different seeds see different noise, so a method
that makes no random choices still has a distribution over seeds.

:class:`RecordingExecutor` is the replay backend's ``ReplayExecutor`` over that source,
logging every finished trial in completion order with its noise-free value
(``true_throughput`` of the full ds_config; 0 when it did not train) and the simulated
clock at its completion.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from benchmarks.families.api import BenchmarkLandscape
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.replay import (
    DEFAULT_DURATION_S,
    DURATION_KEY,
    ReplayExecutor,
    ReplaySource,
)
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.trials.records import Outcome, TrialResult

DsConfigOf = Callable[[Mapping[str, Any]], dict[str, Any]]
KindOf = Callable[[str], str | None]

# One letter per outcome in :func:`trials_to_json`.
OUTCOME_CODES = {
    "ok": "k",
    "oom": "m",
    "error": "e",
    "timeout": "t",
    "invalid": "i",
    "cancelled": "c",
}
# One letter per kind of trial: profile, baseline (the user's config), search, confirmation.
KIND_CODES = {"profile": "p", "baseline": "b", "search": "s", "confirm": "c"}


def noise_seed(landscape_key: str, run_seed: int, canonical: str, count: int) -> int:
    """The seed of the ``count``-th measurement of a config in one run (64 bits)."""
    digest = hashlib.sha256(f"{landscape_key}|{run_seed}|{canonical}|{count}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def true_value(landscape: BenchmarkLandscape, ds_config: Mapping[str, Any]) -> float:
    """Noise-free samples/s of a full ds_config; 0 for the profiling config and for an OOM
    (or a config the landscape refuses)."""
    if is_profiling_config(ds_config):
        return 0.0
    try:
        value = landscape.true_throughput(ds_config)
    except ValueError:
        return 0.0
    return 0.0 if value is None else float(value)


class LandscapeSource(ReplaySource):
    """A benchmark landscape as a replay source, with its simulated trial durations."""

    def __init__(self, landscape: BenchmarkLandscape, run_seed: int) -> None:
        self.landscape = landscape
        self.run_seed = run_seed
        self._calls: dict[str, int] = {}

    def _profile_duration_s(self, ds_config: dict[str, Any], metrics: Mapping[str, Any]) -> float:
        if DURATION_KEY in metrics:
            return float(metrics[DURATION_KEY])
        expected = getattr(self.landscape, "expected_duration_s", None)
        return DEFAULT_DURATION_S if expected is None else float(expected(ds_config))

    def evaluate(self, ds_config: dict[str, Any]) -> TrialResult:
        if is_profiling_config(ds_config):
            metrics = dict(self.landscape(ds_config))
            duration = self._profile_duration_s(ds_config, metrics)
            metrics.pop(DURATION_KEY, None)
            return TrialResult(Outcome.OK, metrics, duration)
        canonical = json.dumps(ds_config, sort_keys=True, default=str)
        count = self._calls.get(canonical, 0)
        self._calls[canonical] = count + 1
        seed = noise_seed(self.landscape.key, self.run_seed, canonical, count)
        try:
            metrics = dict(self.landscape.measure(ds_config, seed))
        except MemoryError as exc:
            duration = self.landscape.oom_duration_s(ds_config)
            return TrialResult(Outcome.OOM, {}, duration, f"MemoryError: {exc}")
        except ValueError as exc:  # a batch DeepSpeed would refuse: fails at start-up
            return TrialResult(Outcome.ERROR, {}, DEFAULT_DURATION_S, f"ValueError: {exc}")
        duration = float(metrics.pop(DURATION_KEY, DEFAULT_DURATION_S))
        return TrialResult(Outcome.OK, metrics, duration)


@attrs.frozen
class TrialLog:
    """One finished trial, in completion order (``seq`` is 1-based)."""

    seq: int
    kind: str  # a key of KIND_CODES
    outcome: str  # a key of OUTCOME_CODES
    stage: int | None  # None for the profiling trial
    mbs: int | None
    value: float  # noise-free samples/s; 0 when the trial did not train
    finish_s: float  # the simulated clock when it finished (s since the search started)


def trial_shape(ds_config: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(kind, stage, micro-batch) of a full ds_config as the benchmark logs it."""
    if is_profiling_config(ds_config):
        return "profile", None, None
    zero = ds_config.get("zero_optimization")
    stage = int(zero.get("stage", 0)) if isinstance(zero, Mapping) else 0
    mbs = ds_config.get("train_micro_batch_size_per_gpu")
    return "search", stage, None if mbs is None else int(mbs)


def trials_to_json(trials: Sequence[TrialLog], optimum: float) -> dict[str, Any]:
    """A run's trials as compact columns, in completion order.

    ``outcomes`` and ``kinds`` have one letter per trial (``OUTCOME_CODES``,
    ``KIND_CODES``); ``stage`` and ``mbs`` are null for the profiling trial; ``fraction``
    is the noise-free value over ``optimum``; ``finish_s`` the simulated clock at the end.
    """
    return {
        "outcomes": "".join(OUTCOME_CODES[t.outcome] for t in trials),
        "kinds": "".join(KIND_CODES[t.kind] for t in trials),
        "stage": [t.stage for t in trials],
        "mbs": [t.mbs for t in trials],
        "fraction": [round(t.value / optimum, 6) if optimum > 0 else 0.0 for t in trials],
        "finish_s": [round(t.finish_s, 1) for t in trials],
    }


@attrs.define
class _Launched:
    kind: str
    stage: int | None
    mbs: int | None
    value: float


class RecordingExecutor(TrialExecutor):
    """The replay backend's executor over a landscape, logging every finished trial.

    ``ds_config_of`` turns a trial's hyperparameters into its full ds_config (as the
    search's own runner would); ``kind_of`` names a trial's kind from its request id where
    the search knows it (ours: profile, baseline, search, confirm)."""

    def __init__(
        self,
        landscape: BenchmarkLandscape,
        ds_config_of: DsConfigOf,
        run_seed: int,
        kind_of: KindOf | None = None,
    ) -> None:
        self.landscape = landscape
        self.ds_config_of = ds_config_of
        self.kind_of = kind_of
        self.inner = ReplayExecutor(LandscapeSource(landscape, run_seed), ds_config_of)
        self.log: list[TrialLog] = []
        self.launch_s = 0.0  # wall seconds spent answering launches (the scale benchmark)
        self._launched: dict[str, _Launched] = {}

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        start = time.perf_counter()
        ds_config = self.ds_config_of(hparams)
        kind, stage, mbs = trial_shape(ds_config)
        named = None if self.kind_of is None else self.kind_of(request_id)
        value = true_value(self.landscape, ds_config)
        self._launched[request_id] = _Launched(named or kind, stage, mbs, value)
        self.inner.launch(request_id, hparams, length)
        self.launch_s += time.perf_counter() - start

    def next_completion(self) -> Completion:
        completion = self.inner.next_completion()
        info = self._launched.pop(completion.request_id)
        outcome = completion.result.outcome.value
        self.log.append(
            TrialLog(
                seq=len(self.log) + 1,
                kind=info.kind,
                outcome=outcome,
                stage=info.stage,
                mbs=info.mbs,
                value=info.value if outcome == "ok" else 0.0,
                finish_s=self.inner.clock,
            )
        )
        return completion

    @property
    def clock_s(self) -> float:
        """The simulated clock (s since the search started)."""
        return self.inner.clock

    @property
    def num_running(self) -> int:
        return self.inner.num_running

    def cancel_all(self) -> None:
        self.inner.cancel_all()
