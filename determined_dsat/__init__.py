"""DeepSpeed Autotune as a Determined AI custom-searcher plugin.

The public names are those of ``determined.pytorch.dsat`` (determined 0.37), so a script
switches with one import (``import determined_dsat as dsat``); ``compat.py`` maps them onto
our search. No logic lives here.
"""

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
