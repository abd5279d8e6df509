"""Shared machinery of the benchmarks: the experiment on disk, our methods set up exactly as
the ``dsat`` CLI sets them up, and the loop that drives any ``SearchMethod`` to its end.

Every search, ours or upstream's, runs the same way: :class:`SearchEngine` plays the
Determined master, and a :class:`~benchmarks.recording.RecordingExecutor` answers trials
from a benchmark landscape on the replay backend's simulated clock. A :class:`TimedMethod`
wrapper measures the time the search method itself spends on each event.
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

from benchmarks.families.api import BenchmarkLandscape, KnobTables
from benchmarks.recording import RecordingExecutor, TrialLog
from determined_dsat.build import build_method, build_space
from determined_dsat.cli import parse_settings
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.space.ds_config import OVERWRITE_KEY, merge_overwrites
from determined_dsat.space.experiment import load_experiment
from determined_dsat.space.knobs import ZERO_KNOBS
from determined_dsat.trials.records import TrialResult

METHODS = ("binary", "random", "asha")
ALL_STAGES = (1, 2, 3)
METRIC = "throughput"
DS_CONFIG_NAME = "ds_config.json"
CONFIG_NAME = "config.yaml"
REPLAY_PLACEHOLDER = "replay_placeholder.json"

# The user's ds_config of every benchmark search: bf16 Adam, nothing else decided.
BASE_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
    "bf16": {"enabled": True},
}

OUR_TABLE: KnobTables = ZERO_KNOBS
"""Our knob table (``determined_dsat.space.knobs.ZERO_KNOBS``)."""


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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


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

    @property
    def replay_source(self) -> pathlib.Path:
        """A file for ``--replay-source`` (the CLI wants one that exists; the benchmark's
        executor answers trials itself)."""
        return self.path / REPLAY_PLACEHOLDER


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
    placeholder = {"profile": {}, "trials": [], "note": "unused: the benchmark answers trials"}
    model.replay_source.write_text(json.dumps(placeholder))
    return model


def ds_config_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The full ds_config a trial runs with: the base config with the trial's overwrites."""
    return merge_overwrites(BASE_DS_CONFIG, hparams.get(OVERWRITE_KEY) or {})


# ----- our methods -----


def our_argv(
    name: str,
    model: ModelDir,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    run_dir: pathlib.Path,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``dsat`` command line of one benchmark search (every other flag at its default)."""
    return [
        name,
        str(model.config_path),
        str(model.path),
        "--backend",
        "replay",
        "--replay-source",
        str(model.replay_source),
        "--max-trials",
        str(max_trials),
        "--max-concurrent-trials",
        str(max_concurrent_trials),
        "-r",
        str(seed),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


def build_ours(
    name: str,
    model: ModelDir,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    extra: Sequence[str] = (),
) -> DSATSearchMethod:
    """One of our search methods, set up as ``dsat`` sets it up: ``parse_settings`` of its
    command line (``extra``: more flags), then ``build_space`` and ``build_method``."""
    # A fresh name: the CLI refuses a run directory that already holds a search.
    run_dir = model.path / "runs" / f"{name}-{uuid.uuid4().hex[:12]}"
    argv = our_argv(
        name,
        model,
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        seed=seed,
        run_dir=run_dir,
        extra=extra,
    )
    settings = parse_settings(argv)
    experiment = load_experiment(settings.config_path, settings.model_dir)
    space = build_space(settings, experiment)
    return build_method(settings, space, experiment.slots_per_trial)


def our_executor(
    method: DSATSearchMethod, landscape: BenchmarkLandscape, run_seed: int
) -> RecordingExecutor:
    """The executor of one of our searches: trials' ds_configs as the replay runner builds
    them (``ConfigSpace.ds_config_from_hparams``), kinds from the search's tracker."""
    tracker = method.tracker

    def kind_of(request_id: str) -> str | None:
        return str(tracker[request_id].spec.kind.value) if request_id in tracker else None

    space = method.driver.space
    return RecordingExecutor(landscape, space.ds_config_from_hparams, run_seed, kind_of)


# ----- driving a search -----

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
