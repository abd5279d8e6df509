"""Replay: trial results come from a recorded table or a Python function, not DeepSpeed.

A table is ``{"profile": {...}, "trials": [{"config": {...}, "metrics": {...}} or
{"config": {...}, "error": "oom"}]}``. A proposed ds_config matches the first row
whose keys all agree with it (keys a row leaves out do not matter). A function,
given as ``path/to/file.py:function``, receives the full ds_config and returns a
metrics dict, or raises ``MemoryError`` for an OOM.

Trials run on a simulated clock: each takes ``duration_s`` (from the row or the
returned metrics, 1 s by default) so concurrent trials finish in a realistic,
deterministic order.
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from determined_dsat.errors import ConfigError
from determined_dsat.runners.executor import Completion, TrialExecutor
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.trials.records import Outcome, TrialResult

logger = logging.getLogger("determined_dsat")

DEFAULT_DURATION_S = 1.0
DURATION_KEY = "duration_s"
_ERRORS = {"oom": Outcome.OOM, "error": Outcome.ERROR, "timeout": Outcome.TIMEOUT}

ReplayFn = Callable[[dict[str, Any]], Mapping[str, Any]]


def config_matches(row: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether every key of ``row`` agrees with ``config`` (nested mappings recursively)."""
    for key, want in row.items():
        if key not in config:
            return False
        have = config[key]
        if isinstance(want, Mapping):
            if not isinstance(have, Mapping) or not config_matches(want, have):
                return False
        elif not _same(want, have):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


class ReplaySource:
    """Evaluates a full ds_config to a trial result."""

    def evaluate(self, ds_config: dict[str, Any]) -> TrialResult:
        raise NotImplementedError


class ReplayTable(ReplaySource):
    """A recorded performance table."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a replay table must be a JSON object")
        profile = data.get("profile")
        if not isinstance(profile, Mapping):
            raise ConfigError(f"{where}: 'profile' must be an object with the model's profile")
        trials = data.get("trials")
        if not isinstance(trials, list):
            raise ConfigError(f"{where}: 'trials' must be a list of rows")
        self.profile = dict(profile)
        self.rows = [_check_row(row, f"{where}: trials[{i}]") for i, row in enumerate(trials)]
        self._by_key: dict[tuple[Any, Any], list[int]] = {}
        self._unkeyed: list[int] = []
        for i, row in enumerate(self.rows):
            key = _row_key(row["config"])
            if key is None:
                self._unkeyed.append(i)
            else:
                self._by_key.setdefault(key, []).append(i)

    def find(self, config: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The first row matching ``config``, in table order."""
        key = _row_key(config)
        candidates = (
            sorted(self._by_key.get(key, []) + self._unkeyed) if key else range(len(self.rows))
        )
        for i in candidates:
            if config_matches(self.rows[i]["config"], config):
                return self.rows[i]
        return None

    def evaluate(self, ds_config: dict[str, Any]) -> TrialResult:
        if is_profiling_config(ds_config):
            return TrialResult(Outcome.OK, dict(self.profile), DEFAULT_DURATION_S)
        row = self.find(ds_config)
        if row is None:
            detail = "no row of the replay table matches this config"
            logger.info("replay: %s (stage %s, mbs %s)", detail, _stage(ds_config), _mbs(ds_config))
            return TrialResult(Outcome.ERROR, {}, DEFAULT_DURATION_S, detail)
        duration = float(row.get(DURATION_KEY, DEFAULT_DURATION_S))
        if "error" in row:
            return TrialResult(_ERRORS[row["error"]], {}, duration, f"replayed {row['error']}")
        return TrialResult(Outcome.OK, dict(row["metrics"]), duration)


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, Mapping) or not isinstance(row.get("config"), Mapping):
        raise ConfigError(f"{where}: each row needs a 'config' object")
    has_metrics = isinstance(row.get("metrics"), Mapping)
    error = row.get("error")
    if has_metrics == (error is not None):
        raise ConfigError(f"{where}: each row needs exactly one of 'metrics' or 'error'")
    if error is not None and error not in _ERRORS:
        raise ConfigError(f"{where}: 'error' must be one of {sorted(_ERRORS)}, not {error!r}")
    return dict(row)


def _row_key(config: Mapping[str, Any]) -> tuple[Any, Any] | None:
    stage, mbs = _stage(config), _mbs(config)
    return None if stage is None or mbs is None else (stage, mbs)


def _stage(config: Mapping[str, Any]) -> Any:
    zero = config.get("zero_optimization")
    return zero.get("stage") if isinstance(zero, Mapping) else None


def _mbs(config: Mapping[str, Any]) -> Any:
    return config.get("train_micro_batch_size_per_gpu")


