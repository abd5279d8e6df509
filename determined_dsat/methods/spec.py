"""What a search method declares about itself (see ``registry.py``), and the helpers its
CLI arguments share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.methods.base import SearchPolicy
from determined_dsat.space.config_space import ConfigSpace

Opts = TypeVar("Opts")


@attrs.frozen
class MethodSpec(Generic[Opts]):
    """How a search method appears everywhere: its CLI subcommand ``name`` and ``help``,
    its ``options`` class (attrs, JSON-able), the arguments it adds to its subcommand and
    how it reads them (raising ``ConfigError``), and its policy."""

    name: str
    help: str
    options: type[Opts]
    policy: Callable[[ConfigSpace, Opts], SearchPolicy]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    read_options: Callable[[argparse.Namespace], Opts]

    def options_from_json(self, data: Mapping[str, Any]) -> Opts:
        """The options saved with ``attrs.asdict``."""
        return self.options(**data)

    def make_policy(self, space: ConfigSpace, options: object) -> SearchPolicy:
        """A fresh policy of this method."""
        if not isinstance(options, self.options):
            raise TypeError(
                f"method {self.name!r} takes {self.options.__name__}, not {type(options).__name__}"
            )
        return self.policy(space, options)


def add_option(p: argparse.ArgumentParser, names: str, help: str, **kwargs: Any) -> None:
    """Add a flag given as space-separated names (``"-mt --max-trials"``)."""
    p.add_argument(*names.split(), help=help, **kwargs)


def at_least(flag: str, value: int | None, least: int) -> None:
    """``ConfigError`` unless ``value`` (None: not given) is at least ``least``."""
    if value is not None and value < least:
        raise ConfigError(f"{flag} must be at least {least}, got {value}")


def add_search_range_factor(p: argparse.ArgumentParser) -> None:
    """``--search-range-factor``, shared by the bisection methods."""
    add_option(p, "--search-range-factor", "scale the initial micro-batch search range by this "
               "factor", type=float, default=1.0)  # fmt: skip


def range_factor(value: float) -> float:
    """A valid ``--search-range-factor``: a positive, finite number."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--search-range-factor must be a positive number, got {value}")
    return value
