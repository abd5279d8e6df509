"""Upstream's search methods (``determined.pytorch.dsat``, determined 0.37.0), set up as their
search runner sets them up, for the benchmarks to drive exactly like ours.

Their ``dsat`` CLI parses argv into an ``argparse.Namespace`` (``get_full_parser``); the
search runner on the cluster then turns the experiment config into the custom-searcher
config (``get_custom_dsat_exp_conf_from_args``) and instantiates the method class
(``get_search_method_class``). We call those same functions, and read their knob table
from their module; nothing of theirs is copied.
Their trials read ``ds_config.json`` from the model directory, so it must exist on disk.
What a run recommends (:func:`upstream_pick`) is what their ``save_method_state`` writes to
``best_ds_config.json``.
"""

from __future__ import annotations

import argparse
import os
import random
from typing import Any

from determined import searcher
from determined.pytorch import dsat
from determined.pytorch.dsat._run_dsat import (
    get_custom_dsat_exp_conf_from_args,
    get_search_method_class,
)
from determined.pytorch.dsat._utils import get_zero_stage_search_space

from benchmarks.families.api import KnobTables
from benchmarks.harness import ALL_STAGES, METRIC, ModelDir
from determined_dsat.space.ds_config import without_autotuning


def upstream_args(
    name: str,
    model: ModelDir,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    stages: tuple[int, ...] = ALL_STAGES,
) -> argparse.Namespace:
    """The namespace their CLI produces for ``python -m determined.pytorch.dsat NAME ...``.

    Method-specific options keep their defaults (``random``: 5 trials per config, no early
    stopping; ``binary``: search range factor 1; ``asha``: 5 rungs, 3 minimum trials,
    divisor 2, early stopping 0). ``max_slots`` stays unset and ``run_full_experiment`` off.
    """
    argv = [
        name,
        str(model.config_path),
        str(model.path),
        "--max-trials",
        str(max_trials),
        "--max-concurrent-trials",
        str(max_concurrent_trials),
        "--metric",
        METRIC,
        "--zero-stages",
        *(str(s) for s in stages),
        "--random-seed",
        str(seed),
    ]
    args = dsat.get_full_parser().parse_args(argv)
    # What their __main__.parse_args and the on-cluster search runner do next.
    args.config_path = os.path.abspath(args.config_path)
    args.model_dir = os.path.abspath(args.model_dir)
    args.include = []
    args.experiment_id = 0
    return args


def build_upstream(
    name: str,
    model: ModelDir,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    stages: tuple[int, ...] = ALL_STAGES,
) -> searcher.SearchMethod:
    """Upstream's method ``name`` with the exp_config their search runner would give it."""
    args = upstream_args(
        name,
        model,
        max_trials=max_trials,
        max_concurrent_trials=max_concurrent_trials,
        seed=seed,
        stages=stages,
    )
    exp_config: dict[str, Any] = get_custom_dsat_exp_conf_from_args(args)
    # Their __init__ seeds the global `random` module from args.random_seed too; seeding here
    # as well keeps a run independent of whatever ran before it in this process.
    random.seed(seed)
    method: searcher.SearchMethod = get_search_method_class(name)(args=args, exp_config=exp_config)
    return method


def upstream_pick(method: searcher.SearchMethod) -> dict[str, Any] | None:
    """The ds_config upstream's run ends recommending; None when no trial trained.

    Their ``DSATTrialTracker.best_trial``: the best of each stage's best trial, each by its
    single reported metric (noise included, no re-measurement), the ds_config with its
    ``autotuning`` section removed, as their ``save_method_state`` writes it."""
    best = method.trial_tracker.best_trial  # type: ignore[attr-defined]
    return None if best is None else without_autotuning(best.ds_config)


def upstream_table(stages: tuple[int, ...] = ALL_STAGES) -> KnobTables:
    """Upstream's ZeRO search space per stage, from their module at run time.

    Stage k merges stages 1..k of their ``DEFAULT_ZERO_SEARCH_SPACE``, which is what their
    ``get_zero_stage_search_space`` returns and ``get_random_zero_optim_config`` samples.
    """
    return {stage: get_zero_stage_search_space(stage) for stage in stages}
