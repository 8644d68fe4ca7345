"""The public :func:`prune`: unstructured masks, or channels removed through a dependency graph.

The pruning layer never makes data; for data-driven channel importance this is where
DeepInversion calibration images are made when the caller gives none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from recoverprune.pruning.channels import ChannelConfig, channel_prune
from recoverprune.pruning.masks import DEFAULT_LAYER_TYPES, Scope, magnitude_prune
from recoverprune.synthesis.inversion import synthesize

__all__ = ["prune"]


def prune(
    model: nn.Module,
    amount: float | None,
    *,
    scope: Scope = "global",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    inplace: bool = False,
    structure: Literal["unstructured", "channel"] = "unstructured",
    channel: ChannelConfig | None = None,
    data: Any = None,
) -> nn.Module:
    """Unstructured L1-magnitude pruning of Conv/Linear weights, masks kept; or channel pruning.

    With ``scope="global"`` (the default, as in the paper) all selected weights compete:
    exactly ``round(amount * total)`` of the smallest ``|w|`` across every layer are
    zeroed, ties broken deterministically by position. With ``scope="layerwise"`` each
    layer loses ``round(amount * layer_size)`` of its own weights. ``amount`` is the
    resulting sparsity of the selected weights; pruning an already pruned model
    tightens its existing masks.

    Args:
        model: a trained network. It is not modified unless ``inplace=True``.
        amount: fraction of the selected weights to remove, in ``[0, 1)``.
        scope: ``"global"`` or ``"layerwise"``.
        include: glob patterns of layer names that take part (default: all).
        exclude: glob patterns of layer names to keep dense, e.g. ``["conv1", "linear"]``.
        layer_types: module types whose ``weight`` is pruned.
        inplace: prune ``model`` itself instead of a deep copy.
        structure: ``"unstructured"`` (masks, the default) or ``"channel"``: remove whole
            output channels through a dependency graph, so the copy is a smaller dense
            network (needs ``pip install "recoverprune[channel]"``; ``amount`` is then the
            fraction of each prunable group's channels, ``scope``/``include``/``layer_types``/
            ``inplace`` do not apply; see :class:`ChannelConfig` and docs/channel-pruning.md).
        channel: channel-pruning settings: importance, ``speedup=``/``target_macs=``
            budgets, protected layers, unstructured sparsity on what remains.
        data: images for data-driven channel importance (``importance="taylor"``); default:
            ``channel.calibration_images`` DeepInversion images of the model.

    Returns:
        The pruned model (a deep copy unless ``inplace``), same mode and device.

    Raises:
        TypeError, ValueError: bad ``amount``/``scope``, no prunable layer, or a pattern
            that matches nothing.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune, sparsity
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruned = prune(net, 0.5)
        >>> sparsity(pruned).zeros
        60
        >>> sparsity(net).zeros  # the input model is left as it was
        0
    """
    if structure == "channel":
        cfg = channel or ChannelConfig()
        if cfg.importance == "taylor" and data is None:
            data = _calibration_images(model, cfg)
        return channel_prune(model, amount, cfg, exclude=exclude, data=data)
    if structure != "unstructured":
        raise ValueError(f"structure must be 'unstructured' or 'channel', got {structure!r}")
    return magnitude_prune(
        model,
        amount,
        scope=scope,
        include=include,
        exclude=exclude,
        layer_types=layer_types,
        inplace=inplace,
    )


def _calibration_images(model: nn.Module, cfg: ChannelConfig) -> Any:
    """DeepInversion images for Taylor importance (``cfg.calibration_images`` of them)."""
    n = cfg.calibration_images
    return synthesize(
        model,
        n,
        iterations=cfg.calibration_iterations,
        batch_size=min(n, 64),
        image_size=cfg.image_size,
        device=next(model.parameters()).device,
        progress=False,
    )
