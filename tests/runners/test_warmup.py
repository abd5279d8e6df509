"""The op warm-up: which ops it prepares, where, and that it is never fatal.

The warm-up child is real; DeepSpeed in it is a stand-in package (put first on its
``PYTHONPATH``) whose op builders record what they were asked to load, so these tests
take seconds instead of the minutes a real build takes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from determined_dsat.runners import warmup
from determined_dsat.runners.devices import Slots
from determined_dsat.runners.ext_cache import extensions_root
from determined_dsat.runners.warmup import ops_for, warm_up_ops

ADAMW = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
OFFLOADED = {**ADAMW, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
CPU = Slots(ids=(0, 1), gpu=False)
FAKE_ACCELERATOR = textwrap.dedent(
    """
    import json, os, time

    class _Builder:
        def __init__(self, name):
            self.name = name

        def is_compatible(self, verbose=False):
            return True

        def load(self, verbose=False):
            time.sleep(float(os.environ.get("FAKE_DS_SLEEP", "0")))
            if self.name in os.environ.get("FAKE_DS_FAIL", "").split(","):
                raise RuntimeError("compiler exploded")
            with open(os.environ["FAKE_DS_RECORD"], "a") as out:
                record = {"op": self.name, "cache": os.environ.get("TORCH_EXTENSIONS_DIR"),
                          "accelerator": os.environ.get("DS_ACCELERATOR")}
                out.write(json.dumps(record) + "\\n")

    class _Accelerator:
        _name = "fake"

        def create_op_builder(self, name):
            return _Builder(name)

    def get_accelerator():
        return _Accelerator()
    """
)


@pytest.mark.parametrize(
    ("ds_config", "gpu", "offload", "expected"),
    [
        (ADAMW, False, False, ["FusedAdamBuilder", "ShareMemCommBuilder"]),
        (ADAMW, True, False, ["FusedAdamBuilder"]),
        (ADAMW, True, True, ["FusedAdamBuilder", "CPUAdamBuilder"]),
        (OFFLOADED, True, False, ["FusedAdamBuilder", "CPUAdamBuilder"]),
        ({"optimizer": {"type": "Adagrad"}}, True, False, []),
        ({"optimizer": {"type": "Adagrad"}}, True, True, ["CPUAdagradBuilder"]),
        ({"optimizer": {"type": "Lion"}}, True, True, ["FusedLionBuilder", "CPULionBuilder"]),
        ({"optimizer": {"type": "SGD"}}, False, True, ["ShareMemCommBuilder"]),
        ({}, True, True, []),
    ],
)
def test_only_ops_a_trial_can_load_are_warmed(
    ds_config: dict[str, Any], gpu: bool, offload: bool, expected: list[str]
) -> None:
    """CPUAdam took 57 s of an 11-minute search that never offloaded (DeepSpeed 0.19.8
    builds it only for an offloaded optimizer)."""
    assert ops_for(ds_config, gpu, offload) == expected


@pytest.fixture
def fake_deepspeed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Puts the stand-in DeepSpeed first on the path of child processes; returns the file
    its builders record loads in."""
    package = tmp_path / "fake" / "deepspeed"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "accelerator.py").write_text(FAKE_ACCELERATOR)
    record = tmp_path / "loaded.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package.parent), *sys.path]))
    monkeypatch.setenv("FAKE_DS_RECORD", str(record))
    # A cache of its own: the real one may hold built ops, which skip the warm-up.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    return record


