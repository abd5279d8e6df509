"""The ``dsat`` argument parser: every flag, its default and help, per search method."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from determined_dsat import settings as S
from determined_dsat.errors import ConfigError
from determined_dsat.settings import Backend, MethodOptions, OffloadTarget
from determined_dsat.space.metric import Metric

PROG = "dsat"
RUNS_DIR = "dsat-runs"
STATE_FILE = "state.json"
DESCRIPTION = (
    "DeepSpeed Autotune: search the ZeRO stage and micro-batch size (and the DeepSpeed "
    "settings that go with them) that make your DeepSpeed training fastest. Trials run on a "
    "Determined cluster, as local processes, or are replayed from recorded results."
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become one-line ``ConfigError``s."""

    def error(self, message: str) -> NoReturn:
        hint = f"see '{self.prog} --help'"
        raise ConfigError(f"{' '.join(message.split())} ({hint})")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ``None`` of flags that are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


# --- argument definitions ---------------------------------------------------------------


def _opt(p: argparse.ArgumentParser, names: str, help: str, **kwargs: Any) -> None:
    p.add_argument(*names.split(), help=help, **kwargs)


def _add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_path", help="experiment config file (.yaml)")
    p.add_argument("model_dir", help="directory holding the model definition")
    _opt(p, "-i --include", "more files or directories to copy", nargs="+", default=[])


def _add_budget(p: argparse.ArgumentParser) -> None:
    _opt(
        p, "-mt --max-trials", "maximum number of trials, counting the model-profiling trial",
        type=int, default=S.DEFAULT_MAX_TRIALS,
    )  # fmt: skip
    _opt(p, "-ms --max-slots", "maximum number of slots in use at once (default: no limit)",
         type=int)  # fmt: skip
    _opt(
        p, "-mct --max-concurrent-trials", "maximum number of trials running at once",
        type=int, default=S.DEFAULT_MAX_CONCURRENT_TRIALS,
    )  # fmt: skip
    metrics = [m.value for m in Metric]
    _opt(
        p, "-m --metric", f"metric to optimize: {', '.join(metrics)} (forward, backward and "
        "latency are minimized; throughput is the default because DeepSpeed's FLOPS_per_gpu "
        "is inflated at ZeRO-3)", choices=metrics, metavar="METRIC",
        default=Metric.THROUGHPUT.value,
    )  # fmt: skip
    _opt(p, "--run-full-experiment", "after the search, train fully with the best config",
         action="store_true")  # fmt: skip
    _opt(p, "-r --random-seed", "seed of every random choice", type=int,
         default=S.DEFAULT_RANDOM_SEED)  # fmt: skip


def _add_space(p: argparse.ArgumentParser) -> None:
    _opt(
        p, "-z --zero-stages", "ZeRO stages (0-3) to search over", type=int, nargs="+",
        default=list(S.DEFAULT_ZERO_STAGES), metavar="STAGE",
    )  # fmt: skip
    _opt(p, "--start-profile-step", "training step on which trials start profiling", type=int,
         default=S.DEFAULT_START_PROFILE_STEP)  # fmt: skip
    _opt(p, "--end-profile-step", "training step on which trials stop profiling", type=int,
         default=S.DEFAULT_END_PROFILE_STEP)  # fmt: skip
    _opt(
        p, "--train-batch-size", "keep the global batch at N, choosing gradient accumulation "
        "per micro-batch (default: the global batch follows the micro-batch)",
        type=int, metavar="N",
    )  # fmt: skip
    _opt(p, "--divisible-by", "only try micro-batch sizes that are multiples of N", type=int,
         default=1, metavar="N")  # fmt: skip
    _opt(p, "--no-baseline", "do not measure your own ds_config as a baseline trial",
         action="store_true")  # fmt: skip
    _opt(p, "--confirm-top", "re-measure the best K configurations at the end and pick the "
         "one with the best median (0: off; at most a quarter of the budget)", type=int,
         default=S.DEFAULT_CONFIRM_TOP, metavar="K")  # fmt: skip
    _opt(p, "--mbs-tolerance", "stop refining a configuration's micro-batch once it is within "
         "this fraction of the largest that fits (0: find the exact limit)", type=float,
         default=S.DEFAULT_MBS_TOLERANCE, metavar="FRACTION")  # fmt: skip
    _opt(
        p, "--offload", "let ZeRO offload optimizer state and/or parameters (ZeRO-3) to CPU "
        "memory; off unless given", nargs="+", choices=[t.value for t in OffloadTarget], default=[],
    )  # fmt: skip


def _add_runner(p: argparse.ArgumentParser) -> None:
    _opt(
        p, "--backend", "where trials run (default: determined when DET_MASTER is set, "
        "else local)", choices=[b.value for b in Backend],
    )  # fmt: skip
    _opt(p, "--run-dir", f"new directory for the search's state and results (default: "
         f"./{RUNS_DIR}/<UTC time>-<method>)", metavar="DIR")  # fmt: skip
    _opt(p, "--resume", f"continue the stopped search whose {STATE_FILE} is in RUN_DIR",
         metavar="RUN_DIR")  # fmt: skip
    _opt(p, "--replay-source", "with --backend replay: recorded results as a JSON file or "
         "as path/to/file.py:function", metavar="SRC")  # fmt: skip
    _opt(p, "--search-runner-config", "alternative search runner config (advanced)",
         metavar="PATH")  # fmt: skip
    _opt(p, "--max-search-runner-restarts", "how often the cluster may restart the search "
         "runner", type=int, default=S.DEFAULT_MAX_SEARCH_RUNNER_RESTARTS)  # fmt: skip
    _opt(p, "--trial-timeout", "local backend: stop a trial (every process of it) after this "
         "many seconds and record it as timed out", type=float,
         default=S.DEFAULT_TRIAL_TIMEOUT_S, metavar="SECONDS")  # fmt: skip
    _opt(p, "--trial-memory-limit", "local backend: cap each trial process's memory at this "
         "many MiB (to share a machine, or to test OOM handling)", type=int,
         metavar="MIB")  # fmt: skip


