"""The zoo's input description: the leaf every zoo architecture imports."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from recoverprune.core.spec import DEFAULT_MEAN, DEFAULT_STD

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "INPUT_SIZE", "attach_cfg"]


#: Per-channel mean the zoo's teachers were trained with (the ImageNet values, as used by
#: akamaster/pytorch_resnet_cifar10).
CIFAR_MEAN: tuple[float, float, float] = DEFAULT_MEAN


#: Per-channel standard deviation matching :data:`CIFAR_MEAN`.
CIFAR_STD: tuple[float, float, float] = DEFAULT_STD


#: ``(channels, height, width)`` of the zoo's inputs.
INPUT_SIZE: tuple[int, int, int] = (3, 32, 32)


M = TypeVar("M", bound=nn.Module)


def attach_cfg(model: M, name: str, num_classes: int) -> M:
    """Set the timm-style ``pretrained_cfg`` hint (input size, normalisation) on ``model``.

    Example:
        >>> from torch import nn
        >>> attach_cfg(nn.Linear(2, 3), "toy", 3).pretrained_cfg["architecture"]
        'toy'
    """
    model.pretrained_cfg = {
        "input_size": INPUT_SIZE,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "num_classes": num_classes,
        "architecture": name,
    }
    return model
