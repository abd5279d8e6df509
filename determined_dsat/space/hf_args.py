"""The batch a Hugging Face ``Trainer`` script runs with, read from its command line.

An HF ds_config may leave ``train_micro_batch_size_per_gpu`` and
``gradient_accumulation_steps`` as ``"auto"``; HF then fills them in from
``--per_device_train_batch_size`` (default 8) and ``--gradient_accumulation_steps``
(default 1). A trial runs the same command after ``get_hf_args_with_overwrites``,
which makes both flags agree with the trial's ``overwrite_deepspeed_args`` and the
ds_config file where those give a number. This module works out the result of both
steps without running anything, so a baseline trial can measure the batch the user's
own command would train with.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.space.ds_config import OVERWRITE_KEY

# TrainingArguments defaults (the same in transformers 4.57.6 and 5.24.0).
HF_DEFAULT_MBS = 8
HF_DEFAULT_GAS = 1
MBS_KEY = "train_micro_batch_size_per_gpu"
GAS_KEY = "gradient_accumulation_steps"
_HF_CONFIG_FLAG = "--deepspeed"
# HfArgumentParser accepts each field as --snake_case and, since transformers 4.3x,
# also as --kebab-case.
_MBS_FLAGS = ("--per_device_train_batch_size", "--per-device-train-batch-size")
_GAS_FLAGS = ("--gradient_accumulation_steps", "--gradient-accumulation-steps")
_END_OF_OPTIONS = "--"


@attrs.frozen
class HfBatch:
    """Per-GPU batch settings: ``mbs`` samples per micro-batch, ``gas`` micro-batches per
    optimizer step."""

    mbs: int
    gas: int


def _tokens(entrypoint: str | Sequence[str], where: str) -> list[str]:
    if isinstance(entrypoint, str):
        try:
            return shlex.split(entrypoint)
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot split the entrypoint: {exc}") from None
    # A list entrypoint is an argv: each item is one argument as the script sees it.
    return [str(token) for token in entrypoint]


def _option_value(tokens: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, index of the next token) of the option at ``tokens[i]``."""
    flag, eq, inline = tokens[i].partition("=")
    if eq:
        return flag, inline, i + 1
    if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
        return flag, tokens[i + 1], i + 2
    return flag, None, i + 1


def _positive(text: str | None, flag: str, where: str) -> int:
    if text is None:
        raise ConfigError(f"{where}: {flag} is not followed by a value")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{where}: {flag} must be followed by a positive integer, got {text!r}")
    return value


def _from_command_line(tokens: list[str], where: str) -> tuple[bool, int, int]:
    """(whether HF's ``--deepspeed PATH`` is given, mbs, gas) as argparse reads them:
    the last occurrence of a flag wins, nothing after a bare ``--`` is an option."""
    has_config, mbs, gas = False, HF_DEFAULT_MBS, HF_DEFAULT_GAS
    i = 0
    while i < len(tokens) and tokens[i] != _END_OF_OPTIONS:
        if not tokens[i].startswith("--"):
            i += 1
            continue
        flag, value, after = _option_value(tokens, i)
        if flag == _HF_CONFIG_FLAG:
            # Without a path it is plain DeepSpeed's boolean switch, not HF's flag.
            has_config = has_config or bool(value)
            i = after if value else i + 1
        elif flag in _MBS_FLAGS:
            mbs, i = _positive(value, flag, where), after
        elif flag in _GAS_FLAGS:
            gas, i = _positive(value, flag, where), after
        else:
            i += 1
    return has_config, mbs, gas


def _fixed(value: Any) -> int | None:
    """A number that HF copies into its flags; ``None`` for ``"auto"``, absent or invalid."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def resolve_hf_batch(
    entrypoint: str | Sequence[str],
    hparams: Mapping[str, Any],
    ds_config: Mapping[str, Any] | None = None,
    where: str = "entrypoint",
) -> HfBatch | None:
    """The micro-batch and accumulation an HF Trainer trial started by ``entrypoint`` runs.

    ``None`` when the entrypoint is not an HF Trainer command, i.e. passes no
    ``--deepspeed PATH`` (or ``--deepspeed=PATH``). Otherwise each value is what a
    trial of the search (which always has overwrites) runs with; by precedence, a
    number in ``hparams["overwrite_deepspeed_args"]``, a number in ``ds_config`` (the
    file ``--deepspeed`` names, if given), the last ``--per_device_train_batch_size``
    / ``--gradient_accumulation_steps`` on the command line (``--flag N``,
    ``--flag=N`` or the kebab-case spelling), else HF's default (8 and 1).
    ``"auto"`` never counts as a number. Argparse's abbreviated flags are not
    recognised.

    Raises:
        ConfigError: the entrypoint cannot be split into arguments, a batch flag is not
            followed by a positive integer, or the overwrites are not a mapping; the
            message names ``where``.
    """
    has_config, mbs, gas = _from_command_line(_tokens(entrypoint, where), where)
    if not has_config:
        return None
    overwrites = hparams.get(OVERWRITE_KEY) or {}
    if not isinstance(overwrites, Mapping):
        raise ConfigError(
            f"hyperparameters.{OVERWRITE_KEY} must be a mapping of ds_config keys, "
            f"got {type(overwrites).__name__}"
        )
    for source in (ds_config or {}, overwrites):
        mbs = _fixed(source.get(MBS_KEY)) or mbs
        gas = _fixed(source.get(GAS_KEY)) or gas
    return HfBatch(mbs=mbs, gas=gas)
