"""The public :func:`prune`, the variant chosen by the type of its config; where DeepInversion
calibration images are made when a step asks and the caller gives none (:class:`Calibration`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from recoverprune.core.spec import InputSpec
from recoverprune.pruning import dispatch
from recoverprune.pruning.batchnorm import bn_layers
from recoverprune.pruning.measure import count_macs, example_input
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.inversion import synthesize

__all__ = ["Calibration", "calibration_source", "prune", "recalibration_budget"]


@dataclass(frozen=True)
class Calibration:
    """The DeepInversion images :func:`prune` makes when it is given no ``data=``.

    Attributes:
        images: images that score the blocks to drop and re-estimate BatchNorm statistics
            after channel pruning or block dropping. ``None`` (automatic): 64, fewer for
            models whose DeepInversion would cost more than a CIFAR ResNet-32's (see
            :func:`recalibration_budget`). Whether statistics are re-estimated at all is
            the configs' ``recalibrate``.
        iterations: DeepInversion steps for those images; ``None``: 50, fewer for such models.
        taylor_images: images for ``ChannelConfig(importance="taylor")`` (re-estimation then
            uses the same images).
        taylor_iterations: DeepInversion steps for those images.

    Example:
        >>> Calibration(images=16).taylor_images
        64
    """

    images: int | None = None
    iterations: int | None = None
    taylor_images: int = 64
    taylor_iterations: int = 100

    def __post_init__(self) -> None:
        for name, least, what in (
            ("images", 2, "images (BatchNorm statistics need 2)"),
            ("iterations", 1, "steps"),
            ("taylor_images", 1, "images"),
            ("taylor_iterations", 1, "steps"),
        ):
            value = getattr(self, name)
            if value is None and name in ("images", "iterations"):
                continue  # automatic
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a number of {what} >= {least}, got {value!r}")


def prune(
    model: nn.Module,
    how: Any,
    *,
    exclude: Sequence[str] = (),
    data: Any = None,
    calibration: Calibration | None = None,
    input: InputSpec | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Prune ``model`` the way ``how`` says: the type of the config picks the method.

    Args:
        model: a trained network. It is not modified unless ``inplace=True``.
        how: a float ``amount`` (global L1-magnitude masks on Conv/Linear weights, the same
            as ``UnstructuredConfig(amount)``); an :class:`UnstructuredConfig` (layerwise
            scope, include patterns, layer types); a :class:`ChannelConfig` (whole channels
            removed through a dependency graph: a smaller dense network); a
            :class:`BlockConfig` (whole residual blocks replaced by ``nn.Identity``: a
            shorter network); or a list of them, applied in order (after a BlockConfig, a
            ChannelConfig's ``speedup`` is relative to the shorter model, and the two MAC
            ratios multiply). Other types registered with
            :func:`recoverprune.pruning.dispatch.register` are accepted too.
        exclude: glob patterns of layer names to keep whole (dense, every channel), or of
            blocks to keep, e.g. ``["conv1", "linear"]``.
        data: images for Taylor channel importance, for scoring the blocks to drop and for
            re-estimating BatchNorm statistics (a tensor, an ``(images, labels)`` pair, a
            ``SyntheticImages``); default: DeepInversion images of the model, to
            ``calibration``'s budget, made only when a step needs them, once for all steps.
        calibration: the budget of those images (default ``Calibration()``).
        input: the model's input (default: ``InputSpec.of(model)``), for tracing and for
            the DeepInversion images.
        inplace: prune ``model`` itself instead of a deep copy (unstructured only).

    Returns:
        The pruned model (a deep copy unless ``inplace``), same mode and device.

    Raises:
        TypeError: ``how`` of no accepted type (the message names them).
        ValueError: a bad setting, no prunable layer or block, a budget out of reach, or
            a pattern that matches nothing.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from recoverprune import BlockConfig, ChannelConfig, channel_spec, prune, sparsity
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruned = prune(net, 0.5)
        >>> sparsity(pruned).zeros
        60
        >>> sparsity(net).zeros  # the input model is left as it was
        0

        Channels to 2x fewer MACs, one residual block dropped, or both (scored and
        re-estimated on the images given; without ``data=``, DeepInversion images of the
        model are made):

        >>> from recoverprune.models import resnet20
        >>> x = torch.randn(8, 3, 32, 32)
        >>> small = prune(resnet20(), ChannelConfig(speedup=2), data=x)
        >>> small.layer1[0].conv1.out_channels < 16
        True
        >>> short = prune(resnet20(), BlockConfig(drop=1), data=x)
        >>> stages = (short.layer1, short.layer2, short.layer3)
        >>> sum(isinstance(b, nn.Identity) for stage in stages for b in stage)
        1
        >>> both = prune(resnet20(), [BlockConfig(drop=1), ChannelConfig(speedup=1.25)], data=x)
        >>> spec = channel_spec(both)  # what load_model needs to rebuild it
        >>> len(spec["dropped_blocks"]), spec["kept"] is not None
        (1, True)
    """
    steps = dispatch.steps(how)  # every setting checked before any images are made
    spec = input if input is not None else InputSpec.of(model)
    if data is None:
        data = calibration_source(model, steps, calibration or Calibration(), spec)
    return dispatch.apply(model, steps, exclude=exclude, data=data, spec=spec, inplace=inplace)


