"""Validated, frozen settings of one search. Built by ``cli.py``; nothing inward sees argv."""

from __future__ import annotations

import enum
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.space.metric import Metric

DEFAULT_MAX_TRIALS = 64
DEFAULT_MAX_CONCURRENT_TRIALS = 16
DEFAULT_ZERO_STAGES = (1, 2, 3)
DEFAULT_START_PROFILE_STEP = 3
DEFAULT_END_PROFILE_STEP = 5
DEFAULT_RANDOM_SEED = 42
DEFAULT_MAX_SEARCH_RUNNER_RESTARTS = 5
# Long enough for a first trial that compiles DeepSpeed's ops and loads a large model.
DEFAULT_TRIAL_TIMEOUT_S = 1800.0
DEFAULT_MBS_TOLERANCE = 0.05
DEFAULT_CONFIRM_TOP = 3


class Backend(enum.Enum):
    """Where trials run: a Determined cluster, local processes, or a recorded table."""

    DETERMINED = "determined"
    LOCAL = "local"
    REPLAY = "replay"


class OffloadTarget(enum.Enum):
    """What ZeRO may move to CPU memory when the user opts in with ``--offload``."""

    OPTIMIZER = "optimizer"
    PARAM = "param"


@attrs.frozen
class SearchSettings:
    """Everything a search needs from the command line, validated.

    Paths are absolute. ``method_options`` holds the options of ``method`` only (the
    ``options`` class of its ``MethodSpec`` in ``methods/registry.py``).
    ``max_trials`` counts the profiling trial, as upstream.
    """

    method: str
    config_path: pathlib.Path
    model_dir: pathlib.Path
    backend: Backend
    run_dir: pathlib.Path
    method_options: Any  # an instance of the method's options class (its MethodSpec)
    include: tuple[pathlib.Path, ...] = ()
    max_trials: int = DEFAULT_MAX_TRIALS
    max_concurrent_trials: int = DEFAULT_MAX_CONCURRENT_TRIALS
    max_slots: int | None = None
    metric: Metric = Metric.THROUGHPUT
    run_full_experiment: bool = False
    zero_stages: tuple[int, ...] = DEFAULT_ZERO_STAGES
    start_profile_step: int = DEFAULT_START_PROFILE_STEP
    end_profile_step: int = DEFAULT_END_PROFILE_STEP
    auto_profile_window: bool = False
    """Choose each trial's profiling window (``space/window.py``; ``--auto-profile-window``)
    instead of ``start..end_profile_step``."""
    random_seed: int = DEFAULT_RANDOM_SEED
    search_runner_config: pathlib.Path | None = None
    max_search_runner_restarts: int = DEFAULT_MAX_SEARCH_RUNNER_RESTARTS
    replay_source: str | None = None
    replay_errors_as_trials: bool = False
    train_batch_size: int | None = None
    divisible_by: int = 1
    max_mbs: int | None = None
    time_budget_s: float | None = None
    offload: frozenset[OffloadTarget] = frozenset()
    resume: bool = False
    trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S
    trial_memory_limit: int | None = None
    full_experiment_timeout_s: float | None = None
    full_experiment_memory_limit: int | None = None
    mbs_tolerance: float = DEFAULT_MBS_TOLERANCE
    # Off for library use (benchmarks drive search methods alone); the CLI turns both on.
    baseline: bool = False
    confirm_top: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON form, used to save settings and ship them to an on-cluster runner (never
        pickle): every field, paths and enums as strings, collections as lists."""
        return {f.name: _encode(getattr(self, f.name)) for f in attrs.fields(SearchSettings)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SearchSettings:
        """Settings from :meth:`to_json`; fields it lacks take their defaults.

        Raises ``KeyError`` for a missing required field and ``ValueError`` for an unknown
        method or a value of the wrong kind."""
        from determined_dsat.methods import registry

        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name not in d:
                if field.default is attrs.NOTHING:
                    raise KeyError(field.name)
                continue
            raw = d[field.name]
            if field.name == "method_options":
                values[field.name] = registry.get(str(d["method"])).options_from_json(raw)
            else:
                values[field.name] = _decode(hints[field.name], raw)
        return cls(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset):
        return sorted(_encode(v) for v in value)
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if attrs.has(type(value)):
        return attrs.asdict(value)
    return value


def _decode(hint: Any, raw: Any) -> Any:
    """``raw`` (JSON) as the type ``hint`` of a settings field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, raw)
    if origin is tuple:
        return tuple(_decode(args[0], v) for v in raw)
    if origin is frozenset:
        return frozenset(_decode(args[0], v) for v in raw)
    if hint is bool:
        return bool(raw)
    if hint in (int, float, str) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return hint(raw)
    if hint is pathlib.Path:
        return pathlib.Path(raw)
    raise ValueError(f"no JSON decoding for settings of type {hint!r}")
