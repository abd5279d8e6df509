"""The ``dsat`` argument parser: every shared flag, its default and help; each search
method adds its own (``methods/registry.py``)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from determined_dsat import settings as S
from determined_dsat.errors import ConfigError
from determined_dsat.methods import registry
from determined_dsat.methods.spec import add_option as _opt
from determined_dsat.settings import Backend, OffloadTarget
from determined_dsat.space.metric import Metric
from determined_dsat.store.layout import STATE_FILE

PROG = "dsat"
RUNS_DIR = "dsat-runs"

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
    _opt(p, "--time-budget", "end the search once every trial left would overrun this many "
         "seconds of wall time (each trial costed on its own); the best so far is still "
         "re-measured and written (default: no limit; a resumed search continues with what "
         "is left)", type=float,
         metavar="SECONDS")  # fmt: skip
    _opt(p, "--run-full-experiment", "after the search, train fully with the best config",
         action="store_true")  # fmt: skip
    _opt(p, "-r --random-seed", "seed of every random choice", type=int,
         default=S.DEFAULT_RANDOM_SEED)  # fmt: skip


def _add_space(p: argparse.ArgumentParser) -> None:
    _opt(
        p, "-z --zero-stages", "ZeRO stages (0-3) to search over", type=int, nargs="+",
        default=list(S.DEFAULT_ZERO_STAGES), metavar="STAGE",
    )  # fmt: skip
    _opt(p, "--start-profile-step", "training step on which trials start profiling "
         f"(default {S.DEFAULT_START_PROFILE_STEP})", type=int)  # fmt: skip
    _opt(p, "--end-profile-step", "training step on which trials stop profiling "
         f"(default {S.DEFAULT_END_PROFILE_STEP})", type=int)  # fmt: skip
    _opt(p, "--auto-profile-window", "choose each trial's profile steps from the step times "
         "seen: 1 warm-up step, then 2-5 measured, fewer when steps are long against the "
         "startup (cheaper trials, a little more noise; docs/methods.md)",
         action="store_true")  # fmt: skip
    _opt(
        p, "--train-batch-size", "keep the global batch at N, choosing gradient accumulation "
        "per micro-batch (default: the global batch follows the micro-batch)",
        type=int, metavar="N",
    )  # fmt: skip
    _opt(p, "--max-mbs", "never try a micro-batch above N, with any method (like DeepSpeed's "
         "max_train_micro_batch_size_per_gpu; default: no cap)", type=int,
         metavar="N")  # fmt: skip
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
    _opt(p, "--full-experiment-timeout", "local backend, with --run-full-experiment: stop the "
         "full training after this many seconds (default: no limit; --trial-timeout does not "
         "apply to it)", type=float, metavar="SECONDS")  # fmt: skip
    _opt(p, "--full-experiment-memory-limit", "local backend, with --run-full-experiment: cap "
         "each process of the full training at this many MiB (default: no cap; "
         "--trial-memory-limit does not apply to it)", type=int, metavar="MIB")  # fmt: skip
    _opt(p, "--replay-errors-as-trials", "with a replay function: record an exception it raises "
         "(other than MemoryError, an OOM) as a failed trial instead of stopping with an error",
         action="store_true")  # fmt: skip
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


# --- per-method options -----------------------------------------------------------------


_MINIMUM = {
    "max_trials": 2, "max_concurrent_trials": 1, "max_slots": 1, "train_batch_size": 1,
    "divisible_by": 1, "max_search_runner_restarts": 0, "start_profile_step": 1,
    "trial_memory_limit": 1, "confirm_top": 0, "full_experiment_memory_limit": 1,
    "max_mbs": 1,
}  # fmt: skip
"""The least value of each shared integer flag (by dest) that has one; ``None`` means not
given. Each method checks its own flags (``read_options`` of its ``MethodSpec``)."""


def _check_minimums(a: argparse.Namespace) -> None:
    for dest, least in _MINIMUM.items():
        value = getattr(a, dest, None)
        if value is not None and value < least:
            why = " (it counts the model-profiling trial)" if dest == "max_trials" else ""
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} must be at least {least}{why}, got {value}")


def build_parser() -> argparse.ArgumentParser:
    """The ``dsat`` parser: one subcommand per registered search method, each with every
    shared flag and the method's own."""
    parser = _Parser(prog=PROG, description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, method in registry.methods().items():
        sub = subparsers.add_parser(
            name,
            help=method.help,
            description=f"{DESCRIPTION} Method: {method.help}.",
            formatter_class=_HelpFormatter,
        )
        for add in (_add_paths, _add_budget, _add_space, _add_runner, method.add_arguments):
            add(sub)
        # Upstream's parser names the method ``search_method``; scripts read either name.
        sub.set_defaults(search_method=name)
    return parser
