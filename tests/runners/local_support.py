"""Helpers of the local-executor tests (no tests in here): a model directory holding
``fake_rank.py`` and executors whose trials run it as their ranks."""

from __future__ import annotations

import pathlib
import shutil

from determined_dsat.runners.devices import Slots
from determined_dsat.runners.entrypoint import LocalCommand
from determined_dsat.runners.local import LocalExecutor, LocalTrialOptions
from determined_dsat.runners.ports import PortAllocator

FAKE_RANK = pathlib.Path(__file__).with_name("fake_rank.py")


def fake_model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(FAKE_RANK, model / FAKE_RANK.name)
    return model


def fake_executor(
    tmp_path: pathlib.Path,
    *args: str,
    slots: Slots,
    slots_per_trial: int = 1,
    ports: PortAllocator | None = None,
    timeout_s: float = 60.0,
) -> LocalExecutor:
    """An executor whose ranks run ``fake_rank.py ARGS`` in ``tmp_path/run/trials/<id>``."""
    options = LocalTrialOptions(
        experiment_config={"name": "fake"},
        model_dir=fake_model_dir(tmp_path),
        command=LocalCommand(argv=(FAKE_RANK.name, *args)),
        slots_per_trial=slots_per_trial,
        trial_timeout_s=timeout_s,
    )
    trials = tmp_path / "run" / "trials"
    return LocalExecutor(options, slots, lambda request_id: trials / request_id, ports=ports)


def gpu_slots(count: int) -> Slots:
    """Pretend GPUs: trials get ``CUDA_VISIBLE_DEVICES`` and no CPU pinning, so many fake
    trials can run at once on a 2-core machine."""
    return Slots(ids=tuple(range(count)), gpu=True)
