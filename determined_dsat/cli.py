"""The ``dsat`` command line: parse and validate flags into ``SearchSettings``, then search.

Nothing past this module sees argv. Every user error ends as one line on stderr,
``dsat: error: ...``, and exit code 2, before anything is launched.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from determined_dsat import settings as S
from determined_dsat.build import build_space
from determined_dsat.cli_parser import PROG, RUNS_DIR, _check_minimums, build_parser
from determined_dsat.errors import ConfigError, DsatError
from determined_dsat.methods import registry
from determined_dsat.settings import Backend, OffloadTarget, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid, configured_gas
from determined_dsat.space.experiment import Experiment, load_experiment
from determined_dsat.space.metric import Metric
from determined_dsat.space.user_batch import resolve_user_batch
from determined_dsat.store import layout

__all__ = ["build_parser", "main", "parse_settings"]

# --- validation -------------------------------------------------------------------------


def _abs(path: str) -> pathlib.Path:
    return pathlib.Path(os.path.abspath(os.path.expanduser(path)))


def _existing_file(flag: str, path: str) -> pathlib.Path:
    p = _abs(path)
    if not p.exists():
        raise ConfigError(f"{flag}: file not found: {path}")
    if not p.is_file():
        raise ConfigError(f"{flag}: not a file: {path}")
    return p


def _backend(a: argparse.Namespace) -> tuple[Backend, str]:
    if a.backend is not None:
        return Backend(a.backend), "--backend"
    if os.environ.get("DET_MASTER"):
        return Backend.DETERMINED, "DET_MASTER set"
    return Backend.LOCAL, "no DET_MASTER set"


def _replay_source(a: argparse.Namespace, backend: Backend) -> str | None:
    src: str | None = a.replay_source
    if backend is not Backend.REPLAY:
        if src is not None:
            raise ConfigError("--replay-source is only used with --backend replay")
        return None
    if src is None:
        raise ConfigError(
            "--backend replay needs --replay-source (a JSON file or file.py:function)"
        )
    head, sep, func = src.rpartition(":")
    if sep and head.endswith(".py"):
        if not func.isidentifier():
            raise ConfigError(f"--replay-source: {func!r} is not a valid Python function name")
        return f"{_existing_file('--replay-source', head)}:{func}"
    if src.endswith(".py"):
        raise ConfigError(f"--replay-source: name the function too, as {src}:function")
    return str(_existing_file("--replay-source", src))


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _default_run_dir(method: str) -> pathlib.Path:
    base = _abs(os.path.join(RUNS_DIR, f"{_utc_stamp()}-{method}"))
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def _run_dir(a: argparse.Namespace) -> tuple[pathlib.Path, bool]:
    if a.resume is not None:
        if a.run_dir is not None:
            raise ConfigError("--resume and --run-dir cannot be used together")
        run_dir = _abs(a.resume)
        if not (run_dir / layout.STATE_FILE).is_file():
            raise ConfigError(
                f"--resume: {a.resume} holds no {layout.STATE_FILE}; nothing to resume"
            )
        return run_dir, True
    if a.run_dir is None:
        return _default_run_dir(a.method), False
    run_dir = _abs(a.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir: {a.run_dir} exists and is not a directory")
    if (run_dir / layout.STATE_FILE).exists():
        raise ConfigError(
            f"--run-dir: {a.run_dir} already holds a search; "
            f"use --resume {a.run_dir} to continue it"
        )
    return run_dir, False


def _zero_stages(stages: list[int]) -> tuple[int, ...]:
    for stage in stages:
        if not 0 <= stage <= 3:
            raise ConfigError(f"--zero-stages: ZeRO stage {stage} does not exist; use 0, 1, 2 or 3")
    return tuple(sorted(set(stages)))


def _offload(targets: list[str], stages: tuple[int, ...]) -> frozenset[OffloadTarget]:
    offload = frozenset(OffloadTarget(t) for t in targets)
    if OffloadTarget.PARAM in offload and 3 not in stages:
        raise ConfigError("--offload param needs ZeRO stage 3 in --zero-stages")
    if offload and max(stages) < 1:
        raise ConfigError("--offload needs a ZeRO stage of 1 or more in --zero-stages")
    return offload


def _profile_steps(a: argparse.Namespace) -> dict[str, Any]:
    """The profiling window's settings: upstream's fixed steps, or (``--auto-profile-window``)
    chosen per trial."""
    auto = bool(getattr(a, "auto_profile_window", False))
    given = a.start_profile_step is not None or a.end_profile_step is not None
    if auto and given:
        raise ConfigError(
            "--auto-profile-window chooses each trial's profile steps; it cannot be combined "
            "with --start-profile-step or --end-profile-step"
        )
    start = S.DEFAULT_START_PROFILE_STEP if a.start_profile_step is None else a.start_profile_step
    end = S.DEFAULT_END_PROFILE_STEP if a.end_profile_step is None else a.end_profile_step
    if end <= start:
        raise ConfigError(
            f"--end-profile-step ({end}) must be greater than --start-profile-step ({start})"
        )
    return {"start_profile_step": start, "end_profile_step": end, "auto_profile_window": auto}


_AS_GIVEN = (
    "max_trials", "max_concurrent_trials", "max_slots", "run_full_experiment", "random_seed",
    "max_search_runner_restarts", "train_batch_size",
    "divisible_by", "trial_memory_limit", "replay_errors_as_trials",
    "full_experiment_memory_limit", "max_mbs",
)  # fmt: skip
"""``SearchSettings`` fields taken from the flags of the same name as they are."""


def _settings(argv: Sequence[str]) -> tuple[SearchSettings, str]:
    """Parse and validate argv; also say why the backend was chosen."""
    a, unknown = build_parser().parse_known_args(list(argv))
    if unknown:
        raise ConfigError(
            f"unrecognized arguments: {' '.join(unknown)} (see '{PROG} {a.method} --help')"
        )
    return settings_from_args(a)


def settings_from_args(a: argparse.Namespace) -> tuple[SearchSettings, str]:
    """Validate a namespace of :func:`build_parser` (as upstream scripts hold one); also say
    why the backend was chosen. Raises ``ConfigError``."""
    try:
        metric = Metric.parse(a.metric)
    except ValueError as e:
        raise ConfigError(f"--metric: {e}") from None
    stages = _zero_stages(a.zero_stages)
    _check_minimums(a)
    profile_steps = _profile_steps(a)
    if not (math.isfinite(a.trial_timeout) and a.trial_timeout > 0):
        raise ConfigError(
            f"--trial-timeout must be a positive number of seconds, got {a.trial_timeout}"
        )
    options = registry.get(a.method).read_options(a)
    config_path = _abs(a.config_path)
    if not config_path.is_file():
        what = "is not a file" if config_path.exists() else "not found"
        raise ConfigError(f"experiment config {what}: {a.config_path}")
    include = tuple(_abs(p) for p in a.include)
    for given, path in zip(a.include, include):
        if not path.exists():
            raise ConfigError(f"--include: not found: {given}")
    src = a.search_runner_config
    backend, why = _backend(a)
    if backend is Backend.DETERMINED and a.resume is not None and a.backend is not None:
        raise ConfigError(
            "--resume continues a local or replay search; on a cluster the search runner "
            "resumes by itself when it restarts (--max-search-runner-restarts)"
        )
    run_dir, resume = _run_dir(a)
    settings = SearchSettings(
        method=a.method,
        config_path=config_path,
        model_dir=_abs(a.model_dir),
        backend=backend,
        run_dir=run_dir,
        method_options=options,
        include=include,
        metric=metric,
        zero_stages=stages,
        search_runner_config=None if src is None else _existing_file("--search-runner-config", src),
        replay_source=_replay_source(a, backend),
        offload=_offload(a.offload, stages),
        resume=resume,
        trial_timeout_s=a.trial_timeout,
        full_experiment_timeout_s=_seconds("--full-experiment-timeout", a.full_experiment_timeout),
        time_budget_s=_seconds("--time-budget", a.time_budget),
        mbs_tolerance=_tolerance(a.mbs_tolerance),
        baseline=not a.no_baseline,
        confirm_top=a.confirm_top,
        **profile_steps,
        **{name: getattr(a, name) for name in _AS_GIVEN},
    )
    return settings, why


def _seconds(flag: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
    return value


def _tolerance(value: float) -> float:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"--mbs-tolerance must be a fraction in [0, 1), got {value}")
    return value


def parse_settings(argv: Sequence[str]) -> SearchSettings:
    """Parse and validate argv (without the program name); raises ``ConfigError``."""
    return _settings(argv)[0]


def _check_against_experiment(settings: SearchSettings, experiment: Experiment) -> None:
    MicroBatchGrid(
        slots=experiment.slots_per_trial,
        default_gas=configured_gas(experiment.ds_config),
        train_batch_size=settings.train_batch_size,
        divisible_by=settings.divisible_by,
        mbs_cap=settings.max_mbs,
    )
    if settings.max_slots is not None and settings.max_slots < experiment.slots_per_trial:
        raise ConfigError(
            f"--max-slots {settings.max_slots} is less than resources.slots_per_trial "
            f"{experiment.slots_per_trial} in {experiment.config_path.name}: no trial could run"
        )
    space = build_space(settings, experiment)
    resolve_user_batch(
        space.user_ds_config, experiment.slots_per_trial, experiment.ds_config_path.name
    )


def _saved_settings(requested: SearchSettings) -> SearchSettings:
    """On ``--resume``, the settings the search started with (flags given now are ignored,
    so a resumed search makes the same decisions)."""
    path = requested.run_dir / layout.SETTINGS_FILE
    try:
        saved = json.loads(path.read_text())
        settings = SearchSettings.from_json(saved)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; cannot resume this run directory") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable saved settings ({e})") from None
    if settings.method != requested.method:
        raise ConfigError(
            f"--resume {requested.run_dir}: that search used method {settings.method!r}, "
            f"not {requested.method!r}"
        )
    return attrs.evolve(settings, resume=True, run_dir=requested.run_dir)


def _shown(path: pathlib.Path) -> str:
    try:
        return os.path.join(".", path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def _fail(message: object) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


# --- the report subcommand -----------------------------------------------------------------

REPORT_HELP = (
    "Reports: 'dsat report RUN_DIR' writes a summary, a trials CSV, plots and a "
    "self-contained HTML page of a run directory to RUN_DIR/report/ (also while it runs)."
)


def _report_or_help(args: list[str]) -> int | None:
    """Handle ``dsat report ...`` and ``dsat --help``; None for everything else."""
    if args and args[0] == "report":
        from determined_dsat.report.report import main as report_main

        return report_main(args[1:])
    if args and args[0] in ("-h", "--help"):
        parser = build_parser()
        parser.epilog = REPORT_HELP
        parser.print_help()
        return 0
    return None


def _where(settings: SearchSettings) -> str:
    if settings.backend is Backend.DETERMINED:
        master = os.environ.get("DET_MASTER") or "the default master (localhost:8080)"
        return f"submitting the search runner to {master}"
    verb = "resuming" if settings.resume else "run directory"
    return f"{verb} {_shown(settings.run_dir)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dsat``; returns the exit code (0 ok, 1 search failed, 2 bad input, 130 Ctrl-C)."""
    args = sys.argv[1:] if argv is None else list(argv)
    handled = _report_or_help(args)
    if handled is not None:
        return handled
    try:
        try:
            settings, why = _settings(args)
            if settings.resume:
                settings = _saved_settings(settings)
            experiment = load_experiment(settings.config_path, settings.model_dir)
            _check_against_experiment(settings, experiment)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 0
        print(
            f"{PROG}: backend {settings.backend.value} ({why}); {_where(settings)}", file=sys.stderr
        )
        from determined_dsat.runners.launch import run_search  # type: ignore[import-not-found]

        code: int = run_search(settings, experiment)
        return code
    except ConfigError as e:
        _fail(e)
        return 2
    except DsatError as e:
        _fail(e)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