class ReplayFunction(ReplaySource):
    """A Python function standing in for DeepSpeed.

    ``MemoryError`` is an out-of-memory trial. Any other exception is a bug in the function,
    not a result: it stops the search with a ``ConfigError`` naming the function and the
    config, unless ``errors_as_trials`` records it as a failed trial.
    """

    def __init__(self, fn: ReplayFn, where: str, errors_as_trials: bool = False) -> None:
        self.fn = fn
        self.where = where
        self.errors_as_trials = errors_as_trials

    def evaluate(self, ds_config: dict[str, Any]) -> TrialResult:
        try:
            metrics = dict(self.fn(ds_config))
        except MemoryError as exc:
            return TrialResult(Outcome.OOM, {}, DEFAULT_DURATION_S, f"MemoryError: {exc}")
        except Exception as exc:  # noqa: BLE001 - the user's function, reported in one line
            what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            if self.errors_as_trials:
                return TrialResult(Outcome.ERROR, {}, DEFAULT_DURATION_S, what)
            raise ConfigError(
                f"{self.where} raised {what} for the config at ZeRO stage "
                f"{_stage(ds_config)}, micro-batch {_mbs(ds_config)} (fix the function, or "
                "pass --replay-errors-as-trials to record such errors as failed trials)"
            ) from None
        duration = float(metrics.pop(DURATION_KEY, DEFAULT_DURATION_S))
        return TrialResult(Outcome.OK, metrics, duration)


def load_replay_source(
    spec: str, base_dir: pathlib.Path | None = None, errors_as_trials: bool = False
) -> ReplaySource:
    """Load ``table.json`` or ``file.py:function``; raises ``ConfigError`` saying what is
    wrong. ``errors_as_trials``: see :class:`ReplayFunction`."""
    path_part, sep, fn_name = spec.rpartition(":")
    if sep and path_part.endswith(".py"):
        fn = _load_function(_resolve(path_part, base_dir), fn_name)
        return ReplayFunction(fn, spec, errors_as_trials)
    path = _resolve(spec, base_dir)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{spec}: cannot read replay table: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{spec}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return ReplayTable(data, spec)


def _resolve(path: str, base_dir: pathlib.Path | None) -> pathlib.Path:
    p = pathlib.Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    return p


def _load_function(path: pathlib.Path, name: str) -> ReplayFn:
    if not path.is_file():
        raise ConfigError(f"{path}: replay function file not found")
    module_spec = importlib.util.spec_from_file_location(f"dsat_replay_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - report the user's import error in one line
        raise ConfigError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{path}: has no function named {name!r}")
    return fn  # type: ignore[no-any-return]


class ReplayExecutor(TrialExecutor):
    """Runs trials on a simulated clock against a :class:`ReplaySource`."""

    def __init__(
        self, source: ReplaySource, ds_config_of: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> None:
        self.source = source
        self.ds_config_of = ds_config_of
        self.clock = 0.0
        self._launches = 0
        self._heap: list[tuple[float, int, str, int, TrialResult]] = []

    def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None:
        result = self.source.evaluate(self.ds_config_of(hparams))
        duration = DEFAULT_DURATION_S if result.duration_s is None else result.duration_s
        self._launches += 1
        heapq.heappush(
            self._heap, (self.clock + duration, self._launches, request_id, length, result)
        )

    def next_completion(self) -> Completion:
        finish, _, request_id, length, result = heapq.heappop(self._heap)
        self.clock = max(self.clock, finish)
        return Completion(request_id=request_id, result=result, length=length)

    def take(self, request_id: str) -> None:
        """Drop a trial already known to have finished, advancing the clock to its end.

        Used on resume for a trial that was logged but not yet in the saved state, so
        trials launched after it get the same simulated times as in the first run.
        """
        for i, (finish, _, rid, _, _) in enumerate(self._heap):
            if rid == request_id:
                self.clock = max(self.clock, finish)
                self._heap.pop(i)
                heapq.heapify(self._heap)
                return

    @property
    def num_running(self) -> int:
        return len(self._heap)

    def elapsed_s(self) -> float:
        """The simulated clock: seconds of trial time, concurrency included."""
        return self.clock

    def cancel_all(self) -> None:
        self._heap.clear()

    def state_dict(self) -> dict[str, Any]:
        """The simulated clock and the trials in flight, so a resumed replay is exact."""
        return {
            "clock": self.clock,
            "launches": self._launches,
            "in_flight": [
                {"finish": f, "seq": n, "request_id": r, "length": ln, "result": res.to_json()}
                for f, n, r, ln, res in sorted(self._heap)
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clock = float(state["clock"])
        self._launches = int(state["launches"])
        self._heap = [
            (
                float(e["finish"]),
                int(e["seq"]),
                str(e["request_id"]),
                int(e["length"]),
                TrialResult.from_json(e["result"]),
            )
            for e in state["in_flight"]
        ]
        heapq.heapify(self._heap)
