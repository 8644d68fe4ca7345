"""BatchNorm statistics: the forward hooks that read what enters every BN layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from recoverprune.pruning.batchnorm import bn_layers

__all__ = ["bn_statistics", "stat_distance", "tracked_bn"]


def tracked_bn(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that carry running statistics (what is matched).

    Example:
        >>> bns = nn.BatchNorm2d(2), nn.BatchNorm2d(2, track_running_stats=False)
        >>> len(tracked_bn(nn.Sequential(*bns)))
        1
    """
    return [m for m in bn_layers(model) if m.running_mean is not None]


def stat_distance(mean: Tensor, var: Tensor, module: nn.Module) -> Tensor:
    """DeepInversion's distance of a batch's per-channel ``mean``/``var`` from the running
    statistics of BatchNorm ``module``: ``‖μ − running_mean‖₂ + ‖σ² − running_var‖₂``.

    Example:
        >>> bn = nn.BatchNorm2d(2)
        >>> float(stat_distance(torch.zeros(2), torch.ones(2), bn))
        0.0
    """
    rm, rv = module.running_mean.float(), module.running_var.float()  # type: ignore[union-attr]
    return torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv)


def _bn_hook(
    module: nn.Module, inputs: tuple[Tensor, ...], _: Tensor, *, out: list[Tensor], weight: float
) -> None:
    x = inputs[0].float()
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
    loss = stat_distance(mean, var, module)
    out.append(loss * weight if weight != 1.0 else loss)


@contextmanager
def bn_statistics(model: nn.Module, first_multiplier: float = 1.0) -> Iterator[list[Tensor]]:
    """Collect DeepInversion's BN-statistics loss of every BatchNorm layer's input.

    Each forward pass appends one :func:`stat_distance` per layer to the yielded list (the
    first times ``first_multiplier``); clear it between passes. Hooks go on exit.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> with bn_statistics(net) as losses:
        ...     _ = net(torch.randn(2, 3, 8, 8))
        >>> len(losses), len(net[1]._forward_hooks)
        (1, 0)
    """
    losses: list[Tensor] = []
    handles = []
    try:
        for i, m in enumerate(tracked_bn(model)):
            w = first_multiplier if i == 0 else 1.0
            handles.append(m.register_forward_hook(partial(_bn_hook, out=losses, weight=w)))
        yield losses
    finally:
        for h in handles:
            h.remove()
