"""A classifier whose answers are known: importable as ``module:_labelnet:colour_reader``.

It reads class ``k`` from an image whose red level is ``STEP * k`` (inputs normalised with
mean 0, std 1), so its top-1 on a correctly labelled folder is exactly 100 %, and any label
shift shows as lost accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: red level of class k: STEP * k
STEP = 25


class ColourReader(nn.Module):
    """Predicts ``round(mean red * 255 / STEP)``; its linear layer only carries a checkpoint."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x[:, 0].mean(dim=(1, 2)) * 255 / STEP).round().long()
        hot = F.one_hot(level.clamp(0, self.num_classes - 1), self.num_classes).float()
        return 10 * hot + 0 * self.head.weight.sum()


def colour_reader(num_classes: int = 10) -> nn.Module:
    """The factory the ``module:`` spec calls."""
    return ColourReader(num_classes)