def _add_search_range_factor(p: argparse.ArgumentParser) -> None:
    _opt(p, "--search-range-factor", "scale the initial micro-batch search range by this factor",
         type=float, default=1.0)  # fmt: skip


def _add_random(p: argparse.ArgumentParser) -> None:
    _opt(p, "--trials-per-random-config", "maximum number of trials per random config",
         type=int, default=S.RandomOptions().trials_per_random_config)  # fmt: skip
    _opt(p, "--early-stopping", "stop when the last N trials found no new best (default: "
         "never)", type=int, metavar="N")  # fmt: skip


def _add_asha(p: argparse.ArgumentParser) -> None:
    d = S.AshaOptions()
    _opt(p, "--max-rungs", "maximum number of ASHA rungs", type=int, default=d.max_rungs)
    _opt(p, "--min-binary-search-trials", "minimum binary-search trials per random config",
         type=int, default=d.min_binary_search_trials)  # fmt: skip
    _opt(p, "--asha-early-stopping", "ASHA early-stopping rate (s in arXiv:1810.05934)",
         type=int, default=d.asha_early_stopping)  # fmt: skip
    _opt(p, "--divisor", "ASHA reduction factor (eta in arXiv:1810.05934)", type=int,
         default=d.divisor)  # fmt: skip
    _add_search_range_factor(p)


def _add_model(p: argparse.ArgumentParser) -> None:
    _opt(p, "--min-improvement", "stop once no trial is expected to improve the best result "
         "by at least this fraction of it, per trial (0: never stop early)", type=float,
         default=S.ModelOptions().min_improvement, metavar="FRACTION")  # fmt: skip


# --- per-method options -----------------------------------------------------------------


_MINIMUM = {
    "max_trials": 2, "max_concurrent_trials": 1, "max_slots": 1, "train_batch_size": 1,
    "divisible_by": 1, "max_search_runner_restarts": 0, "start_profile_step": 1,
    "trials_per_random_config": 1, "early_stopping": 1, "max_rungs": 1,
    "min_binary_search_trials": 1, "asha_early_stopping": 0, "divisor": 2,
    "trial_memory_limit": 1, "confirm_top": 0,
}  # fmt: skip
"""The least value of each integer flag (by dest) that has one; ``None`` means not given."""


def _check_minimums(a: argparse.Namespace) -> None:
    for dest, least in _MINIMUM.items():
        value = getattr(a, dest, None)
        if value is not None and value < least:
            why = " (it counts the model-profiling trial)" if dest == "max_trials" else ""
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} must be at least {least}{why}, got {value}")


def _range_factor(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--search-range-factor must be a positive number, got {value}")
    return value


def _random_options(a: argparse.Namespace) -> MethodOptions:
    return S.RandomOptions(a.trials_per_random_config, a.early_stopping)


def _binary_options(a: argparse.Namespace) -> MethodOptions:
    return S.BinaryOptions(_range_factor(a.search_range_factor))


def _asha_options(a: argparse.Namespace) -> MethodOptions:
    return S.AshaOptions(
        a.max_rungs, a.min_binary_search_trials, a.asha_early_stopping, a.divisor,
        _range_factor(a.search_range_factor),
    )  # fmt: skip


def _model_options(a: argparse.Namespace) -> MethodOptions:
    value = a.min_improvement
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ConfigError(
            f"--min-improvement must be a fraction in [0, 1) (0.01 is 1 %), got {value}"
        )
    return S.ModelOptions(min_improvement=value)


@attrs.frozen
class MethodCli:
    """How one search method appears on the command line."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    options: Callable[[argparse.Namespace], MethodOptions]


METHODS: dict[str, MethodCli] = {
    "asha": MethodCli("ASHA over random configs (arXiv:1810.05934)", _add_asha, _asha_options),
    "binary": MethodCli(
        "bisection on micro-batch size for random ZeRO configs",
        _add_search_range_factor,
        _binary_options,
    ),
    "random": MethodCli(
        "random ZeRO configs, each with a short micro-batch lineage", _add_random, _random_options
    ),
    "model": MethodCli(
        "model-based: memory and throughput surrogates, expected improvement per trial",
        _add_model,
        _model_options,
    ),
}
"""Search methods by subcommand name; add an entry (and to ``settings.METHOD_OPTIONS``)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``dsat`` parser: one subcommand per search method, each with every flag."""
    parser = _Parser(prog=PROG, description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, method in METHODS.items():
        sub = subparsers.add_parser(
            name,
            help=method.help,
            description=f"{DESCRIPTION} Method: {method.help}.",
            formatter_class=_HelpFormatter,
        )
        for add in (_add_paths, _add_budget, _add_space, _add_runner, method.add_arguments):
            add(sub)
    return parser
