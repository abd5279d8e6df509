"""Shared machinery of the benchmarks: drive any ``SearchMethod`` against a synthetic landscape.

Every search, ours or upstream's, runs the same way: :class:`SearchEngine` plays the
Determined master, and a :class:`RecordingExecutor` answers trials from a
:class:`~determined_dsat.testing.synthetic.Landscape` through the replay backend's
``ReplayExecutor`` (simulated clock, 1 s per trial), logging each finished trial with its
noise-free throughput. A :class:`TimedMethod` wrapper measures the time the search method
itself spends on each event.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import yaml
from determined import searcher

from determined_dsat.build import build_method, build_space
from determined_dsat.methods import registry
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.ds_config import OVERWRITE_KEY, is_profiling_config, merge_overwrites
from determined_dsat.space.experiment import load_experiment
from determined_dsat.space.knobs import ZERO_KNOBS
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import TrialResult

METHODS = ("binary", "random", "asha")
ALL_STAGES = (1, 2, 3)
METRIC = "throughput"
DS_CONFIG_NAME = "ds_config.json"
CONFIG_NAME = "config.yaml"

# The user's ds_config of every benchmark search: bf16 Adam, nothing else decided.
BASE_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
    "bf16": {"enabled": True},
}


def package_digest() -> str:
    """A short hash of ``determined_dsat``'s sources, naming the code that made the numbers."""
    import hashlib

    import determined_dsat

    root = pathlib.Path(determined_dsat.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def quiet() -> None:
    """Silence the searchers' per-trial logging and Determined's deprecation warnings."""
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    for name in ("determined_dsat", "determined", "determined.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ----- the experiment on disk -----


@attrs.frozen
class ModelDir:
    """A model directory holding ``ds_config.json`` and the experiment's ``config.yaml``."""

    path: pathlib.Path

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / CONFIG_NAME

    @property
    def ds_config_path(self) -> pathlib.Path:
        return self.path / DS_CONFIG_NAME


def write_model_dir(path: pathlib.Path, slots: int) -> ModelDir:
    """Write the experiment of a landscape with ``slots`` GPUs per trial into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    model = ModelDir(path)
    model.ds_config_path.write_text(json.dumps(BASE_DS_CONFIG, indent=2))
    experiment = {
        "name": "dsat-benchmark",
        "entrypoint": f"python3 -m determined.launch.deepspeed python3 train.py "
        f"--deepspeed_config {DS_CONFIG_NAME}",
        "hyperparameters": {"deepspeed_config": DS_CONFIG_NAME},
        "resources": {"slots_per_trial": slots},
        "searcher": {"name": "single", "metric": METRIC, "max_length": 100},
    }
    model.config_path.write_text(yaml.safe_dump(experiment))
    return model


def ds_config_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The full ds_config a trial runs with: the base config with the trial's overwrites."""
    return merge_overwrites(BASE_DS_CONFIG, hparams.get(OVERWRITE_KEY) or {})


# ----- search spaces and scoring -----

KnobTables = Mapping[int, Mapping[str, Sequence[Any]]]
"""A search space's ZeRO knobs: stage -> knob -> the values it may propose."""

OUR_TABLE: KnobTables = ZERO_KNOBS
"""Our knob table (``determined_dsat.space.knobs.ZERO_KNOBS``)."""


def true_value(landscape: Landscape, ds_config: Mapping[str, Any]) -> float:
    """Noise-free throughput of a full ds_config; 0 for the profiling trial and for OOMs.

    The zero block is the trial's ``zero_optimization`` as the landscape sees it (the
    base ds_config merged with the trial's overwrites); knobs it leaves out take
    DeepSpeed's defaults inside the landscape.
    """
    if is_profiling_config(ds_config):
        return 0.0
    zero = ds_config.get("zero_optimization") or {}
    value = landscape.true_throughput(zero, int(ds_config["train_micro_batch_size_per_gpu"]))
    return 0.0 if value is None else value


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ----- our methods -----


def build_ours(
    name: str,
    model: ModelDir,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    stages: tuple[int, ...] = ALL_STAGES,
    options: object | None = None,
) -> DSATSearchMethod:
    """One of our search methods, set up as ``dsat`` would set it up (every option at its
    default unless ``options`` are given)."""
    experiment = load_experiment(model.config_path, model.path)
    settings = SearchSettings(
        method=name,
        config_path=model.config_path,
        model_dir=model.path,
        backend=Backend.REPLAY,
        run_dir=model.path / "run",
        method_options=options or registry.get(name).options(),
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        metric=Metric.parse(METRIC),
        zero_stages=stages,
        random_seed=seed,
    )
    space = build_space(settings, experiment)
    return build_method(settings, space, experiment.slots_per_trial)


# ----- running trials -----


@attrs.frozen
class TrialLog:
    """One finished trial, in completion order (``seq`` is 1-based)."""

    seq: int
    kind: str  # "profile" or "search"
    outcome: str
    stage: int | None
    mbs: int | None
    value: float  # noise-free throughput; 0 when the trial did not train
    zero: Mapping[str, Any] | None = None  # the zero block; None for the profiling trial


# One letter per outcome in :func:`trials_to_json`.
OUTCOME_CODES = {
    "ok": "k",
    "oom": "m",
    "error": "e",
    "timeout": "t",
    "invalid": "i",
    "cancelled": "c",
}


def trials_to_json(trials: Sequence[TrialLog], optimum: float) -> dict[str, Any]:
    """A run's trials as compact columns, in completion order.

    ``outcomes`` has one letter per trial (see ``OUTCOME_CODES``); ``stage`` and ``mbs`` are
    null for the profiling trial; ``fraction`` is the noise-free value over ``optimum``.
    """
    return {
        "outcomes": "".join(OUTCOME_CODES[t.outcome] for t in trials),
        "stage": [t.stage for t in trials],
        "mbs": [t.mbs for t in trials],
        "fraction": [round(t.value / optimum, 5) if optimum > 0 else 0.0 for t in trials],
    }


@attrs.define
class _Launched:
    kind: str
    stage: int | None
    mbs: int | None
    value: float
    zero: Mapping[str, Any] | None


class RecordingExecutor(TrialExecutor):
    """A replay executor over a landscape that logs every finished trial."""

    def __init__(self, landscape: Landscape) -> None:
        self.landscape = landscape
        source = ReplayFunction(self.landscape, f"landscape {self.landscape.seed}")
        self.inner = ReplayExecutor(source, ds_config_of)
        self.log: list[TrialLog] = []
        self.launch_s = 0.0
        self._launched: dict[str, _Launched] = {}

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        start = time.perf_counter()
        ds_config = ds_config_of(hparams)
        profiling = is_profiling_config(ds_config)
        zero = ds_config.get("zero_optimization") or {}
        self._launched[request_id] = _Launched(
            kind="profile" if profiling else "search",
            stage=None if profiling else int(zero.get("stage", 0)),
            mbs=None if profiling else int(ds_config["train_micro_batch_size_per_gpu"]),
            value=true_value(self.landscape, ds_config),
            zero=None if profiling else zero,
        )
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
                zero=info.zero,
            )
        )
        return completion

    @property
    def num_running(self) -> int:
        return self.inner.num_running

    def cancel_all(self) -> None:
        self.inner.cancel_all()


