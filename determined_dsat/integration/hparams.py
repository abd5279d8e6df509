"""Helpers a user's training script calls to see the ds_config a trial should use.

Names and signatures mirror ``determined.pytorch.dsat`` so switching is one import.
Every error these helpers raise for bad input is a :class:`ConfigError` whose message
names what is wrong and where (a file path, a hyperparameter key or a CLI flag).
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import filelock
import numpy as np
import yaml

from determined_dsat.errors import ConfigError
from determined_dsat.jsonio import write_json_atomic
from determined_dsat.space.ds_config import CONFIG_KEY, OVERWRITE_KEY, merge_overwrites
from determined_dsat.space.knobs import ZERO_KNOBS, knobs_for_stage, sample_zero_config

logger = logging.getLogger("determined_dsat")

# HF Trainer batch flags and the ds_config key each must agree with. Both values are
# per-GPU counts of samples (micro batch) and of micro batches per optimizer step.
_HF_FLAGS = {
    "--per_device_train_batch_size": "train_micro_batch_size_per_gpu",
    "--gradient_accumulation_steps": "gradient_accumulation_steps",
}
_DEEPSPEED_FLAG = "--deepspeed"
# argparse treats every argument after a bare "--" as positional.
_END_OF_OPTIONS = "--"


def _read_json_object(path: pathlib.Path) -> dict[str, Any]:
    """The JSON object in the ds_config at ``path``; a ConfigError naming ``path`` if not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ds_config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the ds_config is not UTF-8 text: {exc.reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a ds_config must be a JSON object, found a JSON {type(data).__name__}"
        )
    return data


def _overwrites_of(hparams: Mapping[str, Any]) -> Mapping[str, Any]:
    """``hparams["overwrite_deepspeed_args"]`` as a mapping (``None`` or absent: empty)."""
    overwrites = hparams.get(OVERWRITE_KEY)
    if overwrites is None:
        return {}
    if not isinstance(overwrites, Mapping):
        raise ConfigError(
            f"hyperparameters.{OVERWRITE_KEY} must be a mapping of ds_config keys, "
            f"got {type(overwrites).__name__}"
        )
    return overwrites


def get_ds_config_from_hparams(
    hparams: Mapping[str, Any], base_dir: pathlib.Path | str = "."
) -> dict[str, Any]:
    """The trial's ds_config as a new dict.

    Reads the JSON file named by ``hparams["deepspeed_config"]`` (a path relative to
    ``base_dir``, default the current directory) and deep-merges
    ``hparams["overwrite_deepspeed_args"]`` into it: nested objects merge key by key,
    any other overwrite value replaces the file's value. Neither the file nor
    ``hparams`` is modified.

    Raises:
        ConfigError: ``deepspeed_config`` is missing, the file cannot be read, is not
            JSON or is not a JSON object (the message names the file), or the
            overwrites are not a mapping.
    """
    if CONFIG_KEY not in hparams:
        raise ConfigError(
            f"hyperparameters has no {CONFIG_KEY!r} entry; it must name your ds_config.json"
        )
    path = pathlib.Path(base_dir) / str(hparams[CONFIG_KEY])
    return merge_overwrites(_read_json_object(path), _overwrites_of(hparams))


