"""DeepSpeed Autotune as a Determined AI custom-searcher plugin.

The public names are those of ``determined.pytorch.dsat`` (determined 0.37), so a script
switches with one import (``import determined_dsat as dsat``); ``compat.py`` maps them onto
our search. No logic lives here.

The names are imported on first use: a trial process that only needs
``dsat_reporting_context`` does not pay for the CLI and the search methods.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from determined_dsat.cli import build_parser as get_full_parser
    from determined_dsat.compat import (
        ASHADSATSearchMethod,
        BaseDSATSearchMethod,
        BinarySearchDSATSearchMethod,
        ModelDSATSearchMethod,
        RandomDSATSearchMethod,
        get_custom_dsat_exp_conf_from_args,
        get_search_method_class,
        get_search_runner_config_from_args,
    )
    from determined_dsat.errors import ConfigError, DsatError, SearchError
    from determined_dsat.integration.hparams import (
        get_dict_from_yaml_or_json_path,
        get_ds_config_from_hparams,
        get_hf_args_with_overwrites,
        get_random_zero_optim_config,
    )
    from determined_dsat.integration.reporting import dsat_reporting_context
    from determined_dsat.methods.asha import AshaPolicy
    from determined_dsat.methods.base import Proposal, SearchPolicy
    from determined_dsat.methods.binary import BinaryPolicy
    from determined_dsat.methods.random_search import RandomPolicy
    from determined_dsat.methods.search_method import DSATSearchMethod
    from determined_dsat.space.batch import get_batch_config_from_mbs_gas_and_slots
    from determined_dsat.space.metric import Metric, smaller_is_better
    from determined_dsat.trials.records import Outcome

_WHERE: dict[str, tuple[str, str]] = {
    "ASHADSATSearchMethod": ("determined_dsat.compat", "ASHADSATSearchMethod"),
    "AshaPolicy": ("determined_dsat.methods.asha", "AshaPolicy"),
    "BaseDSATSearchMethod": ("determined_dsat.compat", "BaseDSATSearchMethod"),
    "BinaryPolicy": ("determined_dsat.methods.binary", "BinaryPolicy"),
    "BinarySearchDSATSearchMethod": ("determined_dsat.compat", "BinarySearchDSATSearchMethod"),
    "ConfigError": ("determined_dsat.errors", "ConfigError"),
    "DSATSearchMethod": ("determined_dsat.methods.search_method", "DSATSearchMethod"),
    "DsatError": ("determined_dsat.errors", "DsatError"),
    "Metric": ("determined_dsat.space.metric", "Metric"),
    "ModelDSATSearchMethod": ("determined_dsat.compat", "ModelDSATSearchMethod"),
    "Outcome": ("determined_dsat.trials.records", "Outcome"),
    "Proposal": ("determined_dsat.methods.base", "Proposal"),
    "RandomDSATSearchMethod": ("determined_dsat.compat", "RandomDSATSearchMethod"),
    "RandomPolicy": ("determined_dsat.methods.random_search", "RandomPolicy"),
    "SearchError": ("determined_dsat.errors", "SearchError"),
    "SearchPolicy": ("determined_dsat.methods.base", "SearchPolicy"),
    "dsat_reporting_context": ("determined_dsat.integration.reporting", "dsat_reporting_context"),
    "get_batch_config_from_mbs_gas_and_slots": (
        "determined_dsat.space.batch",
        "get_batch_config_from_mbs_gas_and_slots",
    ),
    "get_custom_dsat_exp_conf_from_args": (
        "determined_dsat.compat",
        "get_custom_dsat_exp_conf_from_args",
    ),
    "get_dict_from_yaml_or_json_path": (
        "determined_dsat.integration.hparams",
        "get_dict_from_yaml_or_json_path",
    ),
    "get_ds_config_from_hparams": (
        "determined_dsat.integration.hparams",
        "get_ds_config_from_hparams",
    ),
    "get_full_parser": ("determined_dsat.cli", "build_parser"),
    "get_hf_args_with_overwrites": (
        "determined_dsat.integration.hparams",
        "get_hf_args_with_overwrites",
    ),
    "get_random_zero_optim_config": (
        "determined_dsat.integration.hparams",
        "get_random_zero_optim_config",
    ),
    "get_search_method_class": ("determined_dsat.compat", "get_search_method_class"),
    "get_search_runner_config_from_args": (
        "determined_dsat.compat",
        "get_search_runner_config_from_args",
    ),
    "smaller_is_better": ("determined_dsat.space.metric", "smaller_is_better"),
}

__all__ = [
    "ASHADSATSearchMethod",
    "AshaPolicy",
    "BaseDSATSearchMethod",
    "BinaryPolicy",
    "BinarySearchDSATSearchMethod",
    "ConfigError",
    "DSATSearchMethod",
    "DsatError",
    "Metric",
    "ModelDSATSearchMethod",
    "Outcome",
    "Proposal",
    "RandomDSATSearchMethod",
    "RandomPolicy",
    "SearchError",
    "SearchPolicy",
    "dsat_reporting_context",
    "get_batch_config_from_mbs_gas_and_slots",
    "get_custom_dsat_exp_conf_from_args",
    "get_dict_from_yaml_or_json_path",
    "get_ds_config_from_hparams",
    "get_full_parser",
    "get_hf_args_with_overwrites",
    "get_random_zero_optim_config",
    "get_search_method_class",
    "get_search_runner_config_from_args",
    "smaller_is_better",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'determined_dsat' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
