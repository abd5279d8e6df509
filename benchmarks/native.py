"""DeepSpeed's own autotuner (``deepspeed.autotuning``, DeepSpeed 0.19.8) on the same landscapes.

DeepSpeed's ``Autotuner.tune()`` runs its whole flow: a model-info profiling experiment,
then per ZeRO stage a micro-batch search (the user's micro-batch, then 1.05x / 1x / 0.95x
of its memory estimate, then a binary search), a handful of micro-batches with their
gradient accumulation, and finally one of its tuners (``GridSearchTuner``,
``RandomTuner`` or ``ModelBasedTuner`` with its XGBoost cost model) over the stage's
tuning space (``DEFAULT_TUNING_SPACE_ZERO_1..3`` filled into its config templates). Every
experiment goes through its ``ResourceManager``: ``schedule_experiments`` reads the
experiment files it wrote, ``run`` launches them, ``parse_results`` and the tuners read
``metrics.json`` from each experiment's result directory, and an experiment whose result
directory already holds a ``stderr.log`` is not run again.

:class:`LandscapeResourceManager` is that resource manager with ``run`` answering from a
landscape instead of launching ``deepspeed``: it writes ``metrics.json`` (noisy metrics,
as our replay runner reports them) or an out-of-memory error in ``stderr.log``, and the
profiling experiment's ``model_info.json``. Everything else is DeepSpeed's code, with its
defaults (``fast: false`` so that the tuners run at all; its default ``fast: true`` tunes
the micro-batch only; ``tuner_num_trials`` 50, ``tuner_early_stopping`` 5). The device
memory it reads from the accelerator is the landscape's. Each experiment is one trial;
the search stops when it has used ``max_trials`` (profiling included), as ours do.
``ModelBasedTuner`` needs ``xgboost`` (``pip install -e '.[benchmarks]'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import random
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.harness import BASE_DS_CONFIG, KnobTables, TrialLog
from determined_dsat.testing.synthetic import Landscape, hash_config

TUNERS = {"grid": "gridsearch", "random": "random", "model_based": "model_based"}
"""Our names for DeepSpeed's tuner types (``autotuning.tuner_type``)."""
OOM_MESSAGE = "torch.OutOfMemoryError: CUDA out of memory (synthetic landscape)\n"


class BudgetSpent(BaseException):
    """The trial budget is used up. A ``BaseException``: ``BaseTuner.tune`` catches
    ``Exception`` and would carry on."""


def available() -> str | None:
    """None when DeepSpeed's autotuner can be driven here, else why not."""
    try:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.autotuning import autotuner  # noqa: F401
    except ImportError as exc:  # pragma: no cover - deepspeed is a dependency
        return f"deepspeed.autotuning cannot be imported ({exc})"
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "xgboost is not installed (ModelBasedTuner needs it): pip install -e '.[benchmarks]'"
    return None


def native_table() -> KnobTables:
    """The knob values DeepSpeed's tuners can propose per stage: each stage's template
    block, with the tuning space's lists in place of the template's values."""
    from deepspeed.autotuning import constants as c

    table: dict[int, dict[str, tuple[Any, ...]]] = {}
    templates = {
        1: c.DEFAULT_TEMPLATE_PATH_ZERO_1,
        2: c.DEFAULT_TEMPLATE_PATH_ZERO_2,
        3: c.DEFAULT_TEMPLATE_PATH_ZERO_3,
    }
    spaces = {
        1: c.DEFAULT_TUNING_SPACE_ZERO_1,
        2: c.DEFAULT_TUNING_SPACE_ZERO_2,
        3: c.DEFAULT_TUNING_SPACE_ZERO_3,
    }
    for stage, path in templates.items():
        template = json.loads(pathlib.Path(path).read_text())["zero_optimization"]
        knobs = {k: (v,) for k, v in template.items() if k != "stage"}
        for key, values in spaces[stage]["zero_optimization"].items():
            if key != "stage":
                knobs[key] = tuple(values) if isinstance(values, list) else (values,)
        table[stage] = knobs
    return table