def get_dict_from_yaml_or_json_path(
    path: str | pathlib.Path, convert_json_keys_to_int: bool = True
) -> dict[Any, Any]:
    """Load a YAML or JSON file (``.json`` suffix: JSON, else YAML) that must hold a mapping.

    ``convert_json_keys_to_int``: top-level JSON keys that spell integers become ints, as
    upstream's helper does (a JSON object's keys are always strings).

    Raises:
        ConfigError: the file cannot be read or parsed, or its top level is not a
            mapping; the message names the file.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{p}: cannot parse: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    if convert_json_keys_to_int and p.suffix.lower() == ".json":
        return {_int_or_str(k): v for k, v in data.items()}
    return data


def _int_or_str(key: str) -> int | str:
    try:
        return int(key)
    except ValueError:
        return key


def get_random_zero_optim_config(
    zero_stage: int, rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """A random ``zero_optimization`` block for ``zero_stage`` (0-3) from our knob table.

    The block always has ``"stage": zero_stage``; each other key is one of the values
    our search tries for that stage (no offload). Pass a seeded ``rng`` for a
    reproducible block; without one a fresh unseeded generator is used.

    Raises:
        ConfigError: ``zero_stage`` is not 0, 1, 2 or 3.
    """
    if isinstance(zero_stage, bool) or zero_stage not in ZERO_KNOBS:
        raise ConfigError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    generator = rng if rng is not None else np.random.default_rng()
    return sample_zero_config(zero_stage, knobs_for_stage(zero_stage, False, False), generator)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip() == "auto"


def _flag_value(ds_config: Mapping[str, Any], key: str, source: str) -> str | None:
    """The CLI text for ``ds_config[key]``; ``None`` when the key is absent or ``"auto"``."""
    if key not in ds_config or _is_auto(ds_config[key]):
        return None
    value = ds_config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'{source}: {key} must be a positive integer or "auto", got {value!r}')
    return str(value)


def _update_hf_args(args: Sequence[str], ds_config: Mapping[str, Any], source: str) -> list[str]:
    wanted = {flag: _flag_value(ds_config, key, source) for flag, key in _HF_FLAGS.items()}
    updated = list(args)
    seen: set[str] = set()
    end = len(updated)
    i = 0
    while i < len(updated):
        arg = updated[i]
        if arg == _END_OF_OPTIONS:
            end = i
            break
        flag, eq, inline = arg.partition("=")
        if flag not in _HF_FLAGS:
            i += 1
            continue
        seen.add(flag)
        if eq:  # --flag=value: the value is in this argument.
            old, value_at = inline, i
        else:  # --flag value: the value is the next argument.
            if i + 1 >= len(updated) or updated[i + 1].startswith("--"):
                raise ConfigError(f"HF args: {flag} is not followed by a value")
            old, value_at = updated[i + 1], i + 1
        new = wanted[flag]
        if new is not None and old != new:
            logger.warning("changing %s from %s to %s to match %s", flag, old, new, source)
            updated[value_at] = f"{flag}={new}" if eq else new
        i = value_at + 1
    added: list[str] = []
    for flag, new in wanted.items():
        if flag not in seen and new is not None:
            logger.warning("adding %s %s to the HF args to match %s", flag, new, source)
            added += [flag, new]
    return updated[:end] + added + updated[end:]


def update_hf_args(args: Sequence[str], ds_config: Mapping[str, Any]) -> list[str]:
    """A copy of the HF Trainer CLI ``args`` with its batch flags made to agree with ``ds_config``.

    ``--per_device_train_batch_size`` (samples per GPU per micro batch) takes
    ``ds_config["train_micro_batch_size_per_gpu"]`` and ``--gradient_accumulation_steps``
    (micro batches per optimizer step) takes ``ds_config["gradient_accumulation_steps"]``.
    A flag may be written ``--flag value`` or ``--flag=value``; a changed value keeps
    the user's form (and every occurrence of the flag is changed, as argparse uses the
    last). A flag the args lack is appended as ``--flag value`` (before a bare ``--``).
    Each change is logged as a warning.

    A ds_config value of ``"auto"``, or a key the ds_config lacks, leaves the flag as the
    user wrote it and adds none: HF fills ``"auto"`` in from its own arguments.
    ``args`` and ``ds_config`` are not modified.

    Raises:
        ConfigError: a batch flag has no value after it, or a ds_config value is
            neither a positive integer nor ``"auto"``.
    """
    return _update_hf_args(args, ds_config, "the ds_config")


def _deepspeed_path(args: Sequence[str]) -> pathlib.Path:
    """The ds_config path of ``--deepspeed PATH`` or ``--deepspeed=PATH`` (the last one wins)."""
    found: str | None = None
    i = 0
    while i < len(args) and args[i] != _END_OF_OPTIONS:
        arg = args[i]
        if arg == _DEEPSPEED_FLAG:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"HF args: {_DEEPSPEED_FLAG} is not followed by a PATH")
            found = args[i + 1]
            i += 2
            continue
        if arg.startswith(_DEEPSPEED_FLAG + "="):
            found = arg[len(_DEEPSPEED_FLAG) + 1 :]
            if not found:
                raise ConfigError(f"HF args: {arg!r} has an empty PATH")
        i += 1
    if found is None:
        raise ConfigError(
            f"HF args have no {_DEEPSPEED_FLAG} PATH (or {_DEEPSPEED_FLAG}=PATH); "
            f"hyperparameters.{OVERWRITE_KEY} can only be applied to the ds_config file it names"
        )
    return pathlib.Path(found)


def _write_json_atomically(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON so that readers see the old or the new file;
    it keeps its permission bits."""
    try:
        write_json_atomic(path, dict(data), keep_mode=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot rewrite the ds_config: {exc.strerror or exc}") from None


def _canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def get_hf_args_with_overwrites(args: Sequence[str], hparams: Mapping[str, Any]) -> list[str]:
    """HF Trainer CLI ``args`` for this trial, with its ds_config file updated in place.

    HF reads the ds_config from the file named by ``--deepspeed PATH`` (or
    ``--deepspeed=PATH``), so the trial's ``hparams["overwrite_deepspeed_args"]`` are
    deep-merged into that file, and the batch flags are then made to agree with the
    merged config as :func:`update_hf_args` does (``"auto"`` is never copied into the
    args). Without an ``overwrite_deepspeed_args`` key this is a no-op that returns a
    copy of ``args`` and does not touch the file.

    Every rank of a trial calls this at once. The read-merge-write runs under a file
    lock at ``PATH + ".lock"``, the file is replaced atomically (temp file +
    ``os.replace``), and it is rewritten only when the merge changes it. Because
    merging the same overwrites again changes nothing, concurrent or repeated calls
    all leave the same file and return the same args, even where the lock does not
    work (some network file systems).

    Raises:
        ConfigError: the args have no ``--deepspeed`` PATH; the file cannot be read,
            is not JSON or is not a JSON object, or cannot be rewritten (the message
            names the file); the overwrites are not a mapping; or a batch flag is
            malformed (see :func:`update_hf_args`).
    """
    if OVERWRITE_KEY not in hparams:
        logger.info("hyperparameters has no %s; the HF args are left as they are", OVERWRITE_KEY)
        return list(args)
    overwrites = _overwrites_of(hparams)
    path = _deepspeed_path(args)
    lock_path = path.with_name(path.name + ".lock")
    try:
        with filelock.FileLock(str(lock_path)):
            current = _read_json_object(path)
            merged = merge_overwrites(current, overwrites)
            if _canonical(merged) != _canonical(current):
                _write_json_atomically(path, merged)
    except OSError as exc:  # creating or locking the lock file
        raise ConfigError(
            f"{lock_path}: cannot lock the ds_config: {exc.strerror or exc}"
        ) from None
    return _update_hf_args(args, merged, str(path))
