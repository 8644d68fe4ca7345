"""The calibration images pruning is given (images, or a function without arguments that
makes them): made on first use, once for every step of a sequence; read in any of three forms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Once", "images_of"]


class Once:
    """``data``, or what the zero-argument function ``data`` returns, made on first call.

    Example:
        >>> made = []
        >>> data = Once(lambda: made.append(1) or "images")
        >>> data.ready, data(), data(), made
        (False, 'images', 'images', [1])
    """

    def __init__(self, data: Any) -> None:
        self.data, self.ready = data, not callable(data) or isinstance(data, nn.Module)

    @classmethod
    def of(cls, data: Any) -> Once:
        """``data`` itself when it is a :class:`Once` already (shared by the steps)."""
        return data if isinstance(data, Once) else cls(data)

    def __call__(self) -> Any:
        if not self.ready:
            self.data, self.ready = self.data(), True
        return self.data


def images_of(data: Any) -> torch.Tensor | None:
    """The images of ``data`` (a tensor, an ``(images, labels)`` pair or a SyntheticImages).

    Example:
        >>> images_of((torch.zeros(4, 3, 2, 2), torch.zeros(4))).shape
        torch.Size([4, 3, 2, 2])
    """
    if data is None or isinstance(data, torch.Tensor):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0]
    return getattr(data, "images", None)
