"""Model registry: names to constructors, and a checkpoint loader with helpful errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from recoverprune._constants import DEFAULT_MEAN, DEFAULT_STD

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "INPUT_SIZE",
    "attach_cfg",
    "create_model",
    "list_models",
    "load_model",
]

#: Per-channel mean the zoo's teachers were trained with (the ImageNet values, as used by
#: akamaster/pytorch_resnet_cifar10).
CIFAR_MEAN: tuple[float, float, float] = DEFAULT_MEAN
#: Per-channel standard deviation matching :data:`CIFAR_MEAN`.
CIFAR_STD: tuple[float, float, float] = DEFAULT_STD
#: ``(channels, height, width)`` of the zoo's inputs.
INPUT_SIZE: tuple[int, int, int] = (3, 32, 32)

M = TypeVar("M", bound=nn.Module)


def attach_cfg(model: M, name: str, num_classes: int) -> M:
    """Set the timm-style ``pretrained_cfg`` hint (input size, normalisation) on ``model``.

    Example:
        >>> from torch import nn
        >>> attach_cfg(nn.Linear(2, 3), "toy", 3).pretrained_cfg["architecture"]
        'toy'
    """
    model.pretrained_cfg = {
        "input_size": INPUT_SIZE,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "num_classes": num_classes,
        "architecture": name,
    }
    return model


def _entries() -> dict[str, tuple[Callable[[int], nn.Module], str]]:
    """Name -> (constructor, classifier attribute). Imported lazily: no import cycle."""
    from recoverprune.models import cifar_resnet, mobilenet, resnet, vgg

    return {
        "mobilenet_v2": (mobilenet.mobilenet_v2, "linear"),
        "resnet18": (resnet.resnet18, "linear"),
        "resnet20": (cifar_resnet.resnet20, "linear"),
        "resnet32": (cifar_resnet.resnet32, "linear"),
        "resnet34": (resnet.resnet34, "linear"),
        "resnet44": (cifar_resnet.resnet44, "linear"),
        "resnet50": (resnet.resnet50, "linear"),
        "resnet56": (cifar_resnet.resnet56, "linear"),
        "vgg11_bn": (vgg.vgg11_bn, "classifier"),
        "vgg16_bn": (vgg.vgg16_bn, "classifier"),
    }


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and :func:`load_model`, sorted.

    Example:
        >>> ", ".join(list_models()[:3])
        'mobilenet_v2, resnet18, resnet20'
    """
    return sorted(_entries())


def _entry(name: str) -> tuple[Callable[[int], nn.Module], str]:
    entries = _entries()
    if name not in entries:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return entries[name]


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a randomly initialised model from a zoo name or any model spec.

    Args:
        name: one of :func:`list_models`, or ``torchvision:NAME``, ``timm:NAME``,
            ``module:pkg.mod:factory`` (pretrained weights are never downloaded).
        num_classes: outputs of the classifier.

    Raises:
        ValueError: ``name`` is not a zoo model (the message lists the valid names).

    Example:
        >>> create_model("resnet20", num_classes=100).pretrained_cfg["num_classes"]
        100
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    from recoverprune._spec import build_model, parse_spec

    kind, target = parse_spec(name)
    if kind != "zoo":
        return build_model(name, num_classes)
    return _entry(target)[0](num_classes)


def _infer_num_classes(state_dict: Mapping[str, torch.Tensor], classifier: str) -> int | None:
    """Rows of the last 2-D ``<classifier>.weight`` (or ``.weight_orig`` when pruned)."""
    found = None
    for key, value in state_dict.items():
        if value.ndim == 2 and key.endswith((f"{classifier}.weight", f"{classifier}.weight_orig")):
            found = int(value.shape[0])
    return found


def _dense_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape with pruning re-parametrisation folded back (``weight_orig`` -> ``weight``)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") or key.endswith("num_batches_tracked"):
            continue
        out[key.removesuffix("_orig")] = tuple(value.shape)
    return out


