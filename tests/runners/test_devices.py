"""Slots from CUDA_VISIBLE_DEVICES (indices, GPU UUIDs, MIG ids), nvidia-smi or CPU cores."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from determined_dsat.errors import ConfigError
from determined_dsat.runners.devices import (
    Slots,
    check_slots_per_trial,
    detect_slots,
    parse_visible_devices,
)

UUID_A = "GPU-8f3c2b1e-4d5a-6b7c-8d9e-0f1a2b3c4d5e"
UUID_B = "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
MIG_A = "MIG-5b1e3c4d-aaaa-bbbb-cccc-0123456789ab"
MIG_OLD = f"MIG-{UUID_A}/1/0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ("0", "1")),
        (" 2 , 3 ,", ("2", "3")),
        (f"{UUID_A},{UUID_B}", (UUID_A, UUID_B)),
        (MIG_A, (MIG_A,)),
        (MIG_OLD, (MIG_OLD,)),
        ("", ()),
        ("-1", ()),
        ("0,-1,1", ("0",)),  # CUDA stops at the first invalid index
    ],
)
def test_visible_devices_are_parsed_as_cuda_reads_them(
    value: str, expected: tuple[str, ...]
) -> None:
    assert parse_visible_devices(value) == expected


@pytest.mark.parametrize(("value", "bad"), [("0,gpu1", "gpu1"), ("nvidia0", "nvidia0")])
def test_unknown_device_names_are_refused_in_one_line(value: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_visible_devices(value)
    message = str(info.value)
    assert "\n" not in message and f"{bad!r}" in message and "CUDA_VISIBLE_DEVICES" in message


def test_a_device_named_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_visible_devices("0,1,0")


@pytest.mark.parametrize("value", [f"{UUID_A},{UUID_B}", MIG_A, "1,3"])
def test_uuid_and_mig_slots_are_gpus(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """They used to be filtered down to nothing, and the search silently ran on CPU."""
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert detect_slots() == Slots(ids=tuple(value.split(",")), gpu=True)


def test_ds_accelerator_cpu_uses_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    slots = detect_slots()
    assert not slots.gpu and slots.ids == tuple(str(c) for c in sorted(os.sched_getaffinity(0)))


def test_nvidia_smi_indices_without_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # nvidia-smi cannot run here: a stand-in prints what it prints for two GPUs.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert detect_slots() == Slots(ids=("0", "1"), gpu=True)


def test_slot_ids_are_text_even_when_given_as_numbers() -> None:
    assert Slots(ids=(0, 3), gpu=False).ids == ("0", "3")


def test_mig_slots_take_one_rank_per_trial() -> None:
    mig = Slots(ids=(MIG_A, MIG_A.replace("5b1e", "6c2f")), gpu=True)
    assert mig.mig and not Slots(ids=(UUID_A,), gpu=True).mig
    check_slots_per_trial(mig, 1, "deepspeed.yaml")
    with pytest.raises(ConfigError) as info:
        check_slots_per_trial(mig, 2, "deepspeed.yaml")
    assert str(info.value).startswith("deepspeed.yaml: resources.slots_per_trial is 2")
