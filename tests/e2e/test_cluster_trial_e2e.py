"""One real DeepSpeed trial of each example, on a simulated Determined cluster over HTTP.

The trials' ``custom`` experiment is the one our cluster path builds
(``custom_experiment_config``: the cluster entrypoint, dsat mode, the autotuning section),
created with this package uploaded beside the model, as the search runner does. A
one-trial search drives it through determined's own ``SearchRunner``; the trial runs in a
container booted as an agent boots one (``master_double.container``: determined's
``prep_container`` and ``exec.launch`` in a private mount namespace, then the entrypoint
with Determined's DeepSpeed launcher), with real DeepSpeed on CPU. The search must get
``validationCompleted`` with exactly the metrics DeepSpeed's autotuner wrote.
"""

from __future__ import annotations

import json
import pathlib
import signal
from typing import Any

import pytest
from cluster.master_double import Live, MasterDouble, event_kind
from cluster.master_double.container import TrialContainer, run_container
from cluster.master_double.one_trial import OneTrialSearch, SearchThread
from test_local_e2e_support import clear_stale_torch_locks, copy_example

from determined_dsat import cli
from determined_dsat.runners.cluster.configs import custom_experiment_config
from determined_dsat.runners.cluster.search_runner import package_dir
from determined_dsat.runners.ext_cache import extensions_env
from determined_dsat.runners.local import remove_shared_memory
from determined_dsat.space import ds_config as dsc
from determined_dsat.space.experiment import load_experiment

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

# DeepSpeed's launcher (0.19.8) gives every rank this rendezvous port when none is passed,
# as Determined's launch layer does; its CPU allreduce names its shared memory after it.
DEEPSPEED_DEFAULT_PORT = 29500
# The first DeepSpeed op build on a machine takes minutes; a warm cache, seconds.
CONTAINER_TIMEOUT_S = 900
# The op cache the suite's warm-up filled (on a cluster the image would hold the ops):
# without it DeepSpeed compiles them again in the container, minutes on 2 cores.
CONTAINER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    **extensions_env(),
}
# A search trial's own overwrites: micro-batch 2 on the one slot, ZeRO-1.
SEARCH_TRIAL = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "train_batch_size": 2,
    "zero_optimization": {"stage": 1},
}


def trial_setup(example: str, tmp: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any], Any]:
    """The example's model dir, its custom experiment config and the settings."""
    user = copy_example(example, tmp / "user" / example)
    settings = cli.parse_settings(
        ["binary", str(user / "deepspeed-cpu.yaml"), str(user), "--backend", "determined"]
    )
    experiment = load_experiment(settings.config_path, settings.model_dir)
    autotuning = dsc.autotuning_section(settings.start_profile_step, settings.end_profile_step)
    custom = custom_experiment_config(settings, experiment.raw, autotuning, runner_experiment_id=1)
    overwrites = {**SEARCH_TRIAL, dsc.AUTOTUNING_KEY: autotuning}
    hparams = dsc.merge_overwrites(
        experiment.hparams, {dsc.OVERWRITE_KEY: overwrites, dsc.USE_DSAT_MODE_KEY: True}
    )
    return user, {"config": custom, "hparams": hparams}, settings


@pytest.mark.parametrize(
    ("example", "entrypoint"),
    [
        ("core_api", "python3 -m determined.launch.deepspeed python3 train.py"),
        (
            "deepspeed_trial",
            "python3 -m determined.launch.deepspeed python3 -m "
            "determined_dsat.integration.trial_driver model_def:GPTTrial",
        ),
    ],
    ids=["core_api", "deepspeed_trial"],
)
def test_a_real_trial_completes_its_operation_with_the_autotuning_metrics(
    example: str, entrypoint: str, tmp_path: pathlib.Path
) -> None:
    clear_stale_torch_locks()
    model_dir, custom, settings = trial_setup(example, tmp_path)
    assert custom["config"]["entrypoint"] == entrypoint
    length = dsc.trial_length(settings.end_profile_step)
    storage = {"type": "directory", "container_path": str(tmp_path / "checkpoints")}
    with MasterDouble(lambda hparams, length: Live(), checkpoint_storage=storage) as master:
        method = OneTrialSearch(custom["hparams"], length)
        search = SearchThread(master, method, custom["config"], model_dir, [package_dir()])
        search.start()
        trial = search.wait_for_operation()
        task = master.trial_task(trial.trial_id)
        try:
            box = run_container(
                master, task, tmp_path / "container", CONTAINER_TIMEOUT_S, CONTAINER_ENV
            )
        finally:
            remove_shared_memory(DEEPSPEED_DEFAULT_PORT)
        assert exited_cleanly(box), box.log[-6000:]
        search.finish()
        record = master.experiment(search.experiment_id)
        reports = [body for t, _, body in master.trial_reports() if t == trial.trial_id]
        unknown = master.unknown_routes()

    written = autotuning_metrics(box)
    assert written["throughput"] > 0 and written["latency"] > 0, written
    assert method.completions == [(written, length)], box.log[-3000:]
    (completed,) = [e for e in record.events_emitted if event_kind(e) == "validationCompleted"]
    assert completed["validationCompleted"]["metric"] == written
    assert record.event_kinds()[-1] == "trialClosed"
    validations = [b for b in reports if b.get("group") == "validation"]
    assert [v["metrics"]["metrics"]["avgMetrics"] for v in validations] == [written]
    assert record.state == "COMPLETED" and record.anomalies == [] and unknown == []


def exited_cleanly(box: TrialContainer) -> bool:
    """Exit code 0, or Determined 0.37's launch layer ending a launcher that was still
    exiting: once every rank has exited, its pid_server waits 5 s and sends SIGTERM to the
    DeepSpeed launcher, whose exit then reads -15 (241). Seen on a loaded 2-core machine."""
    if box.proc.returncode == 0:
        return True
    ranks_done = "exits successfully" in box.log and "exits with return code" not in box.log
    return box.proc.returncode == 256 - signal.SIGTERM and ranks_done


def autotuning_metrics(box: TrialContainer) -> dict[str, Any]:
    """What DeepSpeed's autotuner wrote in the trial's working directory."""
    path = box.work_dir / dsc.METRIC_PATH
    assert path.exists(), f"DeepSpeed wrote no {dsc.METRIC_PATH}\n{box.log[-4000:]}"
    written: dict[str, Any] = json.loads(path.read_text())
    return written
