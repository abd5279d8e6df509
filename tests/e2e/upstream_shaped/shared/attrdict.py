"""A stand-in for the ``attrdict`` package upstream dsat's examples imported (its last
release does not import on Python 3.10+): a dict whose keys read as attributes."""

from __future__ import annotations

from typing import Any


class AttrDict(dict[str, Any]):
    """``AttrDict({"lr": 0.1}).lr == 0.1``; a missing key raises ``AttributeError``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
