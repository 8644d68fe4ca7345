"""CIFAR model zoo and checkpoint loader.

Every model takes 32x32 RGB inputs, has ``num_classes`` outputs (its constructors' one
argument) and carries a timm-style ``pretrained_cfg`` hint with its input size and
normalisation::

    from recoverprune.models import load_model
    teacher = load_model("resnet20", "../shared/teachers/resnet20-12fca82f.th")

Example:
    >>> from recoverprune.models import create_model, list_models
    >>> "resnet20" in list_models()
    True
    >>> create_model("resnet20").pretrained_cfg["mean"] == CIFAR_MEAN
    True
"""

from __future__ import annotations

from recoverprune.models.builders import create_model
from recoverprune.models.cifar_resnet import CifarResNet, resnet20, resnet32, resnet44, resnet56
from recoverprune.models.config import CIFAR_MEAN, CIFAR_STD, INPUT_SIZE
from recoverprune.models.default import default_teacher, default_teacher_info
from recoverprune.models.loading import load_model
from recoverprune.models.mobilenet import MobileNetV2, mobilenet_v2
from recoverprune.models.registry import list_models
from recoverprune.models.resnet import ResNet, resnet18, resnet34, resnet50
from recoverprune.models.vgg import VGG, vgg11_bn, vgg16_bn

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "INPUT_SIZE", "VGG", "CifarResNet", "MobileNetV2", "ResNet",
    "create_model", "default_teacher", "default_teacher_info", "list_models", "load_model",
    "mobilenet_v2", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet50",
    "resnet56", "vgg11_bn", "vgg16_bn"]
