"""The end-to-end benchmark's models, in plain torch, and their random training data.

Two shapes: ``gpt`` is the Core API example's GPT (``examples/core_api/model.py``, loaded
from that file so the benchmark trains exactly the example's model), activation-heavy
through its vocabulary-sized logits; ``mlp`` is a wide multilayer perceptron, whose memory
is mostly parameters and optimizer state. Data are drawn per optimizer step from a
generator seeded with the step and rank, so every run sees the same batches and nothing is
downloaded or held in memory.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_MODEL = REPO / "examples" / "core_api" / "model.py"
KINDS = ("gpt", "mlp")
GPT_DIMS = ("n_layer", "n_head", "d_model", "seq_len", "vocab_size")
MLP_DIMS = ("in_dim", "width", "depth", "classes")


def parse_dims(text: str) -> dict[str, int]:
    """``"a=1,b=2"`` as ``{"a": 1, "b": 2}`` (the script's ``--dims`` argument)."""
    dims: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ValueError(f"--dims: {item!r} is not NAME=INTEGER")
        dims[name.strip()] = int(value)
    return dims


def format_dims(dims: Mapping[str, int]) -> str:
    """The inverse of :func:`parse_dims`, in a stable order."""
    return ",".join(f"{name}={dims[name]}" for name in sorted(dims))


def _require(kind: str, dims: Mapping[str, int], names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in dims]
    if missing:
        raise ValueError(f"model {kind!r} needs --dims {', '.join(missing)}")


def _example_module() -> ModuleType:
    """``examples/core_api/model.py``, imported from its file (``examples`` is no package)."""
    name = "dsat_example_core_api_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_MODEL)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {EXAMPLE_MODEL}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class WideMLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with GELU, then a classifier head.

    ``forward(features, labels)`` returns the mean cross-entropy loss, so a DeepSpeed
    engine wrapping it returns the loss directly.
    """

    def __init__(self, in_dim: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.body(features)), labels)


def build_model(kind: str, dims: Mapping[str, int]) -> nn.Module:
    """A freshly initialised model of ``kind`` with the given sizes."""
    if kind == "gpt":
        _require(kind, dims, GPT_DIMS)
        example = _example_module()
        config = example.GPTConfig(**{name: int(dims[name]) for name in GPT_DIMS})
        model: nn.Module = example.GPT(config)
        return model
    if kind == "mlp":
        _require(kind, dims, MLP_DIMS)
        return WideMLP(**{name: int(dims[name]) for name in MLP_DIMS})
    raise ValueError(f"unknown model {kind!r}; one of {', '.join(KINDS)}")


def make_batch(
    kind: str, dims: Mapping[str, int], mbs: int, micro_step: int, rank: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch ``micro_step`` of ``rank``: ``mbs`` random samples of the model's inputs
    and targets (token ids for ``gpt``, features and class labels for ``mlp``)."""
    generator = torch.Generator().manual_seed(micro_step * 1_000_003 + rank)
    if kind == "gpt":
        tokens = torch.randint(dims["vocab_size"], (mbs, dims["seq_len"] + 1), generator=generator)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
    else:
        inputs = torch.randn(mbs, dims["in_dim"], generator=generator)
        targets = torch.randint(dims["classes"], (mbs,), generator=generator)
    return inputs.to(device), targets.to(device)


def num_params(model: nn.Module) -> int:
    """Parameters, a tied weight counted once."""
    return sum(p.numel() for p in model.parameters())
