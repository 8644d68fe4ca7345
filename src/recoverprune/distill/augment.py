"""Batch transforms of distillation: black-padded crops, flips, MixUp and CutMix."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recoverprune.distill.config import MixMode

__all__ = ["augment", "mix"]


def augment(
    x: Tensor, g: torch.Generator, padding: int = 4, flip: bool = True,
    fill: Sequence[float] | None = None,
) -> Tensor:
    """Per-image random crop (after padding) and horizontal flip of a batch.

    ``fill``: the padding's per-channel value (e.g. ``-mean / std``, black), default 0.

    Example:
        >>> import torch
        >>> augment(torch.randn(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    b, c, h, w = x.shape
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        padded = F.pad(x, (padding, padding, padding, padding))
        if fill is not None:
            border = torch.ones_like(padded[:1, :1])
            border[..., padding : padding + h, padding : padding + w] = 0
            value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
            padded = padded + border * value
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=g) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def mix(x: Tensor, g: torch.Generator, mode: MixMode) -> Tensor:
    """Mix each image with another of the batch (mixup: blend; cutmix: paste a box).

    The ratio is uniform in [0, 1] per batch; the teacher's logits are the target.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, 8, 8)
        >>> mix(x, torch.Generator().manual_seed(0), "cutmix").shape
        torch.Size([4, 3, 8, 8])
    """
    if mode == "none":
        return x
    perm = torch.randperm(len(x), generator=g).to(x.device)
    lam = float(torch.rand((), generator=g))
    if mode == "mixup":
        return lam * x + (1 - lam) * x[perm]
    h, w = x.shape[-2:]
    bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    top = int(torch.randint(0, h - bh + 1, (), generator=g))
    left = int(torch.randint(0, w - bw + 1, (), generator=g))
    out = x.clone()
    out[..., top : top + bh, left : left + bw] = x[perm][..., top : top + bh, left : left + bw]
    return out

