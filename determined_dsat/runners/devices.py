"""The slots of this machine: GPUs when there are any, else CPU cores."""

from __future__ import annotations

import os
import shutil
import subprocess

import attrs


@attrs.frozen
class Slots:
    """Slot ids (GPU indices, or CPU core ids) and whether they are GPUs."""

    ids: tuple[int, ...]
    gpu: bool

    @property
    def kind(self) -> str:
        return "GPU" if self.gpu else "CPU core"


def _visible_gpus() -> tuple[int, ...] | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return tuple(int(v) for v in ids if v.isdigit())
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(line) for line in out.split() if line.strip().isdigit())


def detect_slots(force_cpu: bool = False) -> Slots:
    """GPUs if any are visible (and DS_ACCELERATOR is not ``cpu``), else usable CPU cores."""
    wants_cpu = force_cpu or os.environ.get("DS_ACCELERATOR", "").lower() == "cpu"
    gpus = None if wants_cpu else _visible_gpus()
    if gpus:
        return Slots(ids=gpus, gpu=True)
    cores = tuple(sorted(os.sched_getaffinity(0)))
    return Slots(ids=cores or (0,), gpu=False)
