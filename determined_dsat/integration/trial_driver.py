"""Run a ``DeepSpeedTrial`` class as a DeepSpeed Autotune trial, without
``determined.pytorch.dsat`` (gone after determined 0.37).

``python3 -m determined_dsat.integration.trial_driver model_def:MyTrial`` builds the
trial the way Determined's harness does (``core.init`` in ``ChiefOnly`` preemption and
``MANUAL`` TensorBoard mode) and runs Determined's own DeepSpeed trial controller. Dsat
mode (the ``_use_dsat_mode`` hyperparameter, which the controller never sees: it would
reach for ``determined.pytorch.dsat``) is ours: the controller sets up the trial as
always, then, instead of its workload loop, trains the first searcher operation one
batch at a time inside :func:`dsat_reporting_context`, which reports what DeepSpeed's
autotuning hooks write before they exit the process and completes that operation. The
operation is the real one (``/api/v1/trials/{id}/searcher/operation`` on a cluster, the
local stand-in's otherwise), so the custom searcher gets ``validationCompleted`` with
DeepSpeed's metrics. Without dsat mode (a full experiment) the controller runs as usual.

The same module is the trial entrypoint everywhere: the local runner starts it through
``bootstrap`` (which provides stand-ins for the cluster info and Core API context), and
the ``custom`` experiment on a cluster starts it under ``determined.launch.deepspeed``.
Determined 0.37's ``DeepSpeedTrialContext`` demands CUDA; on a
machine without it, the trial's device comes from DeepSpeed's accelerator instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.integration.local_context import LOCAL_CLUSTER_ID
from determined_dsat.integration.reporting import dsat_reporting_context
from determined_dsat.space.ds_config import USE_DSAT_MODE_KEY

_USAGE = "usage: python3 -m determined_dsat.integration.trial_driver MODULE:TrialClass"


@attrs.frozen
class _NoOperation:
    """Stands for the operation outside dsat mode: the controller completes the real one;
    ``dsat_reporting_context`` only reports an out-of-memory error."""

    length: int = 0

    def report_completed(self, _: Any) -> None:
        """Nothing to complete: the controller does."""


def _experiment_config(info: Any) -> dict[str, Any]:
    config = dict(info.trial._config)
    # Defaults the master fills in before a trial starts.
    config.setdefault("min_validation_period", {"batches": 0})
    config.setdefault("min_checkpoint_period", {"batches": 0})
    config.setdefault("optimizations", {})
    return config


def _dsat_mode(info: Any) -> bool:
    return bool(info.trial.hparams.get(USE_DSAT_MODE_KEY, False))


def _hparams(info: Any) -> dict[str, Any]:
    hparams: Mapping[str, Any] = info.trial.hparams
    return {k: v for k, v in hparams.items() if k != USE_DSAT_MODE_KEY}


def _use_accelerator_device_without_cuda() -> None:
    import torch
    from deepspeed.accelerator import get_accelerator
    from determined.pytorch.deepspeed import DeepSpeedTrialContext

    if torch.cuda.is_available():
        return

    def init_device(self: Any) -> None:
        self.n_gpus = 0
        self.device = torch.device(get_accelerator().device_name(self.distributed.local_rank))

    DeepSpeedTrialContext._init_device = init_device  # type: ignore[method-assign]


def _env_fields(info: Any) -> dict[str, Any]:
    """What Determined's harness puts in the trial's ``EnvContext``: from the real cluster
    info on a cluster, and CPU-friendly values under the local runner's stand-ins."""
    on_cluster = info.cluster_id != LOCAL_CLUSTER_ID
    gpus = list(info.gpu_uuids) if on_cluster else []
    return {
        "master_url": info.master_url,
        "master_cert_file": info.master_cert_file,
        "master_cert_name": info.master_cert_name,
        "experiment_config": _experiment_config(info),
        "hparams": _hparams(info),
        "latest_checkpoint": info.latest_checkpoint,
        "steps_completed": info.trial._steps_completed,
        "use_gpu": bool(gpus),
        "container_gpus": gpus,
        "slot_ids": (
            list(info.slot_ids)
            if on_cluster
            else list(range(int(os.environ.get("LOCAL_SIZE", "1"))))
        ),
        "debug": info.trial._debug,
        "det_trial_id": str(info.trial.trial_id),
        "det_experiment_id": str(info.trial.experiment_id),
        "det_agent_id": info.agent_id,
        "det_cluster_id": info.cluster_id,
        "trial_seed": info.trial.trial_seed,
        "trial_run_id": info.trial._trial_run_id,
        "allocation_id": info.allocation_id,
        "managed_training": True,
        "test_mode": False,
        "on_cluster": on_cluster,
    }


def _train_first_operation(controller: Any) -> None:
    """Dsat mode's training loop (replaces the controller's ``_run``): one batch at a time
    until DeepSpeed's autotuning exits, inside the reporting context of the first searcher
    operation. Every rank asks for the operation (the chief gets it from the master)."""
    core_context = controller.context._core
    op = next(iter(core_context.searcher.operations()))
    with dsat_reporting_context(core_context, op):
        for _ in range(op.length):
            steps = controller.steps_completed
            controller._train_for_step(
                step_id=steps + 1, num_batches=1, total_batches_processed=steps
            )
    raise ConfigError(
        f"the trial trained its whole searcher operation ({op.length} batches) but "
        "DeepSpeed's autotuning did not end it: overwrite_deepspeed_args.autotuning must "
        f"be enabled with end_profile_step below {op.length}"
    )


def _in_dsat_mode(controller_class: type) -> type:
    """``controller_class`` with dsat mode's training loop (set-up and callbacks kept)."""

    class DsatModeController(controller_class):  # type: ignore[valid-type, misc]
        def _run(self) -> None:
            _train_first_operation(self)

    return DsatModeController


def run(entrypoint: str) -> None:
    """Run the Trial class named ``module:Class`` to the end of its searcher operation."""
    import determined as det
    from determined import core, load

    info = det.get_cluster_info()
    if info is None:
        raise SystemExit("no cluster info: run this through the local runner or on a cluster")
    env = det.EnvContext(**_env_fields(info))
    _use_accelerator_device_without_cuda()
    trial_class = load.trial_class_from_entrypoint(entrypoint)
    controller_class = load.get_trial_controller_class(trial_class)
    controller_class.pre_execute_hook(env, det._DistributedBackend())
    distributed = core.DistributedContext.from_deepspeed()
    dsat_mode = _dsat_mode(info)
    if dsat_mode:
        controller_class = _in_dsat_mode(controller_class)
    with core.init(
        distributed=distributed,
        preempt_mode=core.PreemptMode.ChiefOnly,
        tensorboard_mode=core.TensorboardMode.MANUAL,
    ) as context:
        trial_context = trial_class.trial_context_class(context, env)
        trial_context.set_enable_tensorboard_logging(False)  # type: ignore[attr-defined]
        trial = trial_class(trial_context)
        controller = controller_class.from_trial(trial_inst=trial, context=trial_context, env=env)
        if dsat_mode:
            controller.run()
        else:
            with dsat_reporting_context(context, _NoOperation()):
                controller.run()


if __name__ == "__main__":
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        raise SystemExit(_USAGE)
    run(sys.argv[1])