Ops = list[searcher.Operation]


class TimedMethod(searcher.SearchMethod):
    """Wraps a ``SearchMethod`` and adds up the time spent in its event handlers."""

    def __init__(self, inner: searcher.SearchMethod) -> None:
        # SearchMethod.__init__ only emits Determined's deprecation warning.
        self.inner = inner
        self.seconds = 0.0
        self.events = 0

    def _timed(self, handler: Callable[..., Any], *args: Any, event: bool = True) -> Any:
        start = time.perf_counter()
        try:
            return handler(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.events += int(event)

    def initial_operations(self, state: searcher.SearcherState) -> Ops:
        return list(self._timed(self.inner.initial_operations, state))

    def on_trial_created(self, state: searcher.SearcherState, request_id: uuid.UUID) -> Ops:
        return list(self._timed(self.inner.on_trial_created, state, request_id))

    def on_validation_completed(
        self, state: searcher.SearcherState, request_id: uuid.UUID, metric: Any, train_length: int
    ) -> Ops:
        handler = self.inner.on_validation_completed
        return list(self._timed(handler, state, request_id, metric, train_length))

    def on_trial_exited_early(
        self,
        state: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> Ops:
        return list(self._timed(self.inner.on_trial_exited_early, state, request_id, exited_reason))

    def on_trial_closed(self, state: searcher.SearcherState, request_id: uuid.UUID) -> Ops:
        return list(self._timed(self.inner.on_trial_closed, state, request_id))

    def progress(self, state: searcher.SearcherState) -> float:
        return float(self._timed(self.inner.progress, state, event=False))

    def note_outcome(self, request_id: str, result: TrialResult) -> None:
        """Forwarded to the inner method where it takes notes (ours do; upstream's not)."""
        note = getattr(self.inner, "note_outcome", None)
        if note is not None:
            self._timed(note, request_id, result, event=False)


@attrs.frozen
class RunResult:
    """How one search went: its trials in completion order and where the time went."""

    trials: tuple[TrialLog, ...]
    ended: str  # "shutdown", "idle" (nothing running, no shutdown) or "time cap"
    wall_s: float
    searcher_s: float
    events: int
    # Per completed trial: searcher seconds and events that its completion triggered.
    completion_s: tuple[float, ...]
    completion_events: tuple[int, ...]


def drive(
    method: searcher.SearchMethod, executor: RecordingExecutor, time_cap_s: float | None = None
) -> RunResult:
    """Run a search to its end (or until ``time_cap_s`` wall seconds have passed)."""
    timed = TimedMethod(method)
    engine = SearchEngine(timed, executor)
    completion_s: list[float] = []
    completion_events: list[int] = []
    start = time.perf_counter()
    engine.start()
    ended = "idle"
    while executor.num_running > 0:
        if engine.shutdown is not None:
            break
        if time_cap_s is not None and time.perf_counter() - start > time_cap_s:
            ended = "time cap"
            break
        completion = executor.next_completion()
        seconds, events = timed.seconds, timed.events
        engine.complete(completion)
        completion_s.append(timed.seconds - seconds)
        completion_events.append(timed.events - events)
    if engine.shutdown is not None:
        ended = "shutdown"
    executor.cancel_all()
    return RunResult(
        trials=tuple(executor.log),
        ended=ended,
        wall_s=time.perf_counter() - start,
        searcher_s=timed.seconds,
        events=timed.events,
        completion_s=tuple(completion_s),
        completion_events=tuple(completion_events),
    )