def _loaded(record: pathlib.Path) -> list[dict[str, str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_warm_up_loads_its_ops_in_this_environments_cache(
    tmp_path: pathlib.Path, fake_deepspeed: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "warmup.log"
    with caplog.at_level(logging.INFO, logger="determined_dsat"):
        assert warm_up_ops(ADAMW, CPU, log) is True
    loaded = _loaded(fake_deepspeed)
    assert [r["op"] for r in loaded] == ["FusedAdamBuilder", "ShareMemCommBuilder"]
    assert {r["cache"] for r in loaded} == {str(extensions_root())}
    assert {r["accelerator"] for r in loaded} == {"cpu"}
    assert "FusedAdamBuilder: ready in" in log.read_text()
    assert any(str(extensions_root()) in r.getMessage() for r in caplog.records)


def test_offload_search_warms_cpu_adam(
    tmp_path: pathlib.Path, fake_deepspeed: pathlib.Path
) -> None:
    assert warm_up_ops(ADAMW, CPU, tmp_path / "warmup.log", offload=True) is True
    ops = [r["op"] for r in _loaded(fake_deepspeed)]
    assert ops == ["FusedAdamBuilder", "CPUAdamBuilder", "ShareMemCommBuilder"]


def test_a_failed_op_is_reported_not_fatal(
    tmp_path: pathlib.Path,
    fake_deepspeed: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_DS_FAIL", "FusedAdamBuilder")
    log = tmp_path / "warmup.log"
    with caplog.at_level(logging.WARNING, logger="determined_dsat"):
        assert warm_up_ops(ADAMW, CPU, log) is False
    assert [r["op"] for r in _loaded(fake_deepspeed)] == ["ShareMemCommBuilder"]
    assert "FusedAdamBuilder: failed: RuntimeError: compiler exploded" in log.read_text()
    assert any("preparing DeepSpeed ops failed" in r.getMessage() for r in caplog.records)


def test_a_warm_up_past_its_timeout_is_stopped(
    tmp_path: pathlib.Path, fake_deepspeed: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DS_SLEEP", "60")
    started = time.monotonic()
    assert warm_up_ops(ADAMW, CPU, tmp_path / "warmup.log", timeout_s=3.0) is False
    assert time.monotonic() - started < 20
    assert _loaded(fake_deepspeed) == []


def _build(root: pathlib.Path, op: str, mtime: float | None = None) -> None:
    library = root / op / f"{op}.so"
    library.parent.mkdir(parents=True, exist_ok=True)
    library.write_bytes(b"")
    if mtime is not None:
        os.utime(library, (mtime, mtime))


def test_ops_built_after_the_install_start_no_warm_up(
    tmp_path: pathlib.Path, fake_deepspeed: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """4.4 s of a 2 min 12 s end-to-end search went to a warm-up that found both ops built."""
    _build(extensions_root(), "fused_adam")
    _build(extensions_root(), "deepspeed_shm_comm")
    log = tmp_path / "warmup.log"
    with caplog.at_level(logging.INFO, logger="determined_dsat"):
        assert warm_up_ops(ADAMW, CPU, log) is True
    assert _loaded(fake_deepspeed) == []
    assert not log.exists()
    assert any("already built" in r.getMessage() for r in caplog.records)


def test_a_missing_or_outdated_op_is_warmed_again(
    tmp_path: pathlib.Path, fake_deepspeed: pathlib.Path
) -> None:
    _build(extensions_root(), "fused_adam")
    assert warm_up_ops(ADAMW, CPU, tmp_path / "warmup.log") is True
    assert [r["op"] for r in _loaded(fake_deepspeed)] == ["FusedAdamBuilder", "ShareMemCommBuilder"]
    # Built before this DeepSpeed was installed: a trial's loader may rebuild it.
    _build(extensions_root(), "deepspeed_shm_comm", mtime=0.0)
    fake_deepspeed.unlink()
    assert warm_up_ops(ADAMW, CPU, tmp_path / "warmup.log") is True
    assert len(_loaded(fake_deepspeed)) == 2


def test_nothing_to_warm_starts_nothing(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "warmup.log"
    assert warm_up_ops({"optimizer": {"type": "SGD"}}, Slots(ids=(0,), gpu=True), log) is True
    assert not log.exists()


def test_stopping_does_not_need_popens_wait_lock() -> None:
    """Ctrl-C landing in ``Popen.wait`` just after it took its internal lock leaves that
    lock taken (CPython 3.11); a stop that waits with ``Popen.wait`` then hangs the
    runner forever. The stop must end the child anyway, within its grace periods."""
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    assert child._waitpid_lock.acquire(False)  # as an interrupted wait leaves it
    stopper = threading.Thread(target=warmup._stop, args=(child,), daemon=True)
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warmup, "STOP_GRACE_S", 1.0)
        stopper.start()
        stopper.join(timeout=30)
    assert not stopper.is_alive(), "stopping the warm-up hung"
    assert time.monotonic() - started < 20
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    child.stdout.close()
