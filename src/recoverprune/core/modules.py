"""Module surgery by dotted name, written once for the whole package."""

from __future__ import annotations

from torch import nn

__all__ = ["set_submodule"]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` where ``model``'s submodule ``name`` (dotted) is; return the one replaced.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
        >>> old = set_submodule(net, "1.0", nn.Identity())
        >>> type(old).__name__, type(net[1][0]).__name__
        ('ReLU', 'Identity')
    """
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, attr)
    setattr(owner, attr, module)
    return old
