"""The user's experiment: its YAML config, its ds_config.json, and what a search needs of them.

Everything here is checked before a search launches anything. Each problem raises
``ConfigError`` with a one-line message naming the file and the key at fault.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
from collections.abc import Mapping
from typing import Any

import attrs
import yaml

from determined_dsat.errors import ConfigError

DS_CONFIG_HPARAM = "deepspeed_config"
ENTRYPOINT_CONFIG_FLAGS = ("--deepspeed_config", "--deepspeed")
MAX_LENGTH_UNITS = ("batches", "epochs", "records")


@attrs.frozen
class Experiment:
    """A loaded and validated experiment. Paths are absolute."""

    config_path: pathlib.Path
    model_dir: pathlib.Path
    raw: Mapping[str, Any]
    ds_config_path: pathlib.Path
    ds_config: Mapping[str, Any]
    slots_per_trial: int = 1
    max_length: int | None = None

    @property
    def hparams(self) -> Mapping[str, Any]:
        """The ``hyperparameters`` section (always a mapping holding ``deepspeed_config``)."""
        hparams: Mapping[str, Any] = self.raw["hyperparameters"]
        return hparams


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _kind(value: object) -> str:
    """A short name for a YAML/JSON value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _read_text(path: pathlib.Path, where: str, what: str) -> str:
    if not path.exists():
        raise ConfigError(f"{where}: {what} not found ({path})")
    if path.is_dir():
        raise ConfigError(f"{where}: {what} is a directory, not a file ({path})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {what} is not UTF-8 text ({path})") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {what}: {e.strerror or e} ({path})") from None


def _load_yaml(path: pathlib.Path, where: str) -> dict[str, Any]:
    text = _read_text(path, where, "experiment config")
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = e.problem or e.context or "cannot parse"
        raise ConfigError(f"{where}:{line} invalid YAML: {_one_line(problem)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {_one_line(e)}") from None
    if data is None:
        raise ConfigError(f"{where}: the experiment config is empty; expected a YAML mapping")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the experiment config must be a YAML mapping, got {_kind(data)}"
        )
    return data


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # DeepSpeed refuses duplicate keys too; catching them here names the file.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_ds_config(path: pathlib.Path, where: str) -> dict[str, Any]:
    """Load a DeepSpeed config as a JSON object; ``where`` labels it in error messages."""
    text = _read_text(path, where, "DeepSpeed config")
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {_one_line(e.msg)}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{where}: invalid DeepSpeed config: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a DeepSpeed config must be a JSON object, got {_kind(data)}")
    return data


def _split_tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes: fall back to plain whitespace
        return text.split()


def _entrypoint_config_args(entrypoint: str | list[str]) -> list[tuple[str, str]]:
    if isinstance(entrypoint, str):
        tokens = _split_tokens(entrypoint)
    else:
        tokens = [tok for part in entrypoint for tok in _split_tokens(str(part))]
    found: list[tuple[str, str]] = []
    for i, token in enumerate(tokens):
        flag, eq, value = token.partition("=")
        if flag not in ENTRYPOINT_CONFIG_FLAGS:
            continue
        if eq:
            if value:
                found.append((flag, value))
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            found.append((flag, tokens[i + 1]))
    return found


def entrypoint_ds_config_paths(entrypoint: str | list[str]) -> list[str]:
    """The DeepSpeed config paths an entrypoint passes, in order.

    Recognises ``--deepspeed_config X``, ``--deepspeed X`` (Hugging Face) and their
    ``--flag=X`` forms. ``--deepspeed`` followed by another flag, or last, is plain
    DeepSpeed's boolean switch and names no file.
    """
    return [path for _, path in _entrypoint_config_args(entrypoint)]


