"""Model specs and input descriptions: names to constructors, checkpoints to models.

A model spec names a constructor:

* ``resnet20`` (or ``zoo:resnet20``): the built-in CIFAR zoo;
* ``torchvision:NAME``: any ``torchvision.models`` classification builder;
* ``timm:NAME``: any timm model (``pip install 'recoverprune[timm]'``);
* ``module:pkg.mod:factory`` or ``module:pkg.mod.factory``: your own constructor.

Pretrained weights are never downloaded (torchvision ``weights=None``, timm
``pretrained=False``): the weights come from your checkpoint. :class:`InputSpec` says what
the model eats (channels, size, normalisation); it travels with the model as a timm-style
``pretrained_cfg`` hint and is stored in every checkpoint, manifest and report.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recoverprune._constants import DEFAULT_MEAN, DEFAULT_STD

__all__ = [
    "KINDS",
    "InputSpec",
    "build_model",
    "key_report",
    "load_any",
    "parse_spec",
    "per_channel",
]

#: The spec prefixes; a name without a prefix is a zoo name.
KINDS = ("zoo", "torchvision", "timm", "module")
_SENTINEL_CLASSES = 1237  # an unlikely head width, to find the head's parameters by shape


def per_channel(
    values: float | Sequence[float] | None, channels: int, name: str = "mean"
) -> tuple[float, ...] | None:
    """``values`` as one float per channel: a single value is repeated, ``None`` stays.

    Raises:
        ValueError: neither one value nor one per channel.

    Example:
        >>> per_channel(0.5, 3), per_channel([0.1, 0.2, 0.3], 3)
        ((0.5, 0.5, 0.5), (0.1, 0.2, 0.3))
    """
    if values is None:
        return None
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(
            f"{name} has {len(vals)} values but the input has {channels} channel(s): give one "
            f"value, or one per channel"
        )
    return vals


def _model_cfg(model: nn.Module) -> dict[str, Any]:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            return cfg
    return {}


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


@dataclass(frozen=True)
class InputSpec:
    """What a classifier eats: channels, image size and the normalisation it was trained with.

    Attributes:
        channels: input channels (1 for grayscale, 3 for RGB).
        size: ``(H, W)``; an int means a square. ``None``: unknown.
        mean, std: per-channel normalisation (one value is repeated for every channel).
            ``None``: unknown (the ImageNet values are the default for 3 channels).

    Example:
        >>> spec = InputSpec(channels=1, size=28, mean=0.286, std=0.353)
        >>> spec.shape, spec.mean
        ((1, 28, 28), (0.286,))
        >>> InputSpec.from_dict(spec.to_dict()) == spec
        True
    """

    channels: int = 3
    size: tuple[int, int] | int | None = None
    mean: tuple[float, ...] | float | None = None
    std: tuple[float, ...] | float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ValueError(f"channels must be a positive int, got {self.channels!r}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        size = self.size
        if isinstance(size, int):
            size = (size, size)
        if size is not None:
            size = tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be a positive int or (H, W), got {self.size!r}")
        mean = per_channel(self.mean, self.channels, "mean")
        std = per_channel(self.std, self.channels, "std")
        if mean is None and std is None and self.channels == 3:
            mean, std = DEFAULT_MEAN, DEFAULT_STD
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        *,
        image_size: int | Sequence[int] | None = None,
        channels: int | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> InputSpec:
        """The input of ``model``: the arguments given, else its ``pretrained_cfg`` hint,
        else channels from the first ``Conv2d`` (size and a non-RGB normalisation unknown).

        Example:
            >>> from torch import nn
            >>> InputSpec.of(nn.Conv2d(1, 4, 3), image_size=28, mean=0.5, std=0.25).shape
            (1, 28, 28)
        """
        cfg = _model_cfg(model)
        hinted = cfg.get("input_size")
        c = channels or (int(hinted[0]) if hinted else None) or _first_conv_channels(model) or 3
        size = image_size if image_size is not None else (tuple(hinted[1:]) if hinted else None)
        if mean is None and std is None and cfg.get("mean") is not None:
            hint_mean, hint_std = cfg.get("mean"), cfg.get("std")
            if len(tuple(hint_mean)) in (1, c):  # a hint for other channels does not apply
                mean, std = hint_mean, hint_std
        return cls(channels=c, size=size, mean=mean, std=std)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``.

        Raises:
            ValueError: the size is unknown (the message says to pass ``image_size``).
        """
        if self.size is None:
            raise ValueError(
                "the input image size is unknown: pass image_size (--image-size), e.g. 32 for "
                "CIFAR, 28 for MNIST-like data, 224 for ImageNet models"
            )
        h, w = self.size  # type: ignore[misc]
        return self.channels, h, w

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``.

        Raises:
            ValueError: unknown for this non-RGB input (the message says to pass them).
        """
        if self.mean is None or self.std is None:
            raise ValueError(
                f"the normalisation of this {self.channels}-channel input is unknown: pass mean "
                "and std (--mean/--std), one value or one per channel, the values the model "
                "was trained with (e.g. mean=0.286, std=0.353 for Fashion-MNIST)"
            )
        return self.mean, self.std  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as stored in checkpoints, manifests and reports."""
        return {
            "channels": self.channels,
            "size": list(self.size) if self.size is not None else None,  # type: ignore[arg-type]
            "mean": list(self.mean) if self.mean is not None else None,  # type: ignore[arg-type]
            "std": list(self.std) if self.std is not None else None,  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            channels=int(d["channels"]), size=d.get("size"), mean=d.get("mean"), std=d.get("std")
        )

    def attach(self, model: nn.Module) -> nn.Module:
        """Record this spec as ``model.pretrained_cfg`` (a new dict; other keys are kept).

        Every stage (``synthesize``, ``evaluate``, ``recover(val_data=...)``) reads it.

        Example:
            >>> from torch import nn
            >>> net = InputSpec(1, 28, 0.5, 0.25).attach(nn.Conv2d(1, 2, 3))
            >>> net.pretrained_cfg["input_size"]
            (1, 28, 28)
        """
        cfg = dict(_model_cfg(model))
        cfg.pop("input_size", None)
        if self.size is not None:
            cfg["input_size"] = self.shape
        for key in ("mean", "std"):
            cfg.pop(key, None)
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        model.pretrained_cfg = cfg
        return model


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, target)``; a bare name is a zoo name.

    Example:
        >>> parse_spec("torchvision:resnet18"), parse_spec("resnet20")
        (('torchvision', 'resnet18'), ('zoo', 'resnet20'))
    """
    kind, sep, target = spec.partition(":")
    if not sep:
        return "zoo", spec
    if kind not in KINDS or not target:
        raise ValueError(
            f"model spec {spec!r} not understood: use a zoo name (see `recoverprune models`), "
            "torchvision:NAME, timm:NAME or module:pkg.mod:factory"
        )
    return kind, target


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"torchvision has no classification model {name!r}{hint}")
    builder = tvm.get_model_builder(name)
    return lambda **kw: builder(weights=None, **kw)


def _torchvision_hint(name: str) -> InputSpec:
    """Input size and normalisation of the builder's reference weights (metadata only)."""
    import torchvision.models as tvm

    try:
        t = tvm.get_model_weights(name).DEFAULT.transforms()
        return InputSpec(3, int(t.crop_size[0]), tuple(t.mean), tuple(t.std))
    except Exception:  # no weights enum for this builder: the torchvision convention
        return InputSpec(3, 224)


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(
            f"timm:{name} needs timm: pip install 'recoverprune[timm]' (or pip install timm)"
        ) from exc
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint}")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)


