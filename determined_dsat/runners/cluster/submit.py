"""Submit a search to a Determined cluster: the ``single`` search-runner experiment.

The upload holds the settings as JSON (never pickle), the model directory, the
experiment config, the ``--include`` paths and this package (so the runner and the
trials can import it on any image that has determined and deepspeed). Everything that
can be checked here is checked before anything is submitted.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Any

import attrs
import yaml

from determined_dsat.errors import ConfigError, SearchError
from determined_dsat.runners.cluster.configs import (
    custom_experiment_config,
    full_experiment_config,
    search_runner_config,
)
from determined_dsat.runners.cluster.search_runner import package_dir
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space import ds_config as dsc
from determined_dsat.space.experiment import Experiment
from determined_dsat.store.layout import RUNNER_SETTINGS_FILE


def relocated(settings: SearchSettings) -> SearchSettings:
    """The settings as the runner sees them: paths relative to its working directory,
    where each uploaded path sits under its own name."""
    return attrs.evolve(
        settings,
        backend=Backend.DETERMINED,
        config_path=pathlib.Path(settings.config_path.name),
        model_dir=pathlib.Path(settings.model_dir.name),
        include=tuple(pathlib.Path(p.name) for p in settings.include),
        search_runner_config=None,
        run_dir=pathlib.Path("."),
        resume=False,
    )


def uploads(settings: SearchSettings) -> list[pathlib.Path]:
    """What goes into the runner's context, each under its own name at the top level."""
    paths = [settings.model_dir, settings.config_path, *settings.include, package_dir()]
    seen: dict[str, pathlib.Path] = {RUNNER_SETTINGS_FILE: pathlib.Path(RUNNER_SETTINGS_FILE)}
    for path in paths:
        if path.name in seen:
            raise ConfigError(
                f"{path} and {seen[path.name]} would both be uploaded as {path.name!r}; "
                "rename one of them"
            )
        seen[path.name] = path
    return paths


def load_runner_config(path: pathlib.Path) -> dict[str, Any]:
    """``--search-runner-config``: the user's own search-runner experiment config."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--search-runner-config {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"--search-runner-config {path}: expected a mapping at the top level")
    return loaded


def check_before_submitting(settings: SearchSettings, experiment: Experiment) -> None:
    """Build the configs the runner will build, so their errors show up here (exit 2)."""
    where = experiment.config_path.name
    autotuning = dsc.autotuning_section(settings.start_profile_step, settings.end_profile_step)
    custom_experiment_config(settings, experiment.raw, autotuning, 0, where)
    if settings.run_full_experiment:
        full_experiment_config(experiment.raw, experiment.hparams, 0)


def runner_config(settings: SearchSettings, experiment: Experiment) -> dict[str, Any]:
    """The search runner's config: generated, or ``--search-runner-config`` as given."""
    if settings.search_runner_config is not None:
        return load_runner_config(settings.search_runner_config)
    return search_runner_config(settings, experiment.raw)


def submit(settings: SearchSettings, experiment: Experiment) -> int:
    """Create the search-runner experiment; prints and returns its id."""
    from determined.common.api import errors as api_errors
    from determined.experimental import client

    check_before_submitting(settings, experiment)
    config = runner_config(settings, experiment)
    includes = uploads(settings)
    with tempfile.TemporaryDirectory(prefix="dsat-submit-") as tmp:
        context = pathlib.Path(tmp)
        (context / RUNNER_SETTINGS_FILE).write_text(
            json.dumps(relocated(settings).to_json(), indent=2, sort_keys=True)
        )
        try:
            exp = client.create_experiment(config=config, model_dir=str(context), includes=includes)
        except api_errors.APIException as exc:
            raise SearchError(f"the Determined master refused the search runner: {exc}") from exc
        except (api_errors.MasterNotFoundException, ConnectionError) as exc:
            raise SearchError(f"could not reach the Determined master: {exc}") from exc
    print(f"Created experiment {exp.id}")
    return int(exp.id)
