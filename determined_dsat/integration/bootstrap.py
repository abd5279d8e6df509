"""Run a user's training command as a local trial: ``python -m
determined_dsat.integration.bootstrap SHEET -- python3 train.py ARGS`` or
``... -- python3 -m package.module ARGS``.

It installs the local stand-ins (:mod:`local_context`) and then runs the script in
this same interpreter, exactly as ``python3`` would, so the user's code runs unmodified.
"""

from __future__ import annotations

import pathlib
import runpy
import signal
import sys
import types

from determined_dsat.integration.local_context import TrialSheet, install

_USAGE = "usage: python -m determined_dsat.integration.bootstrap SHEET -- python3 SCRIPT [ARGS]"


def _split(argv: list[str]) -> tuple[pathlib.Path, list[str]]:
    if len(argv) < 4 or argv[1] != "--":
        raise SystemExit(_USAGE)
    return pathlib.Path(argv[0]), argv[3:]


def _exit_on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    # The runner stops a trial with SIGTERM before SIGKILL. Unwinding (instead of dying
    # at once) lets torch's extension loader delete its cache lock, which a killed rank
    # would leave behind to block every later DeepSpeed op load on the machine.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    sheet_path, command = _split(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    install(TrialSheet.read(sheet_path))
    sys.path.insert(0, str(pathlib.Path.cwd()))
    if command and command[0] == "-m" and len(command) > 1:
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    elif command:
        script = command[0]
        sys.argv = [script, *command[1:]]
        sys.path[0] = str(pathlib.Path(script).resolve().parent)
        runpy.run_path(script, run_name="__main__")
    else:
        raise SystemExit(_USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
