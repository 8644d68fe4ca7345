"""Measuring a network: multiply-accumulates per sample, and the example input to trace it on.

Used by channel pruning's budgets, block dropping, export and the command line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.spec import InputSpec

__all__ = ["count_macs", "example_input", "run_hooked"]


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of Conv/Linear layers, per sample.

    Runs ``example[:1]`` once in eval mode; the model's flags are restored afterwards.

    Example:
        >>> count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 4, 4))
        3456
    """
    total = [0]

    def hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        total[0] += out[0].numel() * m.weight[0].numel()  # per output: in/groups * k*k

    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    run_hooked(model, example[:1], handles)
    return total[0]


def run_hooked(model: nn.Module, x: torch.Tensor, handles: Iterable[Any]) -> None:
    """``model(x)`` once (eval mode, no autograd, flags restored), then ``handles`` removed.

    Example:
        >>> net, seen = nn.Linear(2, 2), []
        >>> run_hooked(net, torch.zeros(1, 2), [net.register_forward_hook(lambda *a: seen.append(1))])
        >>> seen, len(net._forward_hooks)
        ([1], 0)
    """
    try:
        with borrowed(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def example_input(model: nn.Module, spec: InputSpec | None = None) -> torch.Tensor:
    """One all-zero input of ``spec``'s shape (default: ``InputSpec.of(model)``), on the
    model's device and in its dtype.

    Raises:
        ValueError: the input size is unknown (pass an :class:`InputSpec` with a size).

    Example:
        >>> example_input(nn.Conv2d(1, 2, 3), InputSpec(channels=1, size=8)).shape
        torch.Size([1, 1, 8, 8])
    """
    p = next(model.parameters())
    shape = (spec or InputSpec.of(model)).shape
    return torch.zeros(1, *shape, device=p.device, dtype=p.dtype)
