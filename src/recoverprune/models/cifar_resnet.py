"""CIFAR ResNets of He et al. (2016), section 4.2, with the parameter-free "option A" shortcut.

Module for module the definition of akamaster/pytorch_resnet_cifar10, so its released
checkpoints (and the teachers in ``../shared/teachers``) load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recoverprune.models.config import attach_cfg
from recoverprune.models.resnet import BasicBlock, ResNet

__all__ = ["CifarBasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56"]


class _ShortcutA(nn.Module):
    """Option A shortcut: subsample by 2 and add ``pad`` zero channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"

    def as_conv(self, in_channels: int) -> nn.Conv2d:
        """The same map as a 1x1 stride-2 convolution (``out[pad + i] = x[i]``), which channel
        pruning can narrow (its protocol for a parameter-free module changing the width).

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
    """A :class:`BasicBlock` with an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        changes_shape = stride != 1 or in_planes != planes
        shortcut = _ShortcutA(planes // 4) if changes_shape else nn.Identity()
        super().__init__(in_planes, planes, stride, shortcut=shortcut)


class CifarResNet(ResNet):
    """ResNet-(6n+2) for 32x32 inputs: widths 16/32/64, global pool, ``linear`` classifier.

    Args:
        num_blocks: BasicBlocks per stage (``n``), one entry per stage, e.g. ``(3, 3, 3)``.
        num_classes: outputs of the classifier.

    Example:
        >>> CifarResNet((1, 1, 1), num_classes=7).linear
        Linear(in_features=64, out_features=7, bias=True)
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__(CifarBasicBlock, num_blocks, num_classes, widths=(16, 32, 64))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)


def _cifar_resnet(name: str, n: int, num_classes: int) -> CifarResNet:
    return attach_cfg(CifarResNet((n, n, n), num_classes), name, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27 M parameters).

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

    Example:
        >>> sum(p.numel() for p in resnet32().parameters())
        464154
    """
    return _cifar_resnet("resnet32", 5, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage, 0.66 M parameters).

    Example:
        >>> resnet44(num_classes=100).linear.out_features
        100
    """
    return _cifar_resnet("resnet44", 7, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, 0.85 M parameters).

    Example:
        >>> len(resnet56().layer3)
        9
    """
    return _cifar_resnet("resnet56", 9, num_classes)
