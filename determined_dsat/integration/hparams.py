"""Helpers a user's training script calls to see the ds_config a trial should use.

Names and signatures mirror ``determined.pytorch.dsat`` so switching is one import.
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
from determined_dsat.space.ds_config import CONFIG_KEY, OVERWRITE_KEY, merge_overwrites
from determined_dsat.space.knobs import knobs_for_stage, sample_zero_config

logger = logging.getLogger("determined_dsat")

_HF_FLAGS = {
    "--per_device_train_batch_size": "train_micro_batch_size_per_gpu",
    "--gradient_accumulation_steps": "gradient_accumulation_steps",
}


def get_ds_config_from_hparams(
    hparams: Mapping[str, Any], base_dir: pathlib.Path | str = "."
) -> dict[str, Any]:
    """The trial's ds_config: ``hparams["deepspeed_config"]`` (a path relative to
    ``base_dir``) with ``hparams["overwrite_deepspeed_args"]`` merged in."""
    if CONFIG_KEY not in hparams:
        raise ConfigError(
            f"hyperparameters has no {CONFIG_KEY!r} entry; it must name your ds_config.json"
        )
    path = pathlib.Path(base_dir) / str(hparams[CONFIG_KEY])
    try:
        base = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ds_config: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: a ds_config must be a JSON object")
    return merge_overwrites(base, hparams.get(OVERWRITE_KEY) or {})


def get_dict_from_yaml_or_json_path(path: str | pathlib.Path) -> dict[str, Any]:
    """Load a YAML or JSON file that must hold a mapping."""
    p = pathlib.Path(path)
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot parse: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def get_random_zero_optim_config(
    zero_stage: int, rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """A random ``zero_optimization`` block for ``zero_stage`` from our knob table."""
    generator = rng if rng is not None else np.random.default_rng()
    return sample_zero_config(zero_stage, knobs_for_stage(zero_stage, False, False), generator)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip() == "auto"


def update_hf_args(args: Sequence[str], ds_config: Mapping[str, Any]) -> list[str]:
    """HF Trainer CLI args with batch flags made consistent with ``ds_config``.

    A ds_config value of ``"auto"`` is never copied into the CLI: HF fills it in.
    """
    updated = list(args)
    missing = dict(_HF_FLAGS)
    for i, arg in enumerate(updated[:-1]):
        key = missing.pop(arg, None)
        if key is None or key not in ds_config or _is_auto(ds_config[key]):
            continue
        value = str(ds_config[key])
        if updated[i + 1] != value:
            logger.warning(
                "changing %s from %s to %s to match the ds_config", arg, updated[i + 1], value
            )
            updated[i + 1] = value
    for flag, key in missing.items():
        if key in ds_config and not _is_auto(ds_config[key]):
            updated += [flag, str(ds_config[key])]
    return updated


def get_hf_args_with_overwrites(args: Sequence[str], hparams: Mapping[str, Any]) -> list[str]:
    """HF Trainer args updated for the trial's overwrites.

    HF reads the ds_config from the file named by ``--deepspeed``, so the file is
    rewritten with the overwrites merged in, under a file lock because every rank
    of the trial does this at once.
    """
    if OVERWRITE_KEY not in hparams:
        return list(args)
    try:
        path = pathlib.Path(args[list(args).index("--deepspeed") + 1])
    except (ValueError, IndexError):
        raise ConfigError("the HF args have no --deepspeed PATH to apply overwrites to") from None
    with filelock.FileLock(str(path) + ".lock"):
        current = json.loads(path.read_text())
        merged = merge_overwrites(current, hparams[OVERWRITE_KEY])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(merged, indent=2))
        tmp.replace(path)
    return update_hf_args(args, merged)
