"""The one table of search methods. Adding a method is one module (its policy, options
class and CLI arguments in a :class:`~determined_dsat.methods.spec.MethodSpec` named
``METHOD``) plus one line in :data:`_BUILT_IN`."""

from __future__ import annotations

from typing import Any

from determined_dsat.methods import asha, binary, model_based, random_search
from determined_dsat.methods.base import SearchPolicy
from determined_dsat.methods.spec import MethodSpec
from determined_dsat.space.config_space import ConfigSpace

_BUILT_IN: tuple[MethodSpec[Any], ...] = (
    asha.METHOD,
    binary.METHOD,
    random_search.METHOD,
    model_based.METHOD,
)
_METHODS: dict[str, MethodSpec[Any]] = {spec.name: spec for spec in _BUILT_IN}


def register(spec: MethodSpec[Any]) -> None:
    """Add a method (a plug-in, or a test's toy method); its name must be new."""
    if spec.name in _METHODS:
        raise ValueError(f"a search method named {spec.name!r} is registered already")
    _METHODS[spec.name] = spec


def unregister(name: str) -> None:
    """Remove a registered method (tests use it to clean up)."""
    _METHODS.pop(name, None)


def methods() -> dict[str, MethodSpec[Any]]:
    """Every registered method by name, in registration order."""
    return dict(_METHODS)


def get(name: str) -> MethodSpec[Any]:
    """The method registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown search method {name!r}; choose one of {sorted(_METHODS)}"
        ) from None


def make_policy(name: str, space: ConfigSpace, options: object) -> SearchPolicy:
    """Instantiate the policy registered as ``name``."""
    return get(name).make_policy(space, options)
