"""The benchmark families by name, and what each is for."""

from __future__ import annotations

from benchmarks.families import heldout, synthetic_family, tuning
from benchmarks.families.api import Family

FAMILIES: dict[str, Family] = {
    "tuning": tuning.FAMILY,
    "heldout": heldout.FAMILY,
    "synthetic": synthetic_family.FAMILY,
}
ROLES = {
    "tuning": "our methods are tuned on it",
    "heldout": "only reported on: written apart from our methods and from the tuning family",
    "synthetic": "the old landscapes, written with our own memory model, kept for continuity",
}


def family(name: str) -> Family:
    """The family called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None
