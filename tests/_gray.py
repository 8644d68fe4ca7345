"""A user's own 1-channel BatchNorm CNN, importable as ``module:_gray:gray_cnn`` in tests."""

from __future__ import annotations

from torch import nn

from _nets import tiny_bn_net


def gray_cnn(num_classes: int = 10) -> nn.Module:
    """conv-BN-ReLU twice on 1-channel (28x28) images, pooling and a linear head."""
    return tiny_bn_net(num_classes, in_channels=1)
