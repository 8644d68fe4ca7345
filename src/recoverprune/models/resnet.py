"""CIFAR variants of ResNet-18/34/50 (He et al., 2016).

A 3x3 stride-1 stem and no max-pool (32x32 reaches the last stage at 4x4); module names
follow kuangliu/pytorch-cifar, whose checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recoverprune.models.config import attach_cfg

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else a 1x1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers (``in_planes`` -> ``planes``, the first with ``stride``) and a
    residual ``shortcut`` (default: identity, or a 1x1 conv + BN projection if the shape
    changes) (ResNet-18/34)."""

    expansion: int = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut if shortcut is not None else _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce to ``planes``, 3x3 (with ``stride``), 1x1 expand to ``4 * planes``, each
    with BN, plus a residual (ResNet-50)."""

    expansion: int = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, one stage per width (64/128/256/512 by default).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: outputs of the ``linear`` classifier.
        widths: channels of the stages ``layer1``, ``layer2``, ...; every stage after the
            first halves the resolution.

    Example:
        >>> len(ResNet(BasicBlock, (1, 2), widths=(8, 16)).layer2)
        2
    """

    def __init__(
        self, block: type[BasicBlock | Bottleneck], num_blocks: tuple[int, ...],
        num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.in_planes, self.stages = widths[0], len(widths)
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks, strict=True)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, 2 if i else 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1] * block.expansion, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            out = getattr(self, f"layer{i}")(out)
        return self.linear(torch.flatten(self.avgpool(out), 1))


def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18 for CIFAR (11.2 M parameters).

    Example:
        >>> resnet18().pretrained_cfg["input_size"]
        (3, 32, 32)
    """
    return attach_cfg(ResNet(BasicBlock, (2, 2, 2, 2), num_classes), "resnet18", num_classes)


def resnet34(num_classes: int = 10) -> ResNet:
    """ResNet-34 for CIFAR (21.3 M parameters).

    Example:
        >>> model = resnet34()
        >>> [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)]
        [3, 4, 6, 3]
    """
    return attach_cfg(ResNet(BasicBlock, (3, 4, 6, 3), num_classes), "resnet34", num_classes)


def resnet50(num_classes: int = 10) -> ResNet:
    """ResNet-50 for CIFAR (23.5 M parameters), with Bottleneck blocks.

    Example:
        >>> resnet50(num_classes=100).linear.in_features
        2048
    """
    return attach_cfg(ResNet(Bottleneck, (3, 4, 6, 3), num_classes), "resnet50", num_classes)
