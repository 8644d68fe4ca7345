"""Image priors, the random view the teacher sees, and the competition term of DeepInversion's
loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["js_competition", "random_view", "total_variation"]


def total_variation(x: Tensor) -> tuple[Tensor, Tensor]:
    """(L1, L2) total variation of a batch, over horizontal, vertical and both diagonals.

    Example:
        >>> import torch
        >>> [float(t) for t in total_variation(torch.zeros(1, 3, 4, 4))]
        [0.0, 0.0]
    """
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4)) / x.shape[0]
    l1 = sum(d.abs().mean() for d in (d1, d2, d3, d4))
    return l1, l2  # type: ignore[return-value]


def random_view(x: Tensor, dx: int, dy: int, *, jitter: bool, flip: bool) -> Tensor:
    """The view of ``x`` the teacher sees at one step: rolled by ``(dx, dy)`` pixels when
    ``jitter``, mirrored left-right when ``flip``.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 1, 4)
        >>> random_view(x, 0, 1, jitter=True, flip=True).flatten().tolist()
        [2.0, 1.0, 0.0, 3.0]
    """
    view = torch.roll(x, shifts=(dx, dy), dims=(2, 3)) if jitter else x
    return torch.flip(view, dims=(3,)) if flip else view


def js_competition(student_logits: Tensor, teacher_logits: Tensor, t: float) -> Tensor:
    """ADI term: 1 − JS(student ‖ teacher), minimised to make them disagree."""
    p = F.softmax(student_logits.float() / t, dim=1).clamp(0.01, 0.99)
    q = F.softmax(teacher_logits.float() / t, dim=1).clamp(0.01, 0.99)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(
        q.log(), m, reduction="batchmean"
    )
    return 1.0 - js.clamp(0.0, 1.0)
