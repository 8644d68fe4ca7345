"""Lending models to a stage, restored afterwards, also on an exception: :func:`borrowed`
(read only, the teacher: exactly as it was, flags and tensors) and :func:`placed` (trained
in place, the student: new values, back on its device and in its memory format)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

__all__ = ["Placement", "borrowed", "eval_mode", "keep_storage", "placed"]


class Placement(Protocol):
    """What moves a model for a stage (:class:`~recoverprune.core.runtime.Runtime`)."""

    def prepare_model(self, model: nn.Module) -> nn.Module: ...


def keep_storage(model: nn.Module) -> Callable[[], None]:
    """Snapshot the tensors of ``model``; the returned function puts them back (device,
    memory format and storage, which ``model.to(device)`` alone would not restore).

    Example:
        >>> net = nn.Conv2d(2, 2, 3)
        >>> restore, ptr = keep_storage(net), net.weight.data_ptr()
        >>> _ = net.to(memory_format=torch.channels_last); restore()
        >>> net.weight.data_ptr() == ptr, net.weight.is_contiguous()
        (True, True)
    """
    params = [(p, p.data, p.grad) for p in model.parameters()]
    buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]

    def restore() -> None:
        for p, data, grad in params:
            p.data = data
            p.grad = grad
        for m, k, b in buffers:
            m._buffers[k] = b

    return restore


@contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Models in eval mode; every submodule's ``training`` flag restored afterwards.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> net[1].eval()  # doctest: +ELLIPSIS
        Dropout(...)
        >>> with eval_mode(net, None):
        ...     net.training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(sub, sub.training) for m in models if m is not None for sub in m.modules()]
    try:
        for m in models:
            if m is not None:
                m.eval()
        yield
    finally:
        for sub, flag in modes:
            sub.training = flag


@contextmanager
def borrowed(*models: nn.Module | None, runtime: Placement | None = None) -> Iterator[None]:
    """Put models in eval mode with frozen parameters (on ``runtime``'s device and memory
    format when given); restore every flag and tensor afterwards. ``None`` is skipped.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with borrowed(net):
        ...     net.training, net[0].weight.requires_grad
        (False, False)
        >>> net.training, net[0].weight.requires_grad
        (True, True)
    """
    mods = [m for m in models if m is not None]
    grads = [(p, p.requires_grad) for m in mods for p in m.parameters()]
    restores = [keep_storage(m) for m in mods] if runtime is not None else []
    try:
        with eval_mode(*mods):
            for m in mods:
                for p in m.parameters():
                    p.requires_grad_(False)
                if runtime is not None:
                    runtime.prepare_model(m)
            yield
    finally:
        for restore in restores:
            restore()
        for p, flag in grads:
            p.requires_grad_(flag)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if last and not t.is_contiguous() else torch.contiguous_format


@contextmanager
def placed(model: nn.Module, runtime: Placement) -> Iterator[nn.Module]:
    """``model`` on ``runtime``'s device and memory format while it trains in place; afterwards
    its new values stay, on the device and in the memory format each tensor had before.

    Example:
        >>> from recoverprune.core.runtime import Accel, resolve
        >>> net = nn.Conv2d(2, 2, 3)
        >>> with placed(net, resolve("cpu", Accel(channels_last=True))):
        ...     _ = net.weight.data.mul_(0)
        >>> net.weight.is_contiguous(), float(net.weight.abs().sum())
        (True, 0.0)
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    where = {name: (t.device, _memory_format(t)) for name, t in tensors}
    runtime.prepare_model(model)
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            if name in where:
                device, fmt = where[name]
                p.data = p.data.to(device).contiguous(memory_format=fmt)
                if p.grad is not None:
                    p.grad = p.grad.to(device)
        for name, b in list(model.named_buffers()):
            if name in where:
                module_name, _, attr = name.rpartition(".")
                device, fmt = where[name]
                b = b.to(device).contiguous(memory_format=fmt)
                model.get_submodule(module_name)._buffers[attr] = b