def _normalized(base: pathlib.Path, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _check_entrypoint(
    raw: Mapping[str, Any], hp_path: str, model_dir: pathlib.Path, where: str
) -> None:
    entrypoint = raw.get("entrypoint")
    if entrypoint is None:
        return
    if not isinstance(entrypoint, (str, list)) or (
        isinstance(entrypoint, list) and not all(isinstance(p, str) for p in entrypoint)
    ):
        raise ConfigError(f"{where}: entrypoint must be a string or a list of strings")
    # On a cluster the entrypoint runs in the model directory: resolve both there.
    expected = _normalized(model_dir, hp_path)
    for flag, path in _entrypoint_config_args(entrypoint):
        if _normalized(model_dir, path) != expected:
            raise ConfigError(
                f"{where}: entrypoint passes {flag} {path} but "
                f"hyperparameters.{DS_CONFIG_HPARAM} is {hp_path}; they must name the same file"
            )


def _slots_per_trial(raw: Mapping[str, Any], where: str) -> int:
    resources = raw.get("resources")
    if resources is None:
        return 1
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{where}: resources must be a mapping, got {_kind(resources)}")
    slots = resources.get("slots_per_trial", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(
            f"{where}: resources.slots_per_trial must be a positive integer, got {slots!r}"
        )
    return slots


def _max_length(raw: Mapping[str, Any], where: str) -> int | None:
    searcher = raw.get("searcher")
    if searcher is None:
        return None
    if not isinstance(searcher, Mapping):
        raise ConfigError(f"{where}: searcher must be a mapping, got {_kind(searcher)}")
    value = searcher.get("max_length")
    if value is None:
        return None
    number: object = value
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in MAX_LENGTH_UNITS:
            units = ", ".join(f"{{{u}: N}}" for u in MAX_LENGTH_UNITS)
            raise ConfigError(
                f"{where}: searcher.max_length must be an integer or one of {units}, "
                f"got {_one_line(dict(value))}"
            )
        number = next(iter(value.values()))
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ConfigError(
            f"{where}: searcher.max_length must be a non-negative integer, got {number!r}"
        )
    return number


def _find_ds_config(
    hp_path: str, model_dir: pathlib.Path, config_dir: pathlib.Path, where: str
) -> pathlib.Path:
    given = pathlib.Path(os.path.expanduser(hp_path))
    bases = [given] if given.is_absolute() else [model_dir / given, config_dir / given]
    for candidate in bases:
        if candidate.is_file():
            return candidate.resolve()
    looked = " or ".join(dict.fromkeys(str(c) for c in bases))
    raise ConfigError(
        f"{where}: hyperparameters.{DS_CONFIG_HPARAM} names {hp_path}, "
        f"which is not a file (looked for {looked})"
    )


def _ds_config_hparam(raw: Mapping[str, Any], where: str) -> str:
    need = "DeepSpeed Autotune needs the path of your ds_config.json there"
    if "hyperparameters" not in raw:
        raise ConfigError(f"{where}: hyperparameters is missing ({need})")
    if raw["hyperparameters"] is None:
        raise ConfigError(f"{where}: hyperparameters is empty ({need})")
    hparams = raw["hyperparameters"]
    if not isinstance(hparams, Mapping):
        raise ConfigError(f"{where}: hyperparameters must be a mapping, got {_kind(hparams)}")
    if DS_CONFIG_HPARAM not in hparams:
        raise ConfigError(f"{where}: hyperparameters.{DS_CONFIG_HPARAM} is missing ({need})")
    hp_path = hparams[DS_CONFIG_HPARAM]
    if not isinstance(hp_path, str) or not hp_path.strip():
        got = "an empty string" if isinstance(hp_path, str) else _kind(hp_path)
        raise ConfigError(
            f"{where}: hyperparameters.{DS_CONFIG_HPARAM} must be the path of your "
            f"ds_config.json as a string, got {got}"
        )
    return hp_path


def load_experiment(config_path: pathlib.Path, model_dir: pathlib.Path) -> Experiment:
    """Load the experiment config and its ds_config, checking everything a search relies on."""
    config_path = pathlib.Path(os.path.abspath(os.path.expanduser(config_path)))
    model_dir = pathlib.Path(os.path.abspath(os.path.expanduser(model_dir)))
    where = config_path.name
    raw = _load_yaml(config_path, where)
    if not model_dir.exists():
        raise ConfigError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise ConfigError(f"model directory is not a directory: {model_dir}")
    hp_path = _ds_config_hparam(raw, where)
    _check_entrypoint(raw, hp_path, model_dir, where)
    slots = _slots_per_trial(raw, where)
    max_length = _max_length(raw, where)
    ds_config_path = _find_ds_config(hp_path, model_dir, config_path.parent, where)
    ds_config = load_ds_config(ds_config_path, hp_path)
    return Experiment(
        config_path=config_path,
        model_dir=model_dir,
        raw=raw,
        ds_config_path=ds_config_path,
        ds_config=ds_config,
        slots_per_trial=slots,
        max_length=max_length,
    )
