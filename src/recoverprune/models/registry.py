"""The zoo: names to constructors, and which zoo architectures fit a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from recoverprune.models.cifar_resnet import resnet20, resnet32, resnet44, resnet56
from recoverprune.models.mobilenet import mobilenet_v2
from recoverprune.models.resnet import resnet18, resnet34, resnet50
from recoverprune.models.vgg import vgg11_bn, vgg16_bn

__all__ = ["list_models", "matching_archs", "zoo_entry", "zoo_num_classes"]


#: name -> (constructor, classifier attribute)
_ZOO: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "mobilenet_v2": (mobilenet_v2, "linear"),
    "resnet18": (resnet18, "linear"),
    "resnet20": (resnet20, "linear"),
    "resnet32": (resnet32, "linear"),
    "resnet34": (resnet34, "linear"),
    "resnet44": (resnet44, "linear"),
    "resnet50": (resnet50, "linear"),
    "resnet56": (resnet56, "linear"),
    "vgg11_bn": (vgg11_bn, "classifier"),
    "vgg16_bn": (vgg16_bn, "classifier"),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` and :func:`load_model`, sorted.

    Example:
        >>> ", ".join(list_models()[:3])
        'mobilenet_v2, resnet18, resnet20'
    """
    return sorted(_ZOO)


def zoo_entry(name: str) -> tuple[Callable[[int], nn.Module], str]:
    if name not in _ZOO:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _ZOO[name]


def zoo_num_classes(state_dict: Mapping[str, torch.Tensor], classifier: str) -> int | None:
    """Rows of the last 2-D ``<classifier>.weight`` (or ``.weight_orig`` when pruned)."""
    found = None
    for key, value in state_dict.items():
        if value.ndim == 2 and key.endswith((f"{classifier}.weight", f"{classifier}.weight_orig")):
            found = int(value.shape[0])
    return found


def _dense_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape with pruning re-parametrisation folded back (``weight_orig`` -> ``weight``)."""
    skip = ("_mask", "num_batches_tracked")
    return {
        k.removesuffix("_orig"): tuple(v.shape)
        for k, v in state_dict.items()
        if not k.endswith(skip)
    }


def matching_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Zoo models whose keys and shapes fit ``state_dict`` (classes inferred; built on meta)."""
    want = _dense_shapes(state_dict)
    matches = []
    for name, (fn, classifier) in sorted(_ZOO.items()):
        n = zoo_num_classes(state_dict, classifier) or 10
        with torch.device("meta"):
            have = _dense_shapes(fn(n).state_dict())
        if have == want:
            matches.append(name)
    return matches