def _matching_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Zoo models whose keys and shapes fit ``state_dict`` (classes inferred; built on meta)."""
    want = _dense_shapes(state_dict)
    matches = []
    for name, (fn, classifier) in sorted(_entries().items()):
        n = _infer_num_classes(state_dict, classifier) or 10
        with torch.device("meta"):
            have = _dense_shapes(fn(n).state_dict())
        if have == want:
            matches.append(name)
    return matches


def _fit_report(arch: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Describe how ``state_dict`` fails to fit ``model``; empty if it fits."""
    from recoverprune._spec import key_report

    keys = key_report(model.state_dict(), state_dict)
    if not keys:
        return ""
    guess = _matching_archs(state_dict)
    if arch in guess:
        n = _infer_num_classes(state_dict, _entry(arch)[1])
        hint = f"\nThe checkpoint fits {arch!r} with num_classes={n}: pass num_classes=None to infer it."
    else:
        looks = f"it looks like {' or '.join(guess)}; " if guess else ""
        hint = (
            f"\nIs the architecture right? Pass the arch the checkpoint was trained with "
            f"({looks}valid names: {', '.join(list_models())})."
        )
    return f"checkpoint does not fit {arch!r}:{keys}{hint}"


def load_model(
    arch: str,
    checkpoint: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``arch`` (a zoo name or any model spec) and load a checkpoint into it strictly.

    The checkpoint may be a plain state dict or a dict holding one under ``state_dict``,
    ``model``, ``student`` or ``model_state_dict``; ``module.``/``_orig_mod.`` prefixes are
    stripped. Pruned checkpoints (``<layer>.weight_orig`` + ``<layer>.weight_mask``) come
    back pruned, masks intact; channel-pruned ones (saved with a ``channel_spec``, see
    :func:`recoverprune.channel_spec`) come back at their smaller widths.

    Args:
        arch: one of :func:`list_models`, or ``torchvision:NAME``, ``timm:NAME``,
            ``module:pkg.mod:factory`` (a head replaced for N classes: ``num_classes=None``
            reads N from the checkpoint).
        checkpoint: path of a file written by ``torch.save``; loaded with ``weights_only=True``.
        num_classes: outputs of the classifier; ``None`` infers it from the checkpoint's
            classifier weight (10 if there is none).
        map_location: where the checkpoint tensors are deserialised. The model itself is
            built on the CPU; move it with ``.to()``.

    Returns:
        The model, in eval mode, with ``pretrained_cfg`` set (from the checkpoint's
        ``"input"`` entry when it has one).

    Raises:
        ValueError: unknown ``arch``.
        CheckpointError: the file is missing, is not a checkpoint, or does not fit ``arch``
            (the message names missing/unexpected keys and shape mismatches).

    Example:
        >>> import tempfile, torch
        >>> from recoverprune.models import resnet20
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save({"state_dict": resnet20(num_classes=7).state_dict()}, f"{d}/r20.pt")
        ...     model = load_model("resnet20", f"{d}/r20.pt")
        >>> model.linear.out_features, model.training
        (7, False)
    """
    from recoverprune._io import CheckpointError, extract_state_dict, load_checkpoint
    from recoverprune._prune import refresh_pruned, restore_pruning
    from recoverprune._spec import attach_saved_input, load_any, parse_spec

    kind, arch = parse_spec(arch)
    if kind != "zoo":
        return load_any(
            f"{kind}:{arch}", checkpoint, num_classes=num_classes, map_location=map_location
        )
    classifier = _entry(arch)[1]
    raw = load_checkpoint(checkpoint, map_location)
    state_dict = extract_state_dict(raw, str(checkpoint))
    if num_classes is None:
        num_classes = _infer_num_classes(state_dict, classifier) or 10
    model = create_model(arch, num_classes)
    spec = raw.get("channel_spec") if isinstance(raw, dict) else None
    if spec:  # channel-pruned: reshape to the recorded channel counts before loading
        from recoverprune._structured import apply_channel_spec

        apply_channel_spec(model, spec, state_dict)
    restore_pruning(model, state_dict)
    problem = _fit_report(arch, model, state_dict)
    if problem:
        raise CheckpointError(f"{checkpoint}: {problem}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # anything _fit_report did not foresee
        raise CheckpointError(f"{checkpoint}: checkpoint does not fit {arch!r}: {exc}") from exc
    refresh_pruned(model)
    attach_saved_input(model, raw)
    return model.eval()