def _import_factory(target: str) -> Callable[..., nn.Module]:
    mod_name, sep, attr = target.partition(":")
    if not sep:
        mod_name, _, attr = target.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"module:{target} must name pkg.mod:factory or pkg.mod.factory")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if os.getcwd() in sys.path or exc.name != mod_name.split(".")[0]:
            raise ValueError(f"module:{target}: cannot import {mod_name!r} ({exc})") from exc
        sys.path.insert(0, os.getcwd())  # `recoverprune` console script: look beside the user
        return _import_factory(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"module:{target}: {mod_name} has no callable {attr!r}")
    return factory


def _takes_num_classes(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised model from a spec (never downloads weights).

    ``num_classes=None`` keeps the constructor's default (10 for the zoo, 1000 for
    torchvision and timm). The model carries a ``pretrained_cfg`` input hint where one is
    known (zoo: 32x32; torchvision: its reference weights' crop size and normalisation; timm:
    its own).

    Raises:
        ValueError: unknown spec or name, timm not installed, or a factory that takes no
            ``num_classes`` when one is given.

    Example:
        >>> build_model("torchvision:resnet18", num_classes=7).fc.out_features
        7
    """
    kind, target = parse_spec(spec)
    if kind == "zoo":
        from recoverprune.models._registry import create_model

        return create_model(target, 10 if num_classes is None else num_classes)
    kw = {} if num_classes is None else {"num_classes": num_classes}
    if kind == "torchvision":
        return _torchvision_hint(target).attach(_torchvision_builder(target)(**kw))
    if kind == "timm":
        return _timm_builder(target)(**kw)
    factory = _import_factory(target)
    if kw and not _takes_num_classes(factory):
        raise ValueError(f"module:{target} takes no num_classes argument; leave it unset")
    model = factory(**kw)
    if not isinstance(model, nn.Module):
        raise ValueError(f"module:{target} returned {type(model).__name__}, not an nn.Module")
    return model


def _head_keys(spec: str) -> list[str]:
    """State-dict keys whose first dimension is the number of classes (built on meta)."""
    kind, target = parse_spec(spec)
    if kind == "module" and not _takes_num_classes(_import_factory(target)):
        return []
    try:
        with torch.device("meta"):
            model = build_model(spec, _SENTINEL_CLASSES)
    except Exception:  # a constructor that cannot run on meta tensors
        model = build_model(spec, _SENTINEL_CLASSES)
    return [
        k
        for k, v in model.state_dict().items()
        if v.ndim >= 1 and v.shape[0] == _SENTINEL_CLASSES and k.endswith("weight")
    ]


def infer_num_classes(spec: str, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Rows of the checkpoint's head (its last layer), or ``None`` if it has no such key.

    Example:
        >>> sd = build_model("torchvision:shufflenet_v2_x1_0", 10).state_dict()
        >>> infer_num_classes("torchvision:shufflenet_v2_x1_0", sd)
        10
    """
    for key in reversed(_head_keys(spec)):
        for k in (key, key.removesuffix("weight") + "weight_orig"):
            if k in state_dict:
                return int(state_dict[k].shape[0])
    return None


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
    from recoverprune._io import CheckpointError, extract_state_dict, load_checkpoint
    from recoverprune._prune import refresh_pruned, restore_pruning

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
