"""The one checkpoint loader: a model built from a spec (or given), its saved channel
widths, pruning masks and input description restored, the weights loaded strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from recoverprune.core.io import CheckpointError, extract_state_dict, load_checkpoint
from recoverprune.core.spec import InputSpec
from recoverprune.models.builders import build_model, create_model, infer_num_classes, parse_spec
from recoverprune.models.registry import list_models, matching_archs, zoo_entry, zoo_num_classes
from recoverprune.pruning.channel_spec import apply_channel_spec
from recoverprune.pruning.masks import refresh_pruned, restore_pruning

__all__ = ["key_report", "load_any", "load_model"]


def key_report(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any]) -> str:
    """Missing keys, unexpected keys and shape mismatches of ``state_dict``; empty if it fits.

    Example:
        >>> from torch import nn
        >>> key_report(nn.Linear(2, 3).state_dict(), {"weight": torch.zeros(3, 2), "w2": 0})
        '\\n  missing keys (1): bias\\n  unexpected keys (1): w2'
    """
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and hasattr(v, "shape") and v.shape != expected[k].shape
    ]

    def listing(label: str, items: list[str]) -> str:
        more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
        return f"\n  {label} ({len(items)}): {', '.join(items[:8])}{more}" if items else ""

    return (
        listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("shape mismatches", shapes)
    )


def load_any(
    spec: str,
    checkpoint: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``spec`` and load a checkpoint into it strictly (non-zoo specs; see ``load_model``).

    Raises:
        CheckpointError: the checkpoint does not fit (missing/unexpected keys named).
    """

    raw = load_checkpoint(checkpoint, map_location)
    state_dict = extract_state_dict(raw, str(checkpoint))
    if num_classes is None:
        num_classes = infer_num_classes(spec, state_dict)
    model = build_model(spec, num_classes)
    restore_pruning(model, state_dict)
    problem = key_report(model.state_dict(), state_dict)
    if problem:
        n = infer_num_classes(spec, state_dict)
        hint = (
            f"\nThe head has {n} outputs in the checkpoint: pass num_classes={n} (--num-classes)."
            if n is not None and n != num_classes
            else "\nIs the spec right, and was the head replaced the way this constructor builds it?"
        )
        raise CheckpointError(f"{checkpoint}: checkpoint does not fit {spec!r}:{problem}{hint}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: checkpoint does not fit {spec!r}: {exc}") from exc
    refresh_pruned(model)
    attach_saved_input(model, raw)
    return model.eval()


def attach_saved_input(model: nn.Module, checkpoint: Any) -> None:
    """Attach the :class:`InputSpec` a checkpoint was saved with (its ``"input"`` entry)."""
    saved = checkpoint.get("input") if isinstance(checkpoint, Mapping) else None
    if isinstance(saved, Mapping):
        InputSpec.from_dict(saved).attach(model)


def _fit_report(arch: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Describe how ``state_dict`` fails to fit ``model``; empty if it fits."""

    keys = key_report(model.state_dict(), state_dict)
    if not keys:
        return ""
    guess = matching_archs(state_dict)
    if arch in guess:
        n = zoo_num_classes(state_dict, zoo_entry(arch)[1])
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

    kind, arch = parse_spec(arch)
    if kind != "zoo":
        return load_any(
            f"{kind}:{arch}", checkpoint, num_classes=num_classes, map_location=map_location
        )
    classifier = zoo_entry(arch)[1]
    raw = load_checkpoint(checkpoint, map_location)
    state_dict = extract_state_dict(raw, str(checkpoint))
    if num_classes is None:
        num_classes = zoo_num_classes(state_dict, classifier) or 10
    model = create_model(arch, num_classes)
    spec = raw.get("channel_spec") if isinstance(raw, dict) else None
    if spec:  # channel-pruned: reshape to the recorded channel counts before loading
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
