"""DeepSpeed Autotune as a Determined AI custom-searcher plugin.

The helpers keep the names and signatures of ``determined.pytorch.dsat``, so a
training script switches with one import::

    from determined_dsat import dsat_reporting_context, get_ds_config_from_hparams
"""

from determined_dsat.cli import build_parser as get_full_parser
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
    "AshaPolicy",
    "BinaryPolicy",
    "ConfigError",
    "DSATSearchMethod",
    "DsatError",
    "Metric",
    "Outcome",
    "Proposal",
    "RandomPolicy",
    "SearchError",
    "SearchPolicy",
    "dsat_reporting_context",
    "get_batch_config_from_mbs_gas_and_slots",
    "get_dict_from_yaml_or_json_path",
    "get_ds_config_from_hparams",
    "get_full_parser",
    "get_hf_args_with_overwrites",
    "get_random_zero_optim_config",
    "smaller_is_better",
]
