"""The three experiment configs of a search on a Determined cluster (pure functions).

- the **search runner**: a ``single`` experiment, zero slots, whose entrypoint is our
  on-cluster runner (:mod:`determined_dsat.runners.cluster.search_runner`);
- the **trials**: a ``custom`` experiment made from the user's config, which the
  runner drives through the custom-searcher API;
- the **full experiment**: the user's config with the best hyperparameters merged in.

Each keeps the user's workspace, project, environment, resources pool and the rest of
their config; only what the search needs is replaced. Nothing here touches the network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from determined_dsat.errors import ConfigError
from determined_dsat.runners.entrypoint import parse_entrypoint
from determined_dsat.settings import SearchSettings
from determined_dsat.space import ds_config as dsc

RUNNER_MODULE = "determined_dsat.runners.cluster.search_runner"
TRIAL_DRIVER_MODULE = "determined_dsat.integration.trial_driver"
LAUNCHER = "python3 -m determined.launch.deepspeed"
# The runner never trains; its length is a formality of the single searcher.
_RUNNER_LENGTH = {"batches": 1}
# Keys of the user's config that make no sense for the runner (it has no GPUs, no
# training loop of its own).
_NOT_FOR_RUNNER = (
    "searcher",
    "hyperparameters",
    "entrypoint",
    "min_validation_period",
    "min_checkpoint_period",
    "records_per_epoch",
    "scheduling_unit",
    "profiling",
    "perform_initial_validation",
    "optimizations",
)


_SINGLE_SEARCHER_KEYS = ("metric", "smaller_is_better", "max_length", "source_trial_id",
                         "source_checkpoint_uuid")  # fmt: skip


def _name(config: Mapping[str, Any]) -> str:
    name = config.get("name")
    return str(name) if isinstance(name, str) and name else "experiment"


def search_runner_config(
    settings: SearchSettings, user_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``single`` experiment that runs the search on the cluster.

    It shares the user's workspace, project, environment and resource pool, asks for no
    slots, and may be restarted ``--max-search-runner-restarts`` times (it resumes from
    its last checkpoint).
    """
    config = {k: copy.deepcopy(v) for k, v in user_config.items() if k not in _NOT_FOR_RUNNER}
    resources = dict(config.get("resources") or {})
    resources["slots_per_trial"] = 0
    config["resources"] = resources
    config["name"] = f"(DSAT) {_name(user_config)}"
    config["description"] = (
        f"DeepSpeed Autotune ({settings.method}, metric {settings.metric.value}): "
        f"the search runner; its trials are a separate custom experiment"
    )
    # The runner reports the best value so far under the tuned metric's own name.
    config["searcher"] = {
        "name": "single",
        "metric": settings.metric.value,
        "smaller_is_better": settings.metric.smaller_is_better,
        "max_length": dict(_RUNNER_LENGTH),
    }
    config["entrypoint"] = f"python3 -m {RUNNER_MODULE}"
    config["max_restarts"] = settings.max_search_runner_restarts
    # Shown in the Web UI's hyperparameters tab; the runner reads its settings from a file.
    config["hyperparameters"] = {
        "dsat_method": settings.method,
        "dsat_metric": settings.metric.value,
        "dsat_max_trials": settings.max_trials,
        "dsat_max_concurrent_trials": settings.max_concurrent_trials,
        "dsat_zero_stages": ",".join(str(s) for s in settings.zero_stages),
    }
    return config


def trial_entrypoint(entrypoint: str | Sequence[str], where: str) -> str | list[str]:
    """The trials' entrypoint: a Core API command as the user wrote it; a ``DeepSpeedTrial``
    class through our dsat-mode driver (so nothing needs ``determined.pytorch.dsat``)."""
    as_given = entrypoint if isinstance(entrypoint, str) else list(entrypoint)
    if not as_given:
        raise ConfigError(f"{where} is empty")
    try:
        command = parse_entrypoint(entrypoint, where)
    except ConfigError:
        return as_given  # not Python (e.g. a shell script): runs on a cluster as it is
    if command.trial_class is None:
        return as_given
    return f"{LAUNCHER} python3 -m {TRIAL_DRIVER_MODULE} {command.trial_class}"


def custom_experiment_config(
    settings: SearchSettings,
    user_config: Mapping[str, Any],
    autotuning: Mapping[str, Any],
    runner_experiment_id: int,
    where: str = "experiment config",
) -> dict[str, Any]:
    """The ``custom`` experiment whose trials the search creates.

    ``autotuning`` is the ds_config ``autotuning`` section every trial gets (its
    overwrites come with each trial's own hyperparameters as well). A failed trial is
    evidence for the search, not something to retry: ``max_restarts`` is 0 unless the
    user's config sets it.
    """
    config = copy.deepcopy(dict(user_config))
    description = f"DeepSpeed Autotune trials of search-runner experiment {runner_experiment_id}"
    if user_config.get("description"):
        description += f" - {user_config['description']}"
    config["description"] = description
    config["name"] = f"(DSAT trials) {_name(user_config)}"
    config["searcher"] = {
        "name": "custom",
        "metric": settings.metric.value,
        "smaller_is_better": settings.metric.smaller_is_better,
    }
    hparams = dict(config.get("hyperparameters") or {})
    overwrites = dict(hparams.get(dsc.OVERWRITE_KEY) or {})
    overwrites[dsc.AUTOTUNING_KEY] = copy.deepcopy(dict(autotuning))
    hparams[dsc.OVERWRITE_KEY] = overwrites
    hparams[dsc.USE_DSAT_MODE_KEY] = True
    config["hyperparameters"] = hparams
    config["entrypoint"] = trial_entrypoint(config.get("entrypoint") or "", f"{where}: entrypoint")
    config.setdefault("max_restarts", 0)
    return config


def full_experiment_config(
    user_config: Mapping[str, Any], best_hparams: Mapping[str, Any], runner_experiment_id: int
) -> dict[str, Any]:
    """The ``single`` experiment that trains with the best config found: the user's config
    with the best trial's hyperparameters, without the autotuning and dsat-mode keys."""
    searcher = user_config.get("searcher")
    if not isinstance(searcher, Mapping) or not searcher.get("max_length"):
        raise ConfigError(
            "--run-full-experiment needs searcher.max_length in the experiment config "
            "(how long to train with the best config)"
        )
    config = copy.deepcopy(dict(user_config))
    # One config to train, whatever searcher the user's config had.
    config["searcher"] = {
        "name": "single",
        **{k: copy.deepcopy(v) for k, v in searcher.items() if k in _SINGLE_SEARCHER_KEYS},
    }
    config["hyperparameters"] = dsc.full_experiment_hparams(best_hparams)
    config["name"] = f"(DSAT best) {_name(user_config)}"
    config["description"] = (
        f"trained with the best DeepSpeed config of search-runner experiment {runner_experiment_id}"
    )
    return config
