"""CIFAR variants of ResNet-18/34/50 (He et al., 2016).

The ImageNet networks with a 3x3 stride-1 stem and no max-pool, so a 32x32 input reaches
the last stage at 4x4. Shortcuts that change shape are 1x1 conv + BN projections. Module
names follow the common kuangliu/pytorch-cifar definition (``conv1``, ``bn1``,
``layer1``-``layer4``, ``shortcut``, ``linear``), so its checkpoints load unchanged.
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
    """Two 3x3 conv/BN layers with a residual connection (ResNet-18/34).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the projection.
        shortcut: the residual branch; default identity, or a 1x1 conv + BN projection
            when the shape changes.
    """

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
    """1x1 reduce, 3x3, 1x1 expand (x4), each with BN, plus a residual (ResNet-50).

    Args:
        in_planes: input channels.
        planes: bottleneck width; the block outputs ``4 * planes`` channels.
        stride: stride of the 3x3 convolution and of the projection.
    """

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
    """ResNet for 32x32 inputs: 3x3 stem, four stages of widths 64/128/256/512.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: outputs of the ``linear`` classifier.

    Example:
        >>> from recoverprune.models import resnet18
        >>> isinstance(resnet18(num_classes=7), ResNet), resnet18(num_classes=7).pretrained_cfg["num_classes"]
        (True, 7)
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
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
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18 for CIFAR (11.2 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> resnet18().pretrained_cfg["input_size"]
        (3, 32, 32)
    """
    return attach_cfg(ResNet(BasicBlock, (2, 2, 2, 2), num_classes), "resnet18", num_classes)


def resnet34(num_classes: int = 10) -> ResNet:
    """ResNet-34 for CIFAR (21.3 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> model = resnet34()
        >>> [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)]
        [3, 4, 6, 3]
    """
    return attach_cfg(ResNet(BasicBlock, (3, 4, 6, 3), num_classes), "resnet34", num_classes)


def resnet50(num_classes: int = 10) -> ResNet:
    """ResNet-50 for CIFAR (23.5 M parameters), with Bottleneck blocks.

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> resnet50(num_classes=100).linear.in_features
        2048
    """
    return attach_cfg(ResNet(Bottleneck, (3, 4, 6, 3), num_classes), "resnet50", num_classes)
