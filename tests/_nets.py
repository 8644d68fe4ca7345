"""Tiny BatchNorm networks the unit tests share (a helper module, not a test file)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_bn_net(
    num_classes: int = 4, in_channels: int = 3, widths: tuple[int, int] = (8, 8), seed: int = 0
) -> nn.Sequential:
    """conv-BN-ReLU twice, global pooling and a linear head; freshly initialised."""
    torch.manual_seed(seed)
    a, b = widths
    return nn.Sequential(
        nn.Conv2d(in_channels, a, 3, padding=1),
        nn.BatchNorm2d(a),
        nn.ReLU(),
        nn.Conv2d(a, b, 3, padding=1),
        nn.BatchNorm2d(b),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(b, num_classes),
    )


def calibrated(net: nn.Module, passes: int = 5, size: int = 8, in_channels: int = 3) -> nn.Module:
    """Give ``net`` BatchNorm running statistics from random batches; returns it in eval mode."""
    with torch.no_grad():
        net.train()
        for _ in range(passes):
            net(torch.randn(32, in_channels, size, size))
    return net.eval()
