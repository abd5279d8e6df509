"""The public API of ``determined.pytorch.dsat`` (determined 0.37), on our search.

Scripts written against upstream build their own search runner from a parsed namespace::

    args = dsat.get_full_parser().parse_args(argv)  # argv: METHOD deepspeed.yaml model_dir
    exp_config = dsat.get_custom_dsat_exp_conf_from_args(args)
    method = dsat.get_search_method_class(args.search_method)(args=args, exp_config=exp_config)
    searcher.LocalSearchRunner(method, searcher_dir).run(exp_config, model_dir, includes)

They run unchanged with ``import determined_dsat as dsat``: the names and signatures are
upstream's; behind them are our settings, driver and methods. Upstream's internal data
classes (``DSATTrial``, ``DSATTrialTracker``, ...) have no counterpart.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, ClassVar

from determined_dsat.build import build_driver, build_space
from determined_dsat.integration.hparams import get_dict_from_yaml_or_json_path
from determined_dsat.methods import asha, binary, model_based, random_search
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.settings import SearchSettings
from determined_dsat.space import ds_config as dsc
from determined_dsat.space.experiment import Experiment, load_experiment


def settings_of(args: argparse.Namespace, method: str | None = None) -> SearchSettings:
    """Our validated settings from an upstream-style namespace (``method`` overrides the
    namespace's)."""
    from determined_dsat.cli import settings_from_args

    if method is not None and getattr(args, "method", method) != method:
        args = argparse.Namespace(**{**vars(args), "method": method, "search_method": method})
    settings, _ = settings_from_args(args)
    return settings


class BaseDSATSearchMethod(DSATSearchMethod):
    """Upstream's base class, constructed as ``Class(args=args, exp_config=exp_config)``:
    the search method named by ``method_name``, set up from the parsed arguments."""

    method_name: ClassVar[str]

    def __init__(self, args: argparse.Namespace, exp_config: dict[str, Any]) -> None:
        self.args = args
        self.exp_config = exp_config
        settings = settings_of(args, self.method_name)
        experiment = _experiment(args)
        space = build_space(settings, experiment)
        super().__init__(build_driver(settings, space, experiment.slots_per_trial))


class BinarySearchDSATSearchMethod(BaseDSATSearchMethod):
    """``binary``: bisection on micro-batch size for random ZeRO configurations."""

    method_name = binary.METHOD.name


class RandomDSATSearchMethod(BaseDSATSearchMethod):
    """``random``: random ZeRO configurations, each with a short micro-batch lineage."""

    method_name = random_search.METHOD.name


class ASHADSATSearchMethod(BaseDSATSearchMethod):
    """``asha``: asynchronous successive halving over random configurations."""

    method_name = asha.METHOD.name


class ModelDSATSearchMethod(BaseDSATSearchMethod):
    """``model``: the model-based search (ours; upstream has no counterpart)."""

    method_name = model_based.METHOD.name


_CLASSES: dict[str, type[BaseDSATSearchMethod]] = {
    c.method_name: c
    for c in (
        BinarySearchDSATSearchMethod,
        RandomDSATSearchMethod,
        ASHADSATSearchMethod,
        ModelDSATSearchMethod,
    )
}


def get_search_method_class(method_string: str) -> type[BaseDSATSearchMethod]:
    """The search method class for a method name (``ValueError`` naming the choices)."""
    try:
        return _CLASSES[method_string]
    except KeyError:
        raise ValueError(
            f"`method_string` must be one of {sorted(_CLASSES)}, not {method_string!r}"
        ) from None


def get_custom_dsat_exp_conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``custom`` experiment whose trials the search creates (``args.experiment_id``:
    the search runner's experiment, 0 when absent)."""
    from determined_dsat.runners.cluster.configs import custom_experiment_config

    settings = settings_of(args)
    experiment = _experiment(args)
    autotuning = dsc.autotuning_section(settings.start_profile_step, settings.end_profile_step)
    runner_id = int(getattr(args, "experiment_id", 0) or 0)
    return custom_experiment_config(
        settings, experiment.raw, autotuning, runner_id, where=experiment.config_path.name
    )


def get_search_runner_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``single`` experiment that runs the search on a cluster (or the file given by
    ``--search-runner-config``)."""
    from determined_dsat.runners.cluster.configs import search_runner_config

    settings = settings_of(args)
    if settings.search_runner_config is not None:
        return get_dict_from_yaml_or_json_path(str(settings.search_runner_config))
    return search_runner_config(settings, _experiment(args).raw)


def _experiment(args: argparse.Namespace) -> Experiment:
    return load_experiment(pathlib.Path(args.config_path), pathlib.Path(args.model_dir))
