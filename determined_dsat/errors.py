"""Exceptions that carry a message meant for the user.

``DsatError`` is the root. The CLI catches it, prints its message on one line and
exits with code 2 before anything is launched (``ConfigError``) or with code 1
when a search fails after it started (``SearchError``).
"""

from __future__ import annotations


class DsatError(Exception):
    """Base class for every error whose message is written for the user."""


class ConfigError(DsatError):
    """The user's input (flags, YAML, ds_config, replay source) is wrong.

    The message names what is wrong and where, e.g. ``deepspeed.yaml:
    hyperparameters.deepspeed_config is missing``.
    """


class SearchError(DsatError):
    """A search could not go on (e.g. the profiling trial failed)."""


class RunDirLockedError(DsatError):
    """Another runner already holds the run directory."""
