"""Sanity checks of a model's weights before any compute."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_finite"]


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise ``ValueError`` naming the parameters/buffers of ``model`` holding NaN or Inf.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> check_finite(net)
        >>> with torch.no_grad():
        ...     net.bias[0] = float("nan")
        >>> check_finite(net, "teacher")
        Traceback (most recent call last):
        ...
        ValueError: the teacher holds NaN/Inf values in bias; it cannot be pruned, inverted or distilled. Retrain it or load a checkpoint saved before the values diverged.
    """
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the {what} holds NaN/Inf values in {names}; it cannot be pruned, inverted or "
            "distilled. Retrain it or load a checkpoint saved before the values diverged."
        )
