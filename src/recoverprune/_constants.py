"""Constants shared by several modules."""

from __future__ import annotations

#: Per-channel mean of the standard input normalisation (ImageNet's values, also used by the
#: shared CIFAR teachers, torchvision and timm).
DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel standard deviation matching :data:`DEFAULT_MEAN`.
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
