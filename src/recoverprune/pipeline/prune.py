"""The public :func:`prune`: unstructured masks, channels removed through a dependency graph,
or whole residual blocks dropped.

The pruning layer never makes data; for data-driven channel importance, for choosing the
blocks to drop and for re-estimating BatchNorm statistics afterwards, this is where
DeepInversion images are made when the caller gives none (lazily: only once the pruning
layer asks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import nn

from recoverprune.pruning.blocks import BlockConfig, drop_blocks
from recoverprune.pruning.channels import ChannelConfig, channel_prune, count_macs, example_input
from recoverprune.pruning.masks import DEFAULT_LAYER_TYPES, Scope, magnitude_prune
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.inversion import synthesize

__all__ = ["calibration_source", "prune", "recalibration_budget"]


def prune(
    model: nn.Module,
    amount: float | None,
    *,
    scope: Scope = "global",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    inplace: bool = False,
    structure: Literal["unstructured", "channel", "block"] = "unstructured",
    channel: ChannelConfig | None = None,
    block: BlockConfig | None = None,
    data: Any = None,
) -> nn.Module:
    """Unstructured L1-magnitude pruning of Conv/Linear weights, masks kept; channel pruning;
    or block dropping.

    With ``scope="global"`` (the default, as in the paper) all selected weights compete:
    exactly ``round(amount * total)`` of the smallest ``|w|`` across every layer are
    zeroed, ties broken deterministically by position. With ``scope="layerwise"`` each
    layer loses ``round(amount * layer_size)`` of its own weights. ``amount`` is the
    resulting sparsity of the selected weights; pruning an already pruned model
    tightens its existing masks.

    Args:
        model: a trained network. It is not modified unless ``inplace=True``.
        amount: fraction of the selected weights to remove, in ``[0, 1)``; ``None`` for
            ``structure="block"`` (the block count or speed-up is in ``block``).
        scope: ``"global"`` or ``"layerwise"``.
        include: glob patterns of layer names that take part (default: all).
        exclude: glob patterns of layer names to keep dense, e.g. ``["conv1", "linear"]``.
        layer_types: module types whose ``weight`` is pruned.
        inplace: prune ``model`` itself instead of a deep copy.
        structure: ``"unstructured"`` (masks, the default) or ``"channel"``: remove whole
            output channels through a dependency graph, so the copy is a smaller dense
            network (needs ``pip install "recoverprune[channel]"``; ``amount`` is then the
            fraction of each prunable group's channels, ``scope``/``include``/``layer_types``/
            ``inplace`` do not apply; see :class:`ChannelConfig` and docs/channel-pruning.md);
            or ``"block"``: replace whole residual blocks by ``nn.Identity``, the least
            damaging first, so the copy is a shorter network (``exclude`` names blocks to
            keep; see :class:`BlockConfig`); with ``channel=`` as well, the channels of the
            remaining layers are then pruned to ``channel``'s budget (the two MAC ratios
            multiply; ``exclude`` keeps the named blocks and layers whole).
        channel: channel-pruning settings: importance, ``speedup=``/``target_macs=``
            budgets, protected layers, unstructured sparsity on what remains. With
            ``structure="block"``: the channel pruning that follows the block dropping
            (it needs ``speedup=`` or ``target_macs=``).
        block: block-dropping settings: ``drop=`` blocks or ``speedup=``, the images that
            score them, BatchNorm re-estimation (default ``BlockConfig()``: one block).
        data: images for data-driven channel importance (``importance="taylor"``), for
            scoring the blocks to drop, and for re-estimating BatchNorm statistics after
            channel pruning or block dropping; default: DeepInversion images of the model
            (``channel.calibration_images`` for Taylor, :func:`recalibration_budget` for
            the rest), made only when needed.

    Returns:
        The pruned model (a deep copy unless ``inplace``), same mode and device.

    Raises:
        TypeError, ValueError: bad ``amount``/``scope``, no prunable layer or block, a
            budget out of reach, or a pattern that matches nothing.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune, sparsity
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruned = prune(net, 0.5)
        >>> sparsity(pruned).zeros
        60
        >>> sparsity(net).zeros  # the input model is left as it was
        0

        Two residual blocks dropped, scored on the images given (without ``data=``,
        DeepInversion images of the model are made):

        >>> import torch
        >>> from recoverprune import BlockConfig
        >>> from recoverprune.models import resnet20
        >>> short = prune(resnet20(), None, structure="block", block=BlockConfig(drop=2),
        ...               data=torch.randn(8, 3, 32, 32))
        >>> stages = (short.layer1, short.layer2, short.layer3)
        >>> sum(isinstance(b, nn.Identity) for stage in stages for b in stage)
        2

        One block dropped, then the channels of the rest pruned to 1.25x fewer MACs:

        >>> from recoverprune import ChannelConfig, channel_spec
        >>> both = prune(resnet20(), None, structure="block", block=BlockConfig(drop=1),
        ...              channel=ChannelConfig(speedup=1.25), data=torch.randn(8, 3, 32, 32))
        >>> spec = channel_spec(both)  # what load_model needs to rebuild it
        >>> len(spec["dropped_blocks"]), spec["kept"] is not None
        (1, True)
    """
    if structure == "block":
        return _block_prune(model, amount, block or BlockConfig(), channel, exclude, data)
    if structure == "channel":
        cfg = channel or ChannelConfig()
        if data is None:
            data = calibration_source(model, cfg)
        return channel_prune(model, amount, cfg, exclude=exclude, data=data)
    if structure != "unstructured":
        raise ValueError(
            f"structure must be 'unstructured', 'channel' or 'block', got {structure!r}"
        )
    return magnitude_prune(
        model,
        amount,
        scope=scope,
        include=include,
        exclude=exclude,
        layer_types=layer_types,
        inplace=inplace,
    )


def _block_prune(
    model: nn.Module,
    amount: float | None,
    cfg: BlockConfig,
    channel: ChannelConfig | None,
    exclude: Sequence[str],
    data: Any,
) -> nn.Module:
    """Blocks dropped, then (with ``channel``) the channels of what remains pruned to
    ``channel``'s budget, both on the same images (settings checked before any images)."""
    if amount is not None:
        raise ValueError(
            f'structure="block" drops whole blocks and takes no amount (got {amount!r}): '
            "pass amount=None and block=BlockConfig(drop=N) or BlockConfig(speedup=X)"
        )
    budgets = (channel.speedup, channel.target_macs, channel.latency_speedup) if channel else ()
    if channel is not None and all(b is None for b in budgets):
        raise ValueError(
            'structure="block" with channel= also prunes the remaining channels, to a budget: '
            "give ChannelConfig(speedup=X) (X times fewer MACs than the block-dropped model) "
            "or latency_speedup=X"
        )
    if data is None:
        data = calibration_source(model, cfg)
    if channel is None:
        return drop_blocks(model, cfg, data, exclude=exclude)
    if callable(data) and not isinstance(data, nn.Module):
        data = data()  # made once: it scores the blocks and re-estimates both steps
    short = drop_blocks(model, cfg, data, exclude=exclude)
    return channel_prune(short, None, channel, exclude=exclude, data=data)


