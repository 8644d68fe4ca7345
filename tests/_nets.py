"""Tiny BatchNorm networks the unit tests share (a helper module, not a test file)."""

from __future__ import annotations

from typing import Any

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


def bn_resnet(model: nn.Module, seed: int | None = 0) -> nn.Module:
    """Random BatchNorm affine weights and statistics from two 32-px batches, in eval mode
    (``seed=None``: the caller has seeded)."""
    if seed is not None:
        torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def sharp_teacher(num_classes: int = 4) -> nn.Module:
    """A tiny 'trained' teacher: BN statistics from data, confident (sharp) outputs."""
    t = calibrated(tiny_bn_net(num_classes, widths=(8, 16)))
    with torch.no_grad():
        t[-1].weight.mul_(20.0)
    return t


def random_synthetic(n: int = 64, seed: int = 1, num_classes: int = 4, size: int = 8) -> Any:
    """``n`` random 3 x ``size`` x ``size`` 'synthetic' images with random labels."""
    from recoverprune import SyntheticImages

    g = torch.Generator().manual_seed(seed)
    return SyntheticImages(
        torch.randn(n, 3, size, size, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    )


def gaussian_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal 3-channel images, ``size`` square, reproducible by ``seed``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
