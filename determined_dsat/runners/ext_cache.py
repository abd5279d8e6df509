"""Where DeepSpeed's JIT ops are built and cached: one cache per Python environment.

torch (2.13) builds JIT extensions into ``$TORCH_EXTENSIONS_DIR``, else into
``~/.cache/torch_extensions/<py tag>_<device>/`` — the same directory for every
virtualenv of one Python version. Two DeepSpeed installs then rebuild each other's ops
on every load (their build flags differ), 2-5 minutes per search. Unless the user set
``TORCH_EXTENSIONS_DIR``, the runner gives the warm-up and every trial a directory of
their own environment: ``~/.cache/torch_extensions/dsat-<versions>-<hash>``, keyed by
``sys.prefix`` and the torch and DeepSpeed versions, so each environment builds once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import re
import sys

ENV_VAR = "TORCH_EXTENSIONS_DIR"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def environment_key() -> str:
    """A directory name that differs between Python environments and op-relevant versions,
    e.g. ``dsat-py311-torch2.13.0_cpu-deepspeed0.19.8-1a2b3c4d``."""
    torch, deepspeed = _version("torch"), _version("deepspeed")
    prefix = os.path.realpath(sys.prefix)
    digest = hashlib.sha256(f"{prefix}\0{torch}\0{deepspeed}".encode()).hexdigest()[:8]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    name = f"dsat-{py}-torch{torch}-deepspeed{deepspeed}-{digest}"
    return re.sub(r"[^A-Za-z0-9.-]", "_", name)


def _user_cache() -> pathlib.Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "torch_extensions"


def extensions_root() -> pathlib.Path:
    """Where the warm-up and trials build ops: ``$TORCH_EXTENSIONS_DIR`` when the user set
    it, else this environment's own directory in the user's torch extensions cache."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return pathlib.Path(explicit)
    return _user_cache() / environment_key()


def extensions_env() -> dict[str, str]:
    """The environment variable that points a child process at :func:`extensions_root`
    (the user's own ``$TORCH_EXTENSIONS_DIR`` when set)."""
    return {ENV_VAR: str(extensions_root())}