#: first-BatchNorm weight of the DeepInversion images for re-estimating statistics: the
#: first layer's statistics shape every later one (the reference ImageNet setting uses 10
#: too); measured on ResNet-20 at 2x fewer MACs, 64 images x 50 steps: 42.2 % against
#: 40.1 % with 1 (4,000 JPEG CIFAR-10 test images)
RECALIBRATION_FIRST_BN = 10.0


#: the automatic budget of those images: 64 images x 50 steps, as long as that costs at
#: most as many multiply-accumulates as for a CIFAR ResNet-32 (69 M per image): about
#: half a minute of one CPU core. Heavier models (an ImageNet ResNet-18 at 224x224: 1.8 G)
#: get fewer images and steps, down to 16 x 10; set both explicitly to pay for more.
RECALIBRATION_IMAGES, RECALIBRATION_STEPS = 64, 50
RECALIBRATION_MACS = 64 * 50 * 70_000_000
RECALIBRATION_FLOOR = (16, 10)


def recalibration_budget(model: nn.Module, cfg: ChannelConfig | BlockConfig) -> tuple[int, int]:
    """``(images, steps)`` of the DeepInversion images for BatchNorm re-estimation (and, for
    block dropping, for scoring the blocks).

    Explicit ``cfg.recalibrate_images`` / ``cfg.recalibrate_iterations`` (for a
    :class:`BlockConfig`: ``cfg.images`` / ``cfg.iterations``) are kept; an
    automatic one (``None``) is 64 / 50, both scaled by the square root of
    ``RECALIBRATION_MACS / (64 * 50 * MACs per image)`` when that is below 1, and never
    below 16 / 10.

    Example:
        >>> from recoverprune.models import resnet20
        >>> recalibration_budget(resnet20(), ChannelConfig())
        (64, 50)
        >>> recalibration_budget(resnet20(), ChannelConfig(recalibrate_iterations=7))
        (64, 7)
        >>> recalibration_budget(resnet20(), BlockConfig(images=16))
        (16, 50)
    """
    if isinstance(cfg, BlockConfig):
        n, steps = cfg.images, cfg.iterations
    else:
        n, steps = cfg.recalibrate_images, cfg.recalibrate_iterations
    if n is not None and steps is not None:
        return n, steps
    example = example_input(model, None, cfg.image_size)
    macs = count_macs(model, example)
    scale = min(1.0, RECALIBRATION_MACS / (RECALIBRATION_IMAGES * RECALIBRATION_STEPS * macs))
    if n is None:
        n = max(RECALIBRATION_FLOOR[0], round(RECALIBRATION_IMAGES * scale**0.5))
    if steps is None:
        steps = max(RECALIBRATION_FLOOR[1], round(RECALIBRATION_STEPS * scale**0.5))
    return n, steps


def calibration_source(
    model: nn.Module, cfg: ChannelConfig | BlockConfig
) -> Callable[[], Any] | None:
    """A function making the DeepInversion images channel pruning or block dropping may ask
    for, or None.

    Taylor importance takes ``cfg.calibration_images`` in ``cfg.calibration_iterations``
    steps, and BatchNorm re-estimation then uses the same images; re-estimation alone
    takes :func:`recalibration_budget` images and steps. ``None``
    when nothing needs images (magnitude importance, and no re-estimation or no
    BatchNorm layer to re-estimate). Block dropping always scores its blocks on
    :func:`recalibration_budget` images.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> calibration_source(net, ChannelConfig()) is None  # no BatchNorm: nothing to do
        True
    """
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if isinstance(cfg, BlockConfig):
        n, steps = recalibration_budget(model, cfg)
        config = InversionConfig(iterations=steps, first_bn_multiplier=RECALIBRATION_FIRST_BN)
    elif cfg.importance == "taylor":
        n, steps = cfg.calibration_images, cfg.calibration_iterations
        config = InversionConfig(iterations=steps)
    elif has_bn and cfg.recalibrate_images != 0:
        n, steps = recalibration_budget(model, cfg)
        config = InversionConfig(iterations=steps, first_bn_multiplier=RECALIBRATION_FIRST_BN)
    else:
        return None

    def make() -> Any:
        return synthesize(
            model,
            n,
            config=config,
            batch_size=min(n, 64),
            image_size=cfg.image_size,
            device=next(model.parameters()).device,
            progress=False,
        )

    return make
