"""Borrowing models for a stage: eval mode and frozen parameters, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["borrowed"]


# --------------------------------------------------------------------------- helpers
@contextmanager
def borrowed(*models: nn.Module | None) -> Iterator[None]:
    """Put models in eval mode with frozen parameters; restore every flag afterwards.

    The ``training`` flag of every submodule and the ``requires_grad`` flag of every
    parameter are snapshotted and restored in ``finally``, also on an exception.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with borrowed(net):
        ...     net.training, net[0].weight.requires_grad
        (False, False)
        >>> net.training, net[0].weight.requires_grad
        (True, True)
    """
    mods = [m for m in models if m is not None]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in mods]
    grads = [[(p, p.requires_grad) for p in m.parameters()] for m in mods]
    try:
        for m in mods:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for snapshot in modes:
            for sub, flag in snapshot:
                sub.training = flag
        for snapshot in grads:
            for p, flag in snapshot:
                p.requires_grad_(flag)
