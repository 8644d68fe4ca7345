"""Magnitude pruning on top of ``torch.nn.utils.prune``: its ``weight_orig * weight_mask``
re-parametrisation keeps pruned weights exactly zero after any optimiser step, ``deepcopy``,
``.to()``, ``state_dict`` round trip and ``torch.compile``."""

from __future__ import annotations

import copy
import fnmatch
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = ["UnstructuredConfig", "check_amount", "copy_model", "effective_weight", "finalize",
    "is_masked", "is_pruned", "magnitude_prune", "refresh_pruned", "reselect_masks",
    "restore_pruning"]


Scope = Literal["global", "layerwise"]


DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class UnstructuredConfig:
    """Unstructured L1-magnitude pruning, masks kept: ``prune(model, UnstructuredConfig(0.75))``
    (a plain float ``0.75`` is the same with the defaults).

    With ``scope="global"`` (the default, as in the paper) all selected weights compete:
    exactly ``round(amount * total)`` of the smallest ``|w|`` across every layer are
    zeroed, ties broken deterministically by position. With ``scope="layerwise"`` each
    layer loses ``round(amount * layer_size)`` of its own weights. ``amount`` is the
    resulting sparsity of the selected weights; pruning an already pruned model tightens
    its existing masks.

    Attributes:
        amount: fraction of the selected weights to remove, in ``[0, 1)``.
        scope: ``"global"`` or ``"layerwise"``.
        include: glob patterns of layer names that take part (default: all).
        layer_types: module types whose ``weight`` is pruned.

    Example:
        >>> UnstructuredConfig(0.5, scope="layerwise").include is None
        True
    """

    amount: float
    scope: Scope = "global"
    include: tuple[str, ...] | None = None
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if self.scope not in ("global", "layerwise"):
            raise ValueError(f"scope must be 'global' or 'layerwise', got {self.scope!r}")
        if isinstance(self.include, str):
            raise ValueError(f"include is a list of glob patterns, got {self.include!r}")
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))  # hashable
        object.__setattr__(self, "layer_types", tuple(self.layer_types))


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with, without relying on a forward having run."""
    if is_masked(module):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def _prunable(model: nn.Module, config: UnstructuredConfig, exclude: Sequence[str]) -> list[str]:
    """The names of the layers whose ``weight`` ``config`` prunes, ``exclude`` left dense;
    a pattern that matches no layer of ``config.layer_types`` is refused (listing them)."""
    include = config.include
    candidates = [n for n, m in model.named_modules() if isinstance(m, config.layer_types)]
    for pattern in [*(include or ()), *exclude]:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in candidates):
            names = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
            raise ValueError(
                f"include/exclude pattern {pattern!r} matches no prunable layer. "
                f"Patterns are fnmatch globs on module names; the prunable layers are: {names}"
            )
    return [
        n
        for n in candidates
        if (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]


def check_amount(amount: object) -> float:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a number in [0, 1), got {amount!r}")
    a = float(amount)
    if not (0.0 <= a < 1.0) or math.isnan(a):
        raise ValueError(
            f"amount is the fraction of weights to remove and must be in [0, 1), got {amount!r} "
            "(e.g. 0.75 removes three quarters)"
        )
    return a


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries; ties go to the lower flat index."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep[order[:k]] = False
    return keep.view_as(scores)


def _global_keep(weights: Sequence[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """Keep masks shaped like ``weights``: ``round(amount * total)`` smallest ``|w|`` of all go."""
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
    keep = _lowest_k(flat, round(amount * flat.numel()))
    parts = keep.split([w.numel() for w in weights])
    return [k.view_as(w) for k, w in zip(parts, weights, strict=True)]


def _detach_pruned_weight(module: nn.Module, inputs: object, output: object) -> None:
    """Forward hook: keep ``module.weight`` a leaf (``deepcopy``-able) between forward passes;
    the graph of the pass that just ran already holds the non-leaf one."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            name = hook._tensor_name
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                setattr(module, name, value.detach())


def _apply_mask(module: nn.Module, keep: torch.Tensor) -> None:
    mask = keep.to(dtype=module.weight.dtype if not is_masked(module) else module.weight_mask.dtype)
    if is_masked(module):
        module.weight_mask.mul_(mask)  # already pruned: tighten the existing mask in place
        module.weight = module.weight_orig * module.weight_mask
    else:
        torch_prune.custom_from_mask(module, "weight", mask)
    if not any(h is _detach_pruned_weight for h in module._forward_hooks.values()):
        module.register_forward_hook(_detach_pruned_weight)


