"""Search methods by CLI name. Adding a method is one module plus one entry here."""

from __future__ import annotations

from determined_dsat.methods.asha import AshaPolicy
from determined_dsat.methods.base import SearchPolicy
from determined_dsat.methods.binary import BinaryPolicy
from determined_dsat.methods.model_based import ModelPolicy
from determined_dsat.methods.random_search import RandomPolicy
from determined_dsat.settings import MethodOptions
from determined_dsat.space.config_space import ConfigSpace

POLICIES: dict[str, type[SearchPolicy]] = {
    BinaryPolicy.name: BinaryPolicy,
    RandomPolicy.name: RandomPolicy,
    AshaPolicy.name: AshaPolicy,
    ModelPolicy.name: ModelPolicy,
}


def make_policy(name: str, space: ConfigSpace, options: MethodOptions) -> SearchPolicy:
    """Instantiate the policy registered as ``name``."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown search method {name!r}; choose one of {sorted(POLICIES)}"
        ) from None
    return cls(space, options)  # type: ignore[arg-type]
