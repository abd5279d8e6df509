"""Local stand-ins for what a Determined cluster gives a trial.

The local runner writes a *trial sheet* (``dsat_trial.json``) into each trial's
directory and starts the user's script through ``determined_dsat.integration.bootstrap``,
which calls :func:`install`. From then on, inside that process:

- ``det.get_cluster_info()`` returns a real ``determined.ClusterInfo`` with the
  trial's hyperparameters (ds_config overwrites and autotuning section included);
- ``det.core.init()`` returns Determined's own off-cluster context, with a searcher
  that yields one operation of the trial's length, checkpoints stored in the run
  directory, and every reported metric also written to ``dsat_metrics.jsonl`` so the
  runner learns what the trial reported;
- on CPU cores, a trial of several ranks that trains through Hugging Face ``accelerate``
  (the HF ``Trainer``) sees all its ranks, as it would on a cluster's GPUs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import pathlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

SHEET_NAME = "dsat_trial.json"
METRICS_NAME = "dsat_metrics.jsonl"
# The cluster id of the local stand-ins, which tells a trial it is not on a cluster.
LOCAL_CLUSTER_ID = "dsat-local"


@attrs.frozen
class TrialSheet:
    """What a local trial process needs to know about itself."""

    hparams: Mapping[str, Any]
    experiment_config: Mapping[str, Any]
    length: int
    checkpoint_dir: str
    metrics_path: str
    trial_id: int = 1
    experiment_id: int = 0
    trial_seed: int = 0
    latest_checkpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialSheet:
        return cls(**data)

    def write(self, path: pathlib.Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: pathlib.Path) -> TrialSheet:
        return cls.from_json(json.loads(path.read_text()))


def _cluster_info(sheet: TrialSheet, rank: int) -> Any:
    import determined as det

    trial = det.TrialInfo(
        trial_id=sheet.trial_id,
        experiment_id=sheet.experiment_id,
        trial_seed=sheet.trial_seed,
        hparams=dict(sheet.hparams),
        config=dict(sheet.experiment_config),
        steps_completed=0,
        trial_run_id=1,
        debug=False,
        inter_node_network_interface=None,
    )
    return det.ClusterInfo(
        master_url="http://127.0.0.1:1",
        cluster_id=LOCAL_CLUSTER_ID,
        agent_id="dsat-local",
        slot_ids=[rank],
        task_id=f"dsat-local.{sheet.trial_id}",
        allocation_id=f"dsat-local.{sheet.trial_id}.1",
        session_token="",
        task_type="TRIAL",
        latest_checkpoint=sheet.latest_checkpoint,
        trial_info=trial,
    )


class _MetricsTap:
    """Wraps a train context so reported metrics also land in the trial's metrics file."""

    def __init__(self, train: Any, path: pathlib.Path, is_chief: bool) -> None:
        self._train = train
        self._path = path
        self._is_chief = is_chief

    def __getattr__(self, name: str) -> Any:
        return getattr(self._train, name)

    def _tap(self, group: str, steps_completed: int, metrics: Mapping[str, Any]) -> None:
        if self._is_chief:
            line = {"group": group, "steps_completed": steps_completed, "metrics": dict(metrics)}
            with self._path.open("a") as f:
                f.write(json.dumps(line, default=str) + "\n")

    def report_training_metrics(self, steps_completed: int, metrics: Any, **kw: Any) -> None:
        self._tap("training", steps_completed, metrics)
        self._train.report_training_metrics(steps_completed=steps_completed, metrics=metrics, **kw)

    def report_validation_metrics(self, steps_completed: int, metrics: Any, **kw: Any) -> None:
        self._tap("validation", steps_completed, metrics)
        self._train.report_validation_metrics(
            steps_completed=steps_completed, metrics=metrics, **kw
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``patch(module)`` once the module named ``name`` has been executed, so that a
    script that never imports it pays nothing."""

    def __init__(self, name: str, patch: Callable[[types.ModuleType], None]) -> None:
        self._name = name
        self._patch = patch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, patch = loader.exec_module, self._patch

        def exec_then_patch(module: types.ModuleType) -> None:
            exec_module(module)
            patch(module)

        loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


def _gloo_for_cpu_ranks(state: types.ModuleType) -> None:
    """Make ``accelerate.state.PartialState`` use gloo where it would pick no backend.

    accelerate (seen on 1.15.0, with transformers 4.57.6 and 5.24.0) chooses a backend
    only for an accelerator it knows; with DeepSpeed on CPU cores it chooses none, and
    then reports a world size of 1 to every rank. HF then expects ``train_batch_size``
    for one rank and refuses the ds_config of a 2-rank trial. DeepSpeed itself runs such
    ranks on gloo, so naming gloo gives HF the world a cluster's GPUs would.
    """
    partial_state = getattr(state, "PartialState", None)
    prepare = getattr(partial_state, "_prepare_backend", None)
    if partial_state is None or prepare is None:
        return  # another accelerate: leave it as it is

    def prepare_backend(self: Any, cpu: bool = False, *args: Any, **kwargs: Any) -> Any:
        backend, distributed_type = prepare(self, cpu, *args, **kwargs)
        return ("gloo" if backend is None and not cpu else backend), distributed_type

    partial_state._prepare_backend = prepare_backend


def install(sheet: TrialSheet) -> None:
    """Patch ``determined`` in this process so the user's script sees a trial."""
    import determined as det
    from determined import core
    from determined.core import _context

    rank = int(os.environ.get("RANK", "0"))
    info = _cluster_info(sheet, rank)
    det.get_cluster_info = lambda: info  # type: ignore[assignment]

    class LocalSearcher(core.DummySearcherContext):  # type: ignore[misc]
        """One operation of the trial's length, in batches (the dummy says epochs)."""

        def get_configured_units(self) -> Any:
            return core.Unit.BATCHES

    def local_init(*, distributed: Any = None, **_: Any) -> Any:
        dist = distributed or core.DummyDistributedContext()
        context = _context._dummy_init(distributed=dist, checkpoint_storage=sheet.checkpoint_dir)
        context.searcher = LocalSearcher(dist, length=sheet.length)
        tap = _MetricsTap(context.train, pathlib.Path(sheet.metrics_path), dist.rank == 0)
        context.train = tap  # type: ignore[assignment]
        return context

    core.init = local_init  # type: ignore[assignment]
    if os.environ.get("DS_ACCELERATOR") == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.meta_path.insert(0, _AfterImport("accelerate.state", _gloo_for_cpu_ranks))
