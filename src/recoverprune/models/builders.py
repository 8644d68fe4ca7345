"""Model specs: names to constructors. A model spec names a constructor:

* ``resnet20`` (or ``zoo:resnet20``): the built-in CIFAR zoo;
* ``torchvision:NAME``: any ``torchvision.models`` classification builder;
* ``timm:NAME``: any timm model (``pip install 'recoverprune[timm]'``);
* ``module:pkg.mod:factory`` or ``module:pkg.mod.factory``: your own constructor.

Pretrained weights are never downloaded (torchvision ``weights=None``, timm
``pretrained=False``): the weights come from your checkpoint.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from recoverprune.core.spec import InputSpec
from recoverprune.models.registry import zoo_entry

__all__ = ["KINDS", "build_model", "create_model", "parse_spec"]


#: The spec prefixes; a name without a prefix is a zoo name.
KINDS = ("zoo", "torchvision", "timm", "module")


_SENTINEL_CLASSES = 1237  # an unlikely head width, to find the head's parameters by shape


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
        raise ValueError(f"torchvision has no classification model {name!r}{_close(name, names)}")
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
        raise ValueError(f"timm has no model {name!r}{_close(name, timm.list_models())}")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


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
    """A randomly initialised model from a spec (never downloads weights), with the
    ``pretrained_cfg`` input hint where one is known; ``num_classes=None`` keeps the
    constructor's default.

    Raises:
        ValueError: unknown spec or name, timm missing, or a factory without ``num_classes``.

    Example:
        >>> build_model("torchvision:resnet18", num_classes=7).fc.out_features
        7
    """
    kind, target = parse_spec(spec)
    if kind == "zoo":
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


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """A randomly initialised model from a zoo name (:func:`list_models`) or any model spec
    (:func:`build_model`) with ``num_classes`` outputs.

    Example:
        >>> create_model("resnet20", num_classes=100).pretrained_cfg["num_classes"]
        100
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    kind, target = parse_spec(name)
    if kind != "zoo":
        return build_model(name, num_classes)
    return zoo_entry(target)[0](num_classes)