def magnitude_prune(
    model: nn.Module, config: UnstructuredConfig, *, exclude: Sequence[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """Unstructured L1-magnitude pruning of Conv/Linear weights, masks kept: the handler of
    :class:`UnstructuredConfig` (whose docstring describes it); ``exclude`` keeps the
    matching layers dense, ``inplace`` prunes ``model`` itself instead of a deep copy.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruned = magnitude_prune(net, UnstructuredConfig(0.5))
        >>> int((pruned[0].weight == 0).sum() + (pruned[2].weight == 0).sum())
        60
    """
    a, types = config.amount, config.layer_types
    names = _prunable(model, config, exclude)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no prunable layer (looked for {[t.__name__ for t in types]}"
            f" weights, include={config.include}, exclude={list(exclude)}); pass a model with "
            "Conv/Linear layers or widen layer_types"
        )
    target = model if inplace else copy_model(model)
    target_layers = dict(target.named_modules())
    with torch.no_grad():
        weights = [effective_weight(target_layers[n]) for n in names]
        if config.scope == "global":
            keeps = _global_keep(weights, a)
        else:
            keeps = [_lowest_k(w.abs().float(), round(a * w.numel())) for w in weights]
        for name, keep in zip(names, keeps, strict=True):
            _apply_mask(target_layers[name], keep)
            if not keep.any():
                warnings.warn(
                    f"pruning at amount={a} removes every weight of layer {name!r}; the network "
                    "may stop carrying signal through it. Use a lower amount, scope='layerwise', "
                    f"or exclude={name!r}",
                    stacklevel=2,
                )
    return target


def is_pruned(model: nn.Module) -> bool:
    """True if any submodule carries a ``torch.nn.utils.prune`` mask.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> is_pruned(prune(nn.Linear(4, 4), 0.5)), is_pruned(nn.Linear(4, 4))
        (True, False)
    """
    return torch_prune.is_pruned(model)


@torch.no_grad()
def refresh_pruned(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` on every pruned module.

    The prune hook only does this at the start of a forward pass: call this after an
    optimiser step to read ``module.weight`` directly, or to ``deepcopy`` the model after a
    forward pass in grad mode (the result is a leaf tensor).
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works right after a forward pass of a pruned model."""
    refresh_pruned(model)
    return copy.deepcopy(model)


def finalize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Make pruning permanent: bake masks into plain ``weight`` parameters for export.

    The returned model has no ``weight_orig``/``weight_mask`` and no pruning hooks; its
    zeros are ordinary zeros (they will not stay zero under further training).

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> net = finalize(prune(nn.Linear(4, 4), 0.5))
        >>> sorted(net.state_dict()), int((net.weight == 0).sum())
        (['bias', 'weight'], 8)
    """
    target = model if inplace else copy_model(model)
    for module in target.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
        for key, hook in list(module._forward_hooks.items()):
            if hook is _detach_pruned_weight:
                del module._forward_hooks[key]
    return target


def restore_pruning(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Re-create mask re-parametrisation so a pruned ``state_dict`` loads with ``strict=True``.

    For every ``<module>.<name>_mask`` key whose module is not yet pruned, applies
    ``torch.nn.utils.prune.identity``; ``load_state_dict`` then fills the real masks.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> sd = prune(nn.Linear(4, 4), 0.5).state_dict()
        >>> fresh = nn.Linear(4, 4)
        >>> restore_pruning(fresh, sd)
        >>> _ = fresh.load_state_dict(sd)
        >>> int((fresh.weight_mask == 0).sum())
        8
    """
    modules = dict(model.named_modules())
    for key in state_dict:
        base = key.removesuffix("_mask")
        if base == key or f"{base}_orig" not in state_dict:
            continue
        mod_name, _, tensor = base.rpartition(".")
        module = modules.get(mod_name)
        if module is None or is_masked(module, tensor):
            continue
        if isinstance(getattr(module, tensor, None), nn.Parameter):
            torch_prune.identity(module, tensor)


@torch.no_grad()
def reselect_masks(model: nn.Module, amount: float) -> None:
    """Re-select the masks of every pruned layer by global magnitude at sparsity ``amount``.

    Used by gradual pruning: by ``|weight_orig|``, so masked weights may come back. Exactly
    ``round(amount * total)`` weights end up masked, ties broken by position.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> net = prune(nn.Linear(10, 10), 0.9)
        >>> reselect_masks(net, 0.3)
        >>> int((net.weight_mask == 0).sum())
        30
    """
    layers = [m for m in model.modules() if is_masked(m)]
    if not layers:
        return
    for m, keep in zip(layers, _global_keep([m.weight_orig for m in layers], amount), strict=True):
        m.weight_mask.copy_(keep)
    refresh_pruned(model)
