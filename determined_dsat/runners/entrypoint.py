"""Turn an experiment's ``entrypoint`` into the command a local trial runs.

On a cluster the entrypoint starts Determined's launcher (``python3 -m
determined.launch.deepspeed python3 train.py``), which starts one process per slot.
Locally we are the launcher, so we drop it and keep the user's own command.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

from determined_dsat.errors import ConfigError

_LAUNCHERS = (
    "determined.launch.deepspeed",
    "determined.launch.torch_distributed",
    "determined.launch.horovod",
    "determined.exec.harness",
)
_PYTHONS = ("python", "python3")


@attrs.frozen
class LocalCommand:
    """What to run in each rank: a Python script or module (``argv`` after ``python3``),
    or a Trial class (``trial_class`` as ``module:Class``)."""

    argv: tuple[str, ...] = ()
    trial_class: str | None = None


def _tokens(entrypoint: str | Sequence[str]) -> list[str]:
    if isinstance(entrypoint, str):
        return shlex.split(entrypoint)
    return [str(t) for t in entrypoint]


def _is_python(token: str) -> bool:
    name = token.rsplit("/", 1)[-1]
    return name in _PYTHONS or (name.startswith("python3.") and name[8:].isdigit())


def parse_entrypoint(entrypoint: str | Sequence[str], where: str) -> LocalCommand:
    """The local command for an entrypoint; ``ConfigError`` names what cannot run locally."""
    tokens = _tokens(entrypoint)
    if not tokens:
        raise ConfigError(f"{where}: entrypoint is empty")
    if len(tokens) == 1 and ":" in tokens[0] and not _is_python(tokens[0]):
        return LocalCommand(trial_class=tokens[0])
    if _is_python(tokens[0]) and len(tokens) >= 3 and tokens[1] == "-m" and tokens[2] in _LAUNCHERS:
        return _after_launcher(tokens[3:], where)
    if _is_python(tokens[0]) and len(tokens) >= 2:
        return LocalCommand(argv=tuple(tokens[1:]))
    raise ConfigError(
        f"{where}: the local backend runs Python entrypoints (python3 script.py, "
        f"python3 -m determined.launch.deepspeed ..., or module:TrialClass); got {tokens[0]!r}"
    )


def _after_launcher(rest: list[str], where: str) -> LocalCommand:
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--trial" and i + 1 < len(rest):
            return LocalCommand(trial_class=rest[i + 1])
        if token.startswith("--trial="):
            return LocalCommand(trial_class=token.split("=", 1)[1])
        if token == "--":
            i += 1
            break
        if not token.startswith("-"):
            break
        i += 1
    command = rest[i:]
    if not command:
        raise ConfigError(f"{where}: entrypoint starts a launcher but gives it nothing to run")
    if _is_python(command[0]):
        if len(command) < 2:
            raise ConfigError(f"{where}: entrypoint runs python with no script")
        return LocalCommand(argv=tuple(command[1:]))
    if ":" in command[0]:
        return LocalCommand(trial_class=command[0])
    raise ConfigError(
        f"{where}: the launcher's command must be a Python script or module, got {command[0]!r}"
    )