#: first-BatchNorm weight of the DeepInversion images for re-estimating statistics
#: (measured on ResNet-20 at 2x fewer MACs: 42.2 % against 40.1 % with 1)
RECALIBRATION_FIRST_BN = 10.0

#: the automatic budget of those images while a model costs at most a CIFAR ResNet-32's
#: MACs per image (69 M, about half a CPU-minute); heavier ones get fewer, down to 16 x 10
RECALIBRATION_IMAGES, RECALIBRATION_STEPS = 64, 50
RECALIBRATION_MACS = 70_000_000
RECALIBRATION_FLOOR = (16, 10)


def recalibration_budget(
    model: nn.Module, calibration: Calibration, spec: InputSpec | None = None
) -> tuple[int, int]:
    """``(images, steps)`` of the DeepInversion images for BatchNorm re-estimation and for
    scoring the blocks to drop.

    Explicit values are kept; an automatic one (``None``) is 64 / 50 scaled by
    ``sqrt(RECALIBRATION_MACS / MACs per image)`` when below 1, never below 16 / 10.

    Example:
        >>> from recoverprune.models import resnet20
        >>> recalibration_budget(resnet20(), Calibration())
        (64, 50)
        >>> recalibration_budget(resnet20(), Calibration(iterations=7))
        (64, 7)
    """
    n, steps = calibration.images, calibration.iterations
    if n is not None and steps is not None:
        return n, steps
    macs = count_macs(model, example_input(model, spec))
    scale = min(1.0, RECALIBRATION_MACS / macs)
    if n is None:
        n = max(RECALIBRATION_FLOOR[0], round(RECALIBRATION_IMAGES * scale**0.5))
    if steps is None:
        steps = max(RECALIBRATION_FLOOR[1], round(RECALIBRATION_STEPS * scale**0.5))
    return n, steps


def calibration_source(
    model: nn.Module,
    steps: Sequence[Any],
    calibration: Calibration | None = None,
    spec: InputSpec | None = None,
) -> Callable[[], Any] | None:
    """A function making the DeepInversion images the pruning ``steps`` may ask for, or None.

    Block scoring, or BatchNorm re-estimation alone, takes :func:`recalibration_budget`
    images; else Taylor importance takes ``calibration``'s taylor budget. One set serves
    every step; ``None`` when no step needs images.

    Example:
        >>> from torch import nn
        >>> from recoverprune import ChannelConfig
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> calibration_source(net, [ChannelConfig()]) is None  # no BatchNorm: nothing to do
        True
    """
    calibration = calibration or Calibration()
    spec = spec or InputSpec.of(model)
    wanted = {getattr(s, "images_wanted", lambda: None)() for s in steps}
    statistics = "statistics" in wanted and "taylor" not in wanted and bn_layers(model)
    if "scoring" in wanted or statistics:
        n, iterations = recalibration_budget(model, calibration, spec)
        config = InversionConfig(iterations=iterations, first_bn_multiplier=RECALIBRATION_FIRST_BN)
    elif "taylor" in wanted:
        n, iterations = calibration.taylor_images, calibration.taylor_iterations
        config = InversionConfig(iterations=iterations)
    else:
        return None
    return lambda: synthesize(
        model, n, config=config, batch_size=min(n, 64), input=spec,
        device=next(model.parameters()).device, progress=False,
    )
