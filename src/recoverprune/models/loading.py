"""The one checkpoint loader: a model built from a spec (or copied from one given), its
saved channel widths, pruning masks and input description restored, its weights loaded
strictly, with an error that says what does not fit and what to pass instead.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from recoverprune.core.io import CheckpointError, extract_state_dict, load_checkpoint
from recoverprune.core.spec import InputSpec
from recoverprune.models.builders import build_model, infer_num_classes, parse_spec
from recoverprune.models.registry import list_models, matching_archs, zoo_entry, zoo_num_classes
from recoverprune.pruning.channel_spec import apply_channel_spec
from recoverprune.pruning.masks import refresh_pruned, restore_pruning

__all__ = ["key_report", "load_model"]


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

    labels = ("missing keys", "unexpected keys", "shape mismatches")
    return "".join(map(listing, labels, (missing, unexpected, shapes)))


def load_model(
    arch: str | nn.Module,
    checkpoint: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``arch`` and load a checkpoint into it strictly: the one loader of every
    checkpoint this library reads (layouts: :func:`~recoverprune.core.io.extract_state_dict`).
    Pruned checkpoints come back pruned, masks intact; channel-pruned ones (saved with a
    ``channel_spec``) at their smaller widths.

    Args:
        arch: one of :func:`list_models`, or ``torchvision:NAME``, ``timm:NAME``,
            ``module:pkg.mod:factory`` (a head replaced for N classes: ``num_classes=None``
            reads N from the checkpoint); or an ``nn.Module`` of the checkpoint's
            architecture (your own), which is copied, never changed.
        checkpoint: path of a file written by ``torch.save``; loaded with ``weights_only=True``.
        num_classes: outputs of the classifier; ``None`` reads it from the checkpoint
            (10 if it cannot tell). Ignored for an ``nn.Module``.
        map_location: where the tensors are deserialised (the model is built on the CPU).

    Returns:
        The model in eval mode, with the checkpoint's input description when it has one.

    Raises:
        ValueError: unknown ``arch``.
        CheckpointError: the file is missing, unreadable, or does not fit ``arch`` (the
            message names the keys and shapes).

    Example:
        >>> import tempfile, torch
        >>> from recoverprune.models import resnet20
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save({"state_dict": resnet20(num_classes=7).state_dict()}, f"{d}/r20.pt")
        ...     model = load_model("resnet20", f"{d}/r20.pt")
        >>> model.linear.out_features, model.training
        (7, False)
    """
    raw = load_checkpoint(checkpoint, map_location)
    state_dict = extract_state_dict(raw, str(checkpoint))
    if isinstance(arch, nn.Module):
        return _load_into(copy.deepcopy(arch), raw, state_dict, where=checkpoint)
    kind, target = parse_spec(arch)
    spec = target if kind == "zoo" else f"{kind}:{target}"
    if num_classes is None and kind == "zoo":  # the head width it was saved with, else 10
        num_classes = zoo_num_classes(state_dict, zoo_entry(target)[1]) or 10
    elif num_classes is None:
        num_classes = infer_num_classes(spec, state_dict)
    model = build_model(spec, num_classes)
    return _load_into(model, raw, state_dict, where=checkpoint, spec=spec, num_classes=num_classes)


def _load_into(
    model: nn.Module, raw: Any, state_dict: Mapping[str, torch.Tensor], *,
    where: str | os.PathLike[str], spec: str | None = None, num_classes: int | None = None,
) -> nn.Module:
    """Reshape ``model`` to a saved ``channel_spec``, restore its masks, load ``state_dict``
    strictly (``spec``/``num_classes``, what it was built from, make an error say what to
    pass instead), then attach the saved input description and class names."""
    saved_channels = raw.get("channel_spec") if isinstance(raw, Mapping) else None
    if saved_channels:  # channel-pruned: reshape to the recorded widths before loading
        apply_channel_spec(model, saved_channels, state_dict)
    restore_pruning(model, state_dict)
    label = repr(spec) if spec else type(model).__name__
    problem = key_report(model.state_dict(), state_dict)
    if problem:
        hint = _fit_hint(spec, state_dict, num_classes)
        raise CheckpointError(f"{where}: checkpoint does not fit {label}:{problem}{hint}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # anything key_report did not foresee
        raise CheckpointError(f"{where}: checkpoint does not fit {label}: {exc}") from exc
    refresh_pruned(model)
    saved_input = raw.get("input") if isinstance(raw, Mapping) else None
    if isinstance(saved_input, Mapping):
        InputSpec.from_dict(saved_input).attach(model)
    names = raw.get("label_names") if isinstance(raw, Mapping) else None
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "label_names": list(names)}
    return model.eval()


def _fit_hint(
    spec: str | None, state_dict: Mapping[str, torch.Tensor], num_classes: int | None
) -> str:
    """What to pass instead when a checkpoint does not fit the model built from ``spec``."""
    if spec is None:
        return "\nWas the checkpoint saved from this architecture, at these widths?"
    kind, target = parse_spec(spec)
    if kind != "zoo":
        n = infer_num_classes(spec, state_dict)
        if n is not None and n != num_classes:
            return f"\nThe head has {n} outputs in the checkpoint: pass num_classes={n} (--num-classes)."
        return "\nIs the spec right, and was the head replaced the way this constructor builds it?"
    guess = matching_archs(state_dict)
    if target in guess:
        n = zoo_num_classes(state_dict, zoo_entry(target)[1])
        return f"\nThe checkpoint fits {target!r} with num_classes={n}: pass num_classes=None to infer it."
    looks = f"it looks like {' or '.join(guess)}; " if guess else ""
    return (
        f"\nIs the architecture right? Pass the arch the checkpoint was trained with "
        f"({looks}valid names: {', '.join(list_models())})."
    )
