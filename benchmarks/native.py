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
landscape instead of launching ``deepspeed``: it writes ``metrics.json`` (noisy metrics from
the same ``LandscapeSource`` as our searches see) or an out-of-memory error in
``stderr.log``, and the profiling experiment's ``model_info.json``. It keeps a simulated
clock as the replay backend does: ``max_concurrent_trials`` experiments run at once (its
node holds that many trials' GPUs), each taking the landscape's duration, and ``run``
returns once the queue is done, as DeepSpeed's own does. Everything else is DeepSpeed's
code, with its defaults (``fast: false`` so that the tuners run at all; its default
``fast: true`` tunes the micro-batch only; ``tuner_num_trials`` 50,
``tuner_early_stopping`` 5). The device memory it reads from the accelerator is the
landscape's. Each experiment is one trial; the search stops when it has used
``max_trials`` (profiling included), as ours do. "Full" means ``fast: false``: micro-batch
search, then the tuner. What a run recommends is :func:`native_pick`.
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

import attrs
import numpy as np

from benchmarks.families.api import BenchmarkLandscape, KnobTables
from benchmarks.harness import BASE_DS_CONFIG, METRIC
from benchmarks.recording import LandscapeSource, TrialLog, trial_shape, true_value
from determined_dsat.space.ds_config import is_profiling_config, without_autotuning
from determined_dsat.trials.records import Outcome, TrialResult

TUNERS = {"grid": "gridsearch", "random": "random", "model_based": "model_based"}
"""Our names for DeepSpeed's tuner types (``autotuning.tuner_type``)."""
OOM_MESSAGE = "torch.OutOfMemoryError: CUDA out of memory (benchmark landscape)\n"
PROFILE_STEP_KEYS = ("start_profile_step", "end_profile_step")


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


def _experiment_config(ds_config: Mapping[str, Any]) -> dict[str, Any]:
    """What the landscape sees of an experiment: its ds_config with the autotuning section
    reduced to the profile steps (the rest are this run's temporary paths, which would make
    the same experiment draw different noise in every run)."""
    from deepspeed.autotuning.constants import AUTOTUNING

    plain = {k: v for k, v in ds_config.items() if k != AUTOTUNING}
    section = ds_config.get(AUTOTUNING) or {}
    steps = {k: section[k] for k in PROFILE_STEP_KEYS if k in section}
    return {**plain, AUTOTUNING: steps} if steps else plain


def _resource_manager_class() -> type[Any]:
    from deepspeed.autotuning.constants import AUTOTUNING, AUTOTUNING_METRIC_PATH
    from deepspeed.autotuning.scheduler import ResourceManager

    class LandscapeResourceManager(ResourceManager):  # type: ignore[misc]
        """DeepSpeed's resource manager, answering experiments from a landscape on a
        simulated clock: ``concurrency`` experiments at once, each started as soon as one
        finishes, and ``run`` returns when the queue is done (as DeepSpeed's does)."""

        def __init__(
            self,
            landscape: BenchmarkLandscape,
            max_trials: int,
            concurrency: int,
            run_seed: int,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.landscape = landscape
            self.source = LandscapeSource(landscape, run_seed)
            self.max_trials = max_trials
            self.concurrency = concurrency
            self.clock = 0.0
            self.log: list[TrialLog] = []
            self.measured: list[tuple[float, dict[str, Any]]] = []  # (metric, ds_config)

        def _answer(self, exp: dict[str, Any]) -> tuple[TrialResult, TrialLog]:
            result_dir = pathlib.Path(exp["result_dir"])
            result_dir.mkdir(parents=True, exist_ok=True)
            ds_config = exp["ds_config"]
            section = ds_config.get(AUTOTUNING) or {}
            seen = _experiment_config(ds_config)
            if is_profiling_config(ds_config):
                seen = ds_config
            result = self.source.evaluate(seen)
            kind, stage, mbs = trial_shape(seen)
            stderr = ""
            if kind == "profile":
                info = {**self.landscape.profile_metrics(), "rank": 0}
                path = pathlib.Path(section["model_info_path"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(info))
            elif result.outcome is Outcome.OK:
                pathlib.Path(section[AUTOTUNING_METRIC_PATH]).write_text(json.dumps(result.metrics))
                self.measured.append((float(result.metrics[METRIC]), seen))
            else:
                stderr = OOM_MESSAGE if result.outcome is Outcome.OOM else f"{result.detail}\n"
            (result_dir / "stderr.log").write_text(stderr)
            self.finished_experiments[exp["exp_id"]] = (exp, stderr.strip() or None)
            value = true_value(self.landscape, seen) if result.outcome is Outcome.OK else 0.0
            log = TrialLog(0, kind, result.outcome.value, stage, mbs, value, 0.0)
            return result, log

        def run(self) -> None:
            lanes = [self.clock] * self.concurrency
            batch: list[tuple[float, int, TrialLog]] = []
            spent = False
            while self.experiment_queue:
                if len(self.log) + len(batch) >= self.max_trials:
                    spent = True
                    break
                exp = self.experiment_queue.pop(0)
                lane = min(range(len(lanes)), key=lanes.__getitem__)
                result, log = self._answer(exp)
                lanes[lane] += result.duration_s or 0.0
                batch.append((lanes[lane], len(batch), log))
            for finish, _, log in sorted(batch, key=lambda item: (item[0], item[1])):
                self.log.append(attrs.evolve(log, seq=len(self.log) + 1, finish_s=finish))
            self.clock = max(lanes)
            if spent:
                raise BudgetSpent

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


@attrs.frozen
class NativeRun:
    """One DeepSpeed autotuning run: its trials in completion order, how it ended
    (``"finished"``: its flow ended; ``"budget"``: ``max_trials`` were used) and the
    ds_config it recommends (None when nothing trained)."""

    trials: tuple[TrialLog, ...]
    ended: str
    pick: dict[str, Any] | None


def native_pick(autotuner: Any, manager: Any, finished: bool) -> dict[str, Any] | None:
    """What the run recommends. A finished run: DeepSpeed's own choice, the global best of
    its records (``get_best_space_records``, what it reports as the optimal setup). A run
    the budget stopped has not recorded its last tuner's results: the experiment with the
    best measured metric, which is what its results directory would show a user."""
    from deepspeed.autotuning.constants import GLOBAL_TUNING_SPACE

    if finished:
        record = autotuner.get_best_space_records().get(GLOBAL_TUNING_SPACE)
        if record and record[0]:
            return without_autotuning(record[0]["ds_config"])
    if not manager.measured:
        return None
    best: dict[str, Any] = max(manager.measured, key=lambda item: item[0])[1]
    return without_autotuning(best)


def run_native(
    tuner: str,
    landscape: BenchmarkLandscape,
    *,
    max_trials: int,
    max_concurrent_trials: int,
    seed: int,
    stages: tuple[int, ...] = (1, 2, 3),
) -> NativeRun:
    """One DeepSpeed autotuning run, ``max_concurrent_trials`` experiments at a time."""
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
        gpus = landscape.slots * max_concurrent_trials
        autotuner = Autotuner(args, {"localhost": list(range(gpus))})
        manager = manager_class(
            landscape,
            max_trials,
            max_concurrent_trials,
            seed,
            args=args,
            hosts=["localhost"],
            num_gpus_per_node=gpus,
            results_dir=autotuner.results_dir,
            exps_dir=autotuner.exps_dir,
            arg_mappings=None,
        )
        autotuner.rm = manager
        gpu_mem = landscape.profile_metrics()["gpu_mem"]
        autotuner.get_gpu_memory_info = lambda: gpu_mem  # type: ignore[method-assign]
        random.seed(seed)  # RandomTuner samples with `random`,
        np.random.seed(seed)  # ModelBasedTuner with numpy's global generator.
        try:
            autotuner.tune()
            ended = "finished"
        except BudgetSpent:
            ended = "budget"
        pick = native_pick(autotuner, manager, ended == "finished")
        return NativeRun(tuple(manager.log), ended, pick)


def describe(trials: tuple[TrialLog, ...]) -> list[Mapping[str, Any]]:
    """The trials as plain dicts (for debugging a run)."""
    return [attrs.asdict(t) for t in trials]
