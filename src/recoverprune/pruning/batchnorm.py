"""BatchNorm running statistics, which pruning shifted, re-estimated on a few images given by
the caller (the pruning layer never makes data), weights untouched."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from recoverprune.core.borrow import eval_mode
from recoverprune.core.runtime import Runtime, resolve
from recoverprune.pruning.masks import refresh_pruned
from recoverprune.pruning.measure import run_hooked

__all__ = ["bn_layers", "recalibrate_bn", "shifted_bns"]


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``, in module order.

    Example:
        >>> len(bn_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())))
        1
    """
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, rt: Runtime | None = None,
    layers: Collection[str] | None = None,
) -> None:
    """Re-estimate ``model``'s BatchNorm running statistics on ``images`` (in place).

    Weights are not touched; the statistics become the exact average over ``images``.

    Args:
        model: the network; its modes are restored afterwards.
        images: the inputs (at least 2).
        batch_size: images per forward pass.
        rt: where to run (default: CPU).
        layers: names of the BatchNorm layers to re-estimate (default: all); the others
            keep their statistics and normalise with them during the passes.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> recalibrate_bn(net, torch.randn(64, 3, 8, 8) + 5)
        >>> bool(net[1].running_mean.abs().sum() > 0), net.training
        (True, False)
    """
    if len(images) < 2:
        n = len(images)
        raise ValueError(f"BatchNorm re-estimation needs at least 2 images, got {n}: give more")
    rt = rt or resolve("cpu")
    named = dict(model.named_modules())
    if layers is not None:
        unknown = sorted(set(layers) - set(named))
        if unknown:
            raise ValueError(f"recalibrate_bn: the model has no layer {unknown[0]!r}")
    chosen = None if layers is None else [named[n] for n in layers]
    bns = [bn for bn in bn_layers(model) if chosen is None or bn in chosen]
    momenta = [bn.momentum for bn in bns]
    with eval_mode(model):  # every module but the chosen BatchNorm layers; flags restored
        try:
            for bn in bns:
                if bn.track_running_stats:
                    bn.reset_running_stats()
                    bn.momentum = None  # cumulative average over every batch
                    bn.train()
            for start in range(0, len(images), batch_size):
                model(rt.prepare_input(images[start : start + batch_size]))
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
    refresh_pruned(model)


def _bn_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The input of every BatchNorm layer of ``model`` on ``x`` (eval mode, no grad)."""
    seen: dict[str, Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, i[0].detach().clone()))
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    run_hooked(model, x, handles)
    return seen


def shifted_bns(
    teacher: nn.Module, student: nn.Module, kept: Mapping[str, Tensor], probe: Tensor
) -> list[str]:
    """The student's BatchNorm layers whose input pruning changed, on ``probe``.

    A layer whose input is still the teacher's (at the channels it kept) keeps exact
    statistics; only the others need re-estimating. Layers the teacher does not have by
    name count as changed.

    Example:
        >>> teacher = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
        >>> shifted_bns(teacher, teacher, {}, torch.randn(2, 3, 4, 4))
        []
    """
    before, after = _bn_inputs(teacher, probe), _bn_inputs(student, probe)
    changed = []
    for name, x in after.items():
        t = before.get(name)
        if t is not None and name in kept:
            t = t.index_select(1, kept[name].to(t.device))
        same = t is not None and t.shape == x.shape
        if not (same and torch.allclose(x, t, rtol=1e-4, atol=1e-5 * float(t.abs().amax()) + 1e-7)):
            changed.append(name)
    return changed
