"""CIFAR ResNets of He et al. (2016), section 4.2, with the parameter-free "option A" shortcut.

The definition reproduces the widely used one by Yerlan Idelbayev
(akamaster/pytorch_resnet_cifar10) module for module, so its released checkpoints (and the
teachers in ``../shared/teachers``) load with ``strict=True``:

====================  =======  ==========
model                 blocks   parameters
====================  =======  ==========
:func:`resnet20`      3        0.27 M
:func:`resnet32`      5        0.46 M
:func:`resnet44`      7        0.66 M
:func:`resnet56`      9        0.85 M
====================  =======  ==========
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recoverprune.models.config import attach_cfg
from recoverprune.models.resnet import BasicBlock

__all__ = ["CifarBasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56"]


class _ShortcutA(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the channels; no parameters.

    Args:
        pad: channels of zeros added on each side of the channel dimension.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"

    def as_conv(self, in_channels: int) -> nn.Conv2d:
        """The same map as a 1x1 stride-2 convolution, which channel pruning can narrow.

        ``out[pad + i] = x[i]``, zeros elsewhere (the channel-pruning protocol for a
        parameter-free module that changes the channel count).

        Example:
            >>> x = torch.randn(2, 4, 8, 8)
            >>> torch.equal(_ShortcutA(2).as_conv(4)(x), _ShortcutA(2)(x))
            True
        """
        out = in_channels + 2 * self.pad
        conv = nn.Conv2d(in_channels, out, 1, stride=2, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[torch.arange(in_channels) + self.pad, torch.arange(in_channels), 0, 0] = 1.0
        return conv


class CifarBasicBlock(BasicBlock):
    """Two 3x3 conv/BN layers plus an identity or option-A shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        changes_shape = stride != 1 or in_planes != planes
        shortcut = _ShortcutA(planes // 4) if changes_shape else nn.Identity()
        super().__init__(in_planes, planes, stride, shortcut=shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global pool, ``linear`` classifier.

    Args:
        num_blocks: BasicBlocks per stage (``n``), one entry per stage, e.g. ``(3, 3, 3)``.
        num_classes: outputs of the classifier.

    Example:
        >>> from recoverprune.models import resnet20
        >>> isinstance(resnet20(num_classes=7), CifarResNet), resnet20(num_classes=7).pretrained_cfg["num_classes"]
        (True, 7)
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _cifar_resnet(name: str, n: int, num_classes: int) -> CifarResNet:
    return attach_cfg(CifarResNet((n, n, n), num_classes), name, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> import torch
        >>> model = resnet20()
        >>> model.pretrained_cfg["input_size"]
        (3, 32, 32)
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return _cifar_resnet("resnet20", 3, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage, 0.46 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> sum(p.numel() for p in resnet32().parameters())
        464154
    """
    return _cifar_resnet("resnet32", 5, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage, 0.66 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> resnet44(num_classes=100).linear.out_features
        100
    """
    return _cifar_resnet("resnet44", 7, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, 0.85 M parameters).

    Args:
        num_classes: outputs of the classifier.

    Example:
        >>> len(resnet56().layer3)
        9
    """
    return _cifar_resnet("resnet56", 9, num_classes)
