"""A small ResNet-style CNN and a random image data set, in plain torch.

Stands in for the torchvision models of upstream dsat's examples (torchvision from
PyPI does not import with the CPU build of torch used here). Shipped into each trial
with ``--include``.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (He et al., arXiv:1512.03385)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A stem, one block per width in ``widths`` (each halving the resolution after the
    first), global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks = []
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(widths[max(0, i - 1)], width, 1 if i == 0 else 2))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))


def build_model(name: str) -> nn.Module:
    """The model an experiment's ``model_name`` hyperparameter names."""
    models = {"tiny_resnet": TinyResNet, "tiny_resnet_wide": lambda: TinyResNet(10, (16, 32, 64))}
    if name not in models:
        raise ValueError(f"unknown model_name {name!r}; choose one of {sorted(models)}")
    return models[name]()


class RandomImages(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``distinct`` random 3 x ``size`` x ``size`` images with labels, repeated to look like
    a data set of ``length`` samples (so no epoch ends during a short trial)."""

    def __init__(self, distinct: int = 64, size: int = 32, length: int = 10**6) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(distinct, 3, size, size, generator=generator)
        self.labels = torch.randint(10, (distinct,), generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = index % len(self.labels)
        return self.images[i], self.labels[i]
