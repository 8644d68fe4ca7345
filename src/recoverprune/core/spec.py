"""Input descriptions: what a classifier eats (channels, size, normalisation).

:class:`InputSpec` travels with the model as a timm-style ``pretrained_cfg`` hint and is
stored in every checkpoint, manifest and report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["InputSpec", "per_channel"]


#: Per-channel mean of the standard input normalisation (ImageNet's values, also used by the
#: shared CIFAR teachers, torchvision and timm).
DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


#: Per-channel standard deviation matching :data:`DEFAULT_MEAN`.
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def per_channel(
    values: float | Sequence[float] | None, channels: int, name: str = "mean"
) -> tuple[float, ...] | None:
    """``values`` as one float per channel: a single value is repeated, ``None`` stays.

    Raises:
        ValueError: neither one value nor one per channel.

    Example:
        >>> per_channel(0.5, 3), per_channel([0.1, 0.2, 0.3], 3)
        ((0.5, 0.5, 0.5), (0.1, 0.2, 0.3))
    """
    if values is None:
        return None
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(
            f"{name} has {len(vals)} values but the input has {channels} channel(s): give one "
            f"value, or one per channel"
        )
    return vals


def _model_cfg(model: nn.Module) -> dict[str, Any]:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            return cfg
    return {}


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


@dataclass(frozen=True)
class InputSpec:
    """What a classifier eats: channels, image size and the normalisation it was trained with.

    ``size`` is ``(H, W)`` or an int (square); ``mean``/``std`` one value or one per
    channel (ImageNet's by default for 3 channels); ``None``: unknown.

    Example:
        >>> spec = InputSpec(channels=1, size=28, mean=0.286, std=0.353)
        >>> spec.shape, spec.mean
        ((1, 28, 28), (0.286,))
        >>> InputSpec.from_dict(spec.to_dict()) == spec
        True
    """

    channels: int = 3
    size: tuple[int, int] | int | None = None
    mean: tuple[float, ...] | float | None = None
    std: tuple[float, ...] | float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ValueError(f"channels must be a positive int, got {self.channels!r}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        size = (self.size, self.size) if isinstance(self.size, int) else self.size
        if size is not None:
            size = tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be a positive int or (H, W), got {self.size!r}")
        mean = per_channel(self.mean, self.channels, "mean")
        std = per_channel(self.std, self.channels, "std")
        if mean is None and std is None and self.channels == 3:
            mean, std = DEFAULT_MEAN, DEFAULT_STD
        for name, vals in (("mean", mean), ("std", std)):
            if vals is not None and not all(math.isfinite(v) for v in vals):
                raise ValueError(
                    f"{name} must be finite numbers, got {vals}: pass the normalisation the "
                    "model was trained with (--mean/--std), e.g. 0.485 0.456 0.406 and "
                    "0.229 0.224 0.225 for ImageNet-style RGB"
                )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        *,
        image_size: int | Sequence[int] | None = None,
        channels: int | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> InputSpec:
        """The input of ``model``: the arguments given, else its ``pretrained_cfg`` hint,
        else channels from the first ``Conv2d`` (size and a non-RGB normalisation unknown).

        Example:
            >>> from torch import nn
            >>> InputSpec.of(nn.Conv2d(1, 4, 3), image_size=28, mean=0.5, std=0.25).shape
            (1, 28, 28)
        """
        cfg = _model_cfg(model)
        hinted = cfg.get("input_size")
        c = channels or (int(hinted[0]) if hinted else None) or _first_conv_channels(model) or 3
        size = image_size if image_size is not None else (tuple(hinted[1:]) if hinted else None)
        if mean is None and std is None and cfg.get("mean") is not None:
            hint_mean, hint_std = cfg.get("mean"), cfg.get("std")
            if len(tuple(hint_mean)) in (1, c):  # a hint for other channels does not apply
                mean, std = hint_mean, hint_std
        return cls(channels=c, size=size, mean=mean, std=std)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``; ``ValueError`` when the size is unknown."""
        if self.size is None:
            raise ValueError(
                "the input image size is unknown: pass image_size (--image-size), e.g. 32 for "
                "CIFAR, 28 for MNIST-like data, 224 for ImageNet models"
            )
        h, w = self.size  # type: ignore[misc]
        return self.channels, h, w

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``; ``ValueError`` when unknown (a non-RGB input without them)."""
        if self.mean is None or self.std is None:
            raise ValueError(
                f"the normalisation of this {self.channels}-channel input is unknown: pass mean "
                "and std (--mean/--std), one value or one per channel, the values the model "
                "was trained with (e.g. mean=0.286, std=0.353 for Fashion-MNIST)"
            )
        return self.mean, self.std  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as stored in checkpoints, manifests and reports."""
        lists = {k: getattr(self, k) for k in ("size", "mean", "std")}
        return {"channels": self.channels, **{k: v and list(v) for k, v in lists.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["channels"]), d.get("size"), d.get("mean"), d.get("std"))

    def attach(self, model: nn.Module) -> nn.Module:
        """Record this spec as ``model.pretrained_cfg`` (a new dict; other keys are kept).

        Every stage (``synthesize``, ``evaluate``, ``recover(val_data=...)``) reads it.

        Example:
            >>> from torch import nn
            >>> net = InputSpec(1, 28, 0.5, 0.25).attach(nn.Conv2d(1, 2, 3))
            >>> net.pretrained_cfg["input_size"]
            (1, 28, 28)
        """
        cfg = dict(_model_cfg(model))
        new = {"input_size": self.size and self.shape, "mean": self.mean, "std": self.std}
        for key, value in new.items():
            cfg.pop(key, None)
            if value is not None:
                cfg[key] = value
        model.pretrained_cfg = cfg
        return model

