"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 CIFAR inputs.

Width 1.0; as in kuangliu/pytorch-cifar, the stem and the 24-channel stage use stride 1,
so a 32x32 input reaches 4x4 before the 1280-channel 1x1 conv, pooling and ``linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from recoverprune.models.config import attach_cfg

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

#: (expansion t, output channels c, repeats n, stride s of the first block), CIFAR strides.
CIFAR_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch), *([nn.ReLU6()] if act else [])]


class InvertedResidual(nn.Module):
    """1x1 expansion by ``expand_ratio`` (none if 1), 3x3 depthwise with ``stride``, linear 1x1
    projection; residual when shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn(in_ch, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, out_ch, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, for 32x32 inputs: ``config`` rows ``(t, c, n, s)`` of
    inverted-residual stages, a ``linear`` classifier.

    Example:
        >>> MobileNetV2(num_classes=7, config=((1, 16, 1, 1),)).linear.out_features
        7
    """

    def __init__(
        self, num_classes: int = 10, config: tuple[tuple[int, int, int, int], ...] = CIFAR_CONFIG
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn(3, 32, 3, stride=1)
        in_ch = 32
        for t, c, n, s in config:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers += _conv_bn(in_ch, 1280, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 for CIFAR (2.24 M parameters with 10 classes).

    Example:
        >>> import torch
        >>> model = mobilenet_v2().eval()
        >>> model.features(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 1280, 4, 4])
    """
    return attach_cfg(MobileNetV2(num_classes), "mobilenet_v2", num_classes)
