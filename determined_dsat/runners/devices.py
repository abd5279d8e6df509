"""The slots of this machine: GPUs when there are any, else CPU cores.

A GPU slot is named the way ``CUDA_VISIBLE_DEVICES`` names it: an index (``0``), a GPU
UUID (``GPU-8f3c...``) or a MIG device (``MIG-5b1e...``, or the older
``MIG-GPU-<uuid>/<gi>/<ci>``); the name is passed through to the trial's
``CUDA_VISIBLE_DEVICES`` unchanged. A CPU slot is a core id.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable

import attrs

from determined_dsat.errors import ConfigError

_GPU_NAME = re.compile(r"(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)")
_ENV = "CUDA_VISIBLE_DEVICES"


def _as_ids(ids: Iterable[int | str]) -> tuple[str, ...]:
    return tuple(str(i) for i in ids)


@attrs.frozen
class Slots:
    """Slot ids (GPU names as ``CUDA_VISIBLE_DEVICES`` gives them, or CPU core ids) and
    whether they are GPUs. Integers are accepted and kept as their decimal text."""

    ids: tuple[str, ...] = attrs.field(converter=_as_ids)
    gpu: bool

    @property
    def kind(self) -> str:
        return "GPU" if self.gpu else "CPU core"

    @property
    def mig(self) -> bool:
        """Whether the slots are MIG devices (a CUDA process can use only one of them)."""
        return self.gpu and any(i.startswith("MIG-") for i in self.ids)


def parse_visible_devices(value: str) -> tuple[str, ...]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value names, in order.

    As CUDA does, the list ends at the first negative index (``-1`` hides every GPU).
    Anything that is not an index, a GPU UUID or a MIG id raises ``ConfigError``.
    """
    names: list[str] = []
    for token in (t.strip() for t in value.split(",")):
        if not token:
            continue
        if re.fullmatch(r"-\d+", token):
            break
        if not _GPU_NAME.fullmatch(token):
            raise ConfigError(
                f"{_ENV}={value!r}: {token!r} is not a GPU index, GPU UUID (GPU-...) or "
                "MIG device (MIG-...)"
            )
        names.append(token)
    if len(set(names)) != len(names):
        raise ConfigError(f"{_ENV}={value!r} names a GPU twice")
    return tuple(names)


def check_slots_per_trial(slots: Slots, slots_per_trial: int, where: str) -> None:
    """Refuse trials that a MIG slot cannot run: CUDA shows a process one MIG device
    (the first it is given), so a rank could not see its own."""
    if slots.mig and slots_per_trial > 1:
        raise ConfigError(
            f"{where}: resources.slots_per_trial is {slots_per_trial}, but {_ENV} names MIG "
            "devices and a CUDA process can use only one; use slots_per_trial: 1"
        )


def _visible_gpus() -> tuple[str, ...] | None:
    visible = os.environ.get(_ENV)
    if visible is not None:
        return parse_visible_devices(visible)
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
    return tuple(line.strip() for line in out.split() if line.strip().isdigit())


def detect_slots(force_cpu: bool = False) -> Slots:
    """GPUs if any are visible (and DS_ACCELERATOR is not ``cpu``), else usable CPU cores."""
    wants_cpu = force_cpu or os.environ.get("DS_ACCELERATOR", "").lower() == "cpu"
    gpus = None if wants_cpu else _visible_gpus()
    if gpus:
        return Slots(ids=gpus, gpu=True)
    cores = tuple(sorted(os.sched_getaffinity(0)))
    return Slots(ids=cores or (0,), gpu=False)
