"""VGG-11 and VGG-16 with batch normalisation (Simonyan & Zisserman, 2015) for CIFAR.

Configurations 'A' and 'D', then one ``Linear(512, num_classes)``; module names follow
kuangliu/pytorch-cifar, whose checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from recoverprune.models.config import attach_cfg

__all__ = ["VGG", "vgg11_bn", "vgg16_bn"]

#: Channel counts per conv, ``"M"`` for a max-pool (configurations 'A' and 'D').
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BN for 32x32 inputs: ``config`` lists conv widths and ``"M"`` (max-pool),
    e.g. ``CONFIGS["D"]``.

    Example:
        >>> VGG([8, "M", 16, "M"], num_classes=3).classifier
        Linear(in_features=16, out_features=3, bias=True)
    """

    def __init__(self, config: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in config:
            if isinstance(v, str):  # "M"
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11_bn(num_classes: int = 10) -> VGG:
    """VGG-11 (configuration 'A') with BN for CIFAR (9.2 M parameters).

    Example:
        >>> vgg11_bn().classifier
        Linear(in_features=512, out_features=10, bias=True)
    """
    return attach_cfg(VGG(CONFIGS["A"], num_classes), "vgg11_bn", num_classes)


def vgg16_bn(num_classes: int = 10) -> VGG:
    """VGG-16 (configuration 'D') with BN for CIFAR (14.7 M parameters).

    Example:
        >>> sum(isinstance(m, torch.nn.Conv2d) for m in vgg16_bn().modules())
        13
    """
    return attach_cfg(VGG(CONFIGS["D"], num_classes), "vgg16_bn", num_classes)
