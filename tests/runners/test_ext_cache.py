"""One op cache per Python environment, so two DeepSpeed installs stop rebuilding each
other's ops (torch's default cache is shared by every virtualenv of a Python version)."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

from determined_dsat.runners import ext_cache


def test_key_names_python_torch_and_deepspeed() -> None:
    key = ext_cache.environment_key()
    torch = importlib.metadata.version("torch").replace("+", "_")
    deepspeed = importlib.metadata.version("deepspeed")
    major, minor = sys.version_info[:2]
    assert key.startswith(f"dsat-py{major}{minor}-torch{torch}-deepspeed{deepspeed}-")
    assert key == ext_cache.environment_key()  # stable: the cache is found again


def test_another_environment_gets_another_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    here = ext_cache.environment_key()
    monkeypatch.setattr(sys, "prefix", "/opt/other-venv")
    assert ext_cache.environment_key() != here


def test_another_deepspeed_gets_another_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    here = ext_cache.environment_key()
    real = importlib.metadata.version

    def version(name: str) -> str:
        return "0.0.1" if name == "deepspeed" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert ext_cache.environment_key() != here and "deepspeed0.0.1" in ext_cache.environment_key()


def test_a_virtualenv_of_the_same_python_gets_another_cache(tmp_path: pathlib.Path) -> None:
    """The case that thrashed: same interpreter, another venv (here one that sees this one's
    packages, so only sys.prefix differs)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(tmp_path)],
        check=True,
    )
    code = "from determined_dsat.runners import ext_cache; print(ext_cache.environment_key())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run(
        [str(tmp_path / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    assert other.startswith("dsat-py") and other != ext_cache.environment_key()


def test_the_users_torch_extensions_dir_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/data/ext")
    assert ext_cache.extensions_root() == pathlib.Path("/data/ext")
    assert ext_cache.extensions_env() == {"TORCH_EXTENSIONS_DIR": "/data/ext"}
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    expected = f"/cache/torch_extensions/{ext_cache.environment_key()}"
    assert ext_cache.extensions_env() == {"TORCH_EXTENSIONS_DIR": expected}
