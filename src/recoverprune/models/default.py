"""The embedded default teacher: a CIFAR-10 ResNet-20 this project fine-tuned itself."""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch

from recoverprune.core.io import extract_state_dict
from recoverprune.models.cifar_resnet import CifarResNet, resnet20

__all__ = ["DEFAULT_TEACHER_FILE", "default_teacher", "default_teacher_info"]

DEFAULT_TEACHER_FILE = "resnet20_cifar10_jpeg.pt"


def _load_asset() -> dict[str, Any]:
    ref = resources.files("recoverprune") / "_assets" / DEFAULT_TEACHER_FILE
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise FileNotFoundError(
                f"the embedded teacher {DEFAULT_TEACHER_FILE} is missing from the installed "
                "package; reinstall recoverprune or pass your own teacher"
            )
        return torch.load(path, map_location="cpu", weights_only=True)


def default_teacher_info() -> dict[str, Any]:
    """How the embedded teacher was made and its measured accuracy (from the file itself).

    Example:
        >>> default_teacher_info()["arch"]
        'resnet20'
    """
    return {k: v for k, v in _load_asset().items() if k != "state_dict"}


def default_teacher() -> CifarResNet:
    """The embedded CIFAR-10 teacher, in eval mode, float32.

    A ResNet-20 from the BSD-licensed weights of akamaster/pytorch_resnet_cifar10,
    fine-tuned on CIFAR-10 JPEG q75 with ``benchmarks/train_teacher.py``, stored in float16;
    its top-1 and command: :func:`default_teacher_info`; licence notice beside the file.

    Example:
        >>> teacher = default_teacher()
        >>> teacher.training, teacher.pretrained_cfg["input_size"]
        (False, (3, 32, 32))
    """
    state = extract_state_dict(_load_asset(), DEFAULT_TEACHER_FILE)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model = resnet20(num_classes=int(state["linear.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()