def _resource_manager_class() -> type[Any]:
    from deepspeed.autotuning.constants import AUTOTUNING, AUTOTUNING_METRIC_PATH
    from deepspeed.autotuning.scheduler import ResourceManager

    class LandscapeResourceManager(ResourceManager):  # type: ignore[misc]
        """DeepSpeed's resource manager, answering experiments from a landscape."""

        def __init__(self, landscape: Landscape, max_trials: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.landscape = landscape
            self.max_trials = max_trials
            self.log: list[TrialLog] = []

        def run(self) -> None:
            while self.experiment_queue:
                if len(self.log) >= self.max_trials:
                    raise BudgetSpent
                exp = self.experiment_queue.pop(0)
                result_dir = pathlib.Path(exp["result_dir"])
                result_dir.mkdir(parents=True, exist_ok=True)
                ds_config = exp["ds_config"]
                section = ds_config.get(AUTOTUNING) or {}
                stderr = ""
                if (section.get("model_info") or {}).get("profile"):
                    info = {**self.landscape.profile.to_json(), "rank": 0}
                    pathlib.Path(section["model_info_path"]).parent.mkdir(
                        parents=True, exist_ok=True
                    )
                    pathlib.Path(section["model_info_path"]).write_text(json.dumps(info))
                    self.log.append(TrialLog(len(self.log) + 1, "profile", "ok", None, None, 0.0))
                else:
                    zero = dict(ds_config.get("zero_optimization") or {})
                    mbs = int(ds_config["train_micro_batch_size_per_gpu"])
                    value = self.landscape.true_throughput(zero, mbs)
                    stage = int(zero.get("stage", 0))
                    if value is None:
                        stderr = OOM_MESSAGE
                        outcome, value = "oom", 0.0
                    else:
                        # Noise from the config without its autotuning section, which holds
                        # this run's temporary paths: the same experiment, the same noise.
                        plain = {k: v for k, v in ds_config.items() if k != AUTOTUNING}
                        metrics = self.landscape.measure(plain, hash_config(plain))
                        pathlib.Path(section[AUTOTUNING_METRIC_PATH]).write_text(
                            json.dumps(metrics)
                        )
                        outcome = "ok"
                    self.log.append(
                        TrialLog(len(self.log) + 1, "search", outcome, stage, mbs, value, zero)
                    )
                (result_dir / "stderr.log").write_text(stderr)
                self.finished_experiments[exp["exp_id"]] = (exp, stderr.strip() or None)

    return LandscapeResourceManager


def user_ds_config(tuner: str, workdir: pathlib.Path, stages: tuple[int, ...]) -> dict[str, Any]:
    """The benchmark's ds_config with an autotuning section for DeepSpeed's autotuner."""
    return {
        **BASE_DS_CONFIG,
        "zero_optimization": {"stage": list(stages)},
        "autotuning": {
            "enabled": True,
            "fast": False,
            "tuner_type": TUNERS[tuner],
            "metric": "throughput",
            "results_dir": str(workdir / "results"),
            "exps_dir": str(workdir / "exps"),
            "overwrite": True,
        },
    }


def run_native(
    tuner: str,
    landscape: Landscape,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    stages: tuple[int, ...] = (1, 2, 3),
) -> tuple[tuple[TrialLog, ...], str]:
    """One DeepSpeed autotuning run; returns its trials in order and how it ended
    (``"finished"``: its flow ended; ``"budget"``: ``max_trials`` were used)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.autotuning.autotuner import Autotuner
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.ERROR)
    manager_class = _resource_manager_class()
    with tempfile.TemporaryDirectory(prefix="dsat-native-") as tmp:
        workdir = pathlib.Path(tmp)
        config_path = workdir / "ds_config.json"
        config_path.write_text(json.dumps(user_ds_config(tuner, workdir, stages)))
        args = argparse.Namespace(
            user_args=["--deepspeed_config", str(config_path)],
            user_script="train.py",
            num_gpus=landscape.slots,
            num_nodes=1,
            hostfile="",
            master_port=29500,
        )
        # One node holding `max_concurrent_trials` trials' worth of GPUs: DeepSpeed's tuners
        # then evaluate that many experiments per batch.
        resources = {"localhost": list(range(landscape.slots * max_concurrent_trials))}
        autotuner = Autotuner(args, resources)
        manager = manager_class(
            landscape,
            max_trials,
            args=args,
            hosts=["localhost"],
            num_gpus_per_node=landscape.slots * max_concurrent_trials,
            results_dir=autotuner.results_dir,
            exps_dir=autotuner.exps_dir,
            arg_mappings=None,
        )
        autotuner.rm = manager
        autotuner.get_gpu_memory_info = lambda: landscape.gpu_mem  # type: ignore[method-assign]
        random.seed(seed)  # RandomTuner samples with `random`,
        np.random.seed(seed)  # ModelBasedTuner with numpy's global generator.
        try:
            autotuner.tune()
            ended = "finished"
        except BudgetSpent:
            ended = "budget"
        return tuple(manager.log), ended


def describe(trials: tuple[TrialLog, ...]) -> list[Mapping[str, Any]]:
    """The trials as plain dicts (for debugging a run)."""
    return [
        {"seq": t.seq, "outcome": t.outcome, "stage": t.stage, "mbs": t.mbs, "zero": t.zero}
        for t in trials
    ]
