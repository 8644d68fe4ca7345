"""Magnitude pruning on top of ``torch.nn.utils.prune``.

Masks use PyTorch's own re-parametrisation (``weight_orig`` parameter, ``weight_mask``
buffer, a forward pre-hook that computes ``weight = weight_orig * weight_mask``), so the
pruned weights are exactly zero after any optimiser step, ``deepcopy``, ``.to()``,
``state_dict`` round trip and ``torch.compile`` — and the lifecycle is the one PyTorch users
already know.
"""

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

__all__ = [
    "UnstructuredConfig",
    "check_amount",
    "copy_model",
    "effective_weight",
    "finalize",
    "is_masked",
    "is_pruned",
    "magnitude_prune",
    "prunable_layers",
    "refresh_pruned",
    "reselect_masks",
    "restore_pruning",
]


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

    def images_wanted(self) -> None:
        """Unstructured pruning needs no calibration images."""
        return None


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with, without relying on a forward having run."""
    if is_masked(module):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def prunable_layers(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
) -> dict[str, nn.Module]:
    """The layers whose ``weight`` :func:`prune` would prune, by qualified name.

    Args:
        model: the network.
        include: glob patterns (``fnmatch``) on module names; only matching layers take
            part. ``None`` means every layer of ``layer_types``.
        exclude: glob patterns of layers to leave dense (e.g. ``["conv1", "fc"]``).
        layer_types: module types that take part.

    Raises:
        ValueError: a pattern matches no layer of ``layer_types`` (the message lists them).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
        >>> list(prunable_layers(net, exclude=["3"]))
        ['0']
    """
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, layer_types)}
    for pattern in [*(include or ()), *exclude]:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in candidates):
            names = ", ".join(list(candidates)[:12]) + (" ..." if len(candidates) > 12 else "")
            raise ValueError(
                f"include/exclude pattern {pattern!r} matches no prunable layer. "
                f"Patterns are fnmatch globs on module names; the prunable layers are: {names}"
            )

    def keep(name: str) -> bool:
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in exclude)

    return {n: m for n, m in candidates.items() if keep(n)}


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


def _detach_pruned_weight(module: nn.Module, inputs: object, output: object) -> None:
    """Forward hook: keep ``module.weight`` a leaf between forward passes.

    The prune pre-hook sets ``weight = weight_orig * weight_mask``; in grad mode that is a
    non-leaf tensor, which ``copy.deepcopy`` refuses. The graph of the pass that just ran
    already holds it, so swapping the attribute for its detached value changes nothing for
    autograd and keeps the model copyable at any time.
    """
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            name = hook._tensor_name
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                setattr(module, name, value.detach())


def _ensure_detach_hook(module: nn.Module) -> None:
    if not any(h is _detach_pruned_weight for h in module._forward_hooks.values()):
        module.register_forward_hook(_detach_pruned_weight)


def _apply_mask(module: nn.Module, keep: torch.Tensor) -> None:
    mask = keep.to(dtype=module.weight.dtype if not is_masked(module) else module.weight_mask.dtype)
    if is_masked(module):
        module.weight_mask.mul_(mask)  # already pruned: tighten the existing mask in place
        module.weight = module.weight_orig * module.weight_mask
    else:
        torch_prune.custom_from_mask(module, "weight", mask)
    _ensure_detach_hook(module)


def magnitude_prune(
    model: nn.Module,
    config: UnstructuredConfig,
    *,
    exclude: Sequence[str] = (),
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
    layers = prunable_layers(model, include=config.include, exclude=exclude, layer_types=types)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no prunable layer (looked for {[t.__name__ for t in types]}"
            f" weights, include={config.include}, exclude={list(exclude)}); pass a model with "
            "Conv/Linear layers or widen layer_types"
        )
    target = model if inplace else copy_model(model)
    names = list(layers)
    target_layers = dict(target.named_modules())
    with torch.no_grad():
        weights = [effective_weight(target_layers[n]) for n in names]
        if config.scope == "global":
            flat = torch.cat([w.abs().reshape(-1).float() for w in weights])
            keep_flat = _lowest_k(flat, round(a * flat.numel()))
            keeps = list(torch.split(keep_flat, [w.numel() for w in weights]))
            keeps = [k.view_as(w) for k, w in zip(keeps, weights, strict=True)]
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


def refresh_pruned(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` on every pruned module.

    The prune hook only does this at the start of a forward pass; call this after an
    optimiser step if you read ``module.weight`` directly before the next forward. The
    result is computed without autograd, so it is a leaf tensor and the model can be
    ``copy.deepcopy``-ed again (a forward pass in grad mode leaves a non-leaf ``weight``
    that ``deepcopy`` refuses — a limitation of ``torch.nn.utils.prune``).
    """
    with torch.no_grad():
        _refresh(model)


def _refresh(model: nn.Module) -> None:
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
        if not key.endswith("_mask"):
            continue
        mod_name, _, tensor = key[: -len("_mask")].rpartition(".")
        module = modules.get(mod_name)
        if module is None or f"{mod_name + '.' if mod_name else ''}{tensor}_orig" not in state_dict:
            continue
        if not is_masked(module, tensor) and isinstance(
            getattr(module, tensor, None), nn.Parameter
        ):
            torch_prune.identity(module, tensor)


@torch.no_grad()
def reselect_masks(model: nn.Module, amount: float) -> None:
    """Re-select the masks of every pruned layer by global magnitude at sparsity ``amount``.

    Used by gradual pruning: the magnitudes are those of ``weight_orig`` (weights that
    were masked keep their last value and may come back). Exactly
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
    flat = torch.cat([m.weight_orig.detach().abs().reshape(-1).float() for m in layers])
    keep_flat = _lowest_k(flat, round(amount * flat.numel()))
    for m, keep in zip(
        layers, torch.split(keep_flat, [m.weight_orig.numel() for m in layers]), strict=True
    ):
        m.weight_mask.copy_(keep.view_as(m.weight_mask))
    _refresh(model)
