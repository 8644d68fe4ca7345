"""Which channels a channel-pruned model kept and which blocks a block-dropped one lost, as
plain data: saved beside the weights, applied to a freshly built model to load them back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from recoverprune.core.modules import set_submodule

__all__ = ["CONVERTED_ATTR", "DROPPED_ATTR", "KEPT_ATTR", "apply_channel_spec", "channel_spec",
    "dropped_blocks", "kept_channels"]


KEPT_ATTR = "recoverprune_kept_channels"
#: names of the blocks block dropping replaced by ``nn.Identity`` (``pruning.blocks``)
DROPPED_ATTR = "recoverprune_dropped_blocks"
CONVERTED_ATTR = "recoverprune_shortcut_convs"
_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features",
                "num_features")


def kept_channels(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Per pruned Conv/BN/Linear, the teacher's output-channel indices the model kept.

    ``None`` for a model that was not channel-pruned. Feature distillation maps a student
    feature ``s`` of layer ``name`` to the teacher's ``t[:, kept[name]]``.

    Example:
        >>> from recoverprune.models import resnet20
        >>> from recoverprune.pruning.channels import ChannelConfig, channel_prune
        >>> kept = kept_channels(channel_prune(resnet20(), ChannelConfig(amount=0.25)))
        >>> kept["layer1.0.bn1"].shape, kept_channels(resnet20()) is None
        (torch.Size([12]), True)
    """
    kept = getattr(model, KEPT_ATTR, None)
    return None if kept is None else dict(kept)


def dropped_blocks(model: nn.Module) -> list[str] | None:
    """Names of the blocks block dropping replaced by ``nn.Identity``, in module order.

    ``None`` for a model whose blocks were not dropped.

    Example:
        >>> dropped_blocks(nn.Linear(2, 2)) is None
        True
    """
    dropped = getattr(model, DROPPED_ATTR, None)
    return None if dropped is None else list(dropped)


# -- saving, loading, export ----------------------------------------------------------
def channel_spec(model: nn.Module) -> dict[str, Any] | None:
    """Per-layer channel counts and kept indices of a channel-pruned model, and the blocks a
    block-dropped model lost, as plain data.

    Saved next to the ``state_dict`` (``{"state_dict": ..., "channel_spec": ...}``) it lets
    :func:`recoverprune.models.load_model` rebuild the smaller model from its architecture
    with ``weights_only=True``. ``None`` for a model that was neither channel-pruned nor
    block-dropped (``"kept"`` is ``None`` for a model that was only block-dropped).

    Example:
        >>> from recoverprune.models import resnet20
        >>> from recoverprune.pruning.channels import ChannelConfig, channel_prune
        >>> spec = channel_spec(channel_prune(resnet20(), ChannelConfig(amount=0.5)))
        >>> spec["modules"].get("layer1.0.conv1").get("out_channels")
        8
    """
    kept, dropped = kept_channels(model), dropped_blocks(model)
    if kept is None and dropped is None:
        return None
    modules = {
        name: {a: int(getattr(m, a)) for a in _SHAPE_ATTRS if isinstance(getattr(m, a, None), int)}
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear | nn.modules.batchnorm._BatchNorm)
    }
    return {
        "format": 1,
        "modules": modules,
        "kept": None if kept is None else {n: v.tolist() for n, v in kept.items()},
        "shortcut_convs": list(getattr(model, CONVERTED_ATTR, [])),
        "dropped_blocks": dropped or [],
    }


def apply_channel_spec(
    model: nn.Module, spec: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Reshape a freshly built ``model`` in place to the recorded channel counts and blocks.

    The recorded dropped blocks become ``nn.Identity``; layer attributes come from
    ``spec``; every parameter and buffer takes the shape it has in ``state_dict`` (empty
    storage, filled by ``load_state_dict``).

    Example:
        >>> from recoverprune.models import resnet20
        >>> from recoverprune.pruning.channels import ChannelConfig, channel_prune
        >>> small = channel_prune(resnet20(), ChannelConfig(amount=0.5))
        >>> fresh = apply_channel_spec(resnet20(), channel_spec(small), small.state_dict())
        >>> fresh.load_state_dict(small.state_dict())
        <All keys matched successfully>
    """
    for name in spec.get("shortcut_convs", []):  # option-A shortcuts made 1x1 convolutions
        set_submodule(model, name, nn.Conv2d(1, 1, 1, stride=2, bias=False))
    setattr(model, CONVERTED_ATTR, list(spec.get("shortcut_convs", [])))
    modules = dict(model.named_modules())
    dropped = spec.get("dropped_blocks") or []
    for name in dropped:
        if name not in modules or not name:
            raise ValueError(f"channel spec drops block {name!r}, which the model does not have")
        set_submodule(model, name, nn.Identity())
    if dropped:
        setattr(model, DROPPED_ATTR, list(dropped))
        modules = dict(model.named_modules())
    for name, attrs in spec.get("modules", {}).items():
        if name not in modules:
            raise ValueError(f"channel spec names layer {name!r}, which the model does not have")
        for attr, value in attrs.items():
            setattr(modules[name], attr, int(value))
    for key, value in state_dict.items():
        if key.endswith("_mask"):
            continue
        mod_name, _, tensor = key.removesuffix("_orig").rpartition(".")
        module = modules.get(mod_name)
        current = getattr(module, tensor, None) if module is not None else None
        if isinstance(current, torch.Tensor) and current.shape != value.shape:
            fresh = torch.empty(value.shape, dtype=current.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                setattr(module, tensor, nn.Parameter(fresh, requires_grad=current.requires_grad))
            else:
                module._buffers[tensor] = fresh  # type: ignore[union-attr]
    kept = spec.get("kept", {})
    if kept is not None:
        setattr(model, KEPT_ATTR, {n: torch.tensor(v, dtype=torch.long) for n, v in kept.items()})
    return model
