"""Validated, frozen settings of one search. Built by ``cli.py``; nothing inward sees argv."""

from __future__ import annotations

import enum
import pathlib
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
class RandomOptions:
    """``random``: trials per random config and early stopping (trials without a new best)."""

    trials_per_random_config: int = 5
    early_stopping: int | None = None


@attrs.frozen
class BinaryOptions:
    """``binary``: ``search_range_factor`` scales the memory model's micro-batch ceiling."""

    search_range_factor: float = 1.0


@attrs.frozen
class AshaOptions:
    """``asha`` (arXiv:1810.05934): ``divisor`` is eta, ``asha_early_stopping`` is s."""

    max_rungs: int = 5
    min_binary_search_trials: int = 3
    asha_early_stopping: int = 0
    divisor: int = 2
    search_range_factor: float = 1.0


@attrs.frozen
class ModelOptions:
    """``model``: stop once no trial is expected to improve the best result by at least
    ``min_improvement`` (a fraction of it: 0.005 is 0.5 %, below the run-to-run noise of
    a throughput measurement) per unit of trial cost; 0 never stops early."""

    min_improvement: float = 0.005


MethodOptions = RandomOptions | BinaryOptions | AshaOptions | ModelOptions


@attrs.frozen
class SearchSettings:
    """Everything a search needs from the command line, validated.

    Paths are absolute. ``method_options`` holds the options of ``method`` only.
    ``max_trials`` counts the profiling trial, as upstream.
    """

    method: str
    config_path: pathlib.Path
    model_dir: pathlib.Path
    backend: Backend
    run_dir: pathlib.Path
    method_options: MethodOptions
    include: tuple[pathlib.Path, ...] = ()
    max_trials: int = DEFAULT_MAX_TRIALS
    max_concurrent_trials: int = DEFAULT_MAX_CONCURRENT_TRIALS
    max_slots: int | None = None
    metric: Metric = Metric.THROUGHPUT
    run_full_experiment: bool = False
    zero_stages: tuple[int, ...] = DEFAULT_ZERO_STAGES
    start_profile_step: int = DEFAULT_START_PROFILE_STEP
    end_profile_step: int = DEFAULT_END_PROFILE_STEP
    random_seed: int = DEFAULT_RANDOM_SEED
    search_runner_config: pathlib.Path | None = None
    max_search_runner_restarts: int = DEFAULT_MAX_SEARCH_RUNNER_RESTARTS
    replay_source: str | None = None
    train_batch_size: int | None = None
    divisible_by: int = 1
    offload: frozenset[OffloadTarget] = frozenset()
    resume: bool = False
    trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S
    trial_memory_limit: int | None = None
    mbs_tolerance: float = DEFAULT_MBS_TOLERANCE
    # Off for library use (benchmarks drive search methods alone); the CLI turns both on.
    baseline: bool = False
    confirm_top: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON form, used to ship settings to an on-cluster runner (never pickle)."""
        return {
            "method": self.method,
            "config_path": str(self.config_path),
            "model_dir": str(self.model_dir),
            "backend": self.backend.value,
            "run_dir": str(self.run_dir),
            "method_options": attrs.asdict(self.method_options),
            "include": [str(p) for p in self.include],
            "max_trials": self.max_trials,
            "max_concurrent_trials": self.max_concurrent_trials,
            "max_slots": self.max_slots,
            "metric": self.metric.value,
            "run_full_experiment": self.run_full_experiment,
            "zero_stages": list(self.zero_stages),
            "start_profile_step": self.start_profile_step,
            "end_profile_step": self.end_profile_step,
            "random_seed": self.random_seed,
            "search_runner_config": (
                None if self.search_runner_config is None else str(self.search_runner_config)
            ),
            "max_search_runner_restarts": self.max_search_runner_restarts,
            "replay_source": self.replay_source,
            "train_batch_size": self.train_batch_size,
            "divisible_by": self.divisible_by,
            "offload": sorted(t.value for t in self.offload),
            "resume": self.resume,
            "trial_timeout_s": self.trial_timeout_s,
            "trial_memory_limit": self.trial_memory_limit,
            "mbs_tolerance": self.mbs_tolerance,
            "baseline": self.baseline,
            "confirm_top": self.confirm_top,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SearchSettings:
        options_cls = METHOD_OPTIONS[d["method"]]
        src = d.get("search_runner_config")
        return cls(
            method=d["method"],
            config_path=pathlib.Path(d["config_path"]),
            model_dir=pathlib.Path(d["model_dir"]),
            backend=Backend(d["backend"]),
            run_dir=pathlib.Path(d["run_dir"]),
            method_options=options_cls(**d.get("method_options", {})),
            include=tuple(pathlib.Path(p) for p in d.get("include", [])),
            max_trials=int(d["max_trials"]),
            max_concurrent_trials=int(d["max_concurrent_trials"]),
            max_slots=d.get("max_slots"),
            metric=Metric.parse(d["metric"]),
            run_full_experiment=bool(d.get("run_full_experiment", False)),
            zero_stages=tuple(int(s) for s in d["zero_stages"]),
            start_profile_step=int(d["start_profile_step"]),
            end_profile_step=int(d["end_profile_step"]),
            random_seed=int(d["random_seed"]),
            search_runner_config=None if src is None else pathlib.Path(src),
            max_search_runner_restarts=int(d.get("max_search_runner_restarts", 5)),
            replay_source=d.get("replay_source"),
            train_batch_size=d.get("train_batch_size"),
            divisible_by=int(d.get("divisible_by", 1)),
            offload=frozenset(OffloadTarget(t) for t in d.get("offload", [])),
            resume=bool(d.get("resume", False)),
            trial_timeout_s=float(d.get("trial_timeout_s", DEFAULT_TRIAL_TIMEOUT_S)),
            trial_memory_limit=d.get("trial_memory_limit"),
            mbs_tolerance=float(d.get("mbs_tolerance", DEFAULT_MBS_TOLERANCE)),
            baseline=bool(d.get("baseline", False)),
            confirm_top=int(d.get("confirm_top", 0)),
        )


METHOD_OPTIONS: dict[
    str, type[RandomOptions] | type[BinaryOptions] | type[AshaOptions] | type[ModelOptions]
] = {
    "random": RandomOptions,
    "binary": BinaryOptions,
    "asha": AshaOptions,
    "model": ModelOptions,
}
