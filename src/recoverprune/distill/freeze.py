"""Keeping a student's classifier as it is during recovery (MiR: the teacher's classifier,
on the teacher's kept channels, reads the student's last feature map).

Example:
    >>> from recoverprune.models import resnet20
    >>> net = resnet20()
    >>> with frozen_classifier(net) as name:
    ...     name, net.linear.weight.requires_grad
    ('linear', False)
    >>> net.linear.weight.requires_grad
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["classifier_name", "frozen_classifier"]


def classifier_name(model: nn.Module) -> str:
    """Name of the classifier: the last ``nn.Linear`` registered in ``model``.

    Raises:
        ValueError: ``model`` has no ``nn.Linear`` (e.g. a 1x1-convolution head).

    Example:
        >>> from recoverprune.models import resnet20
        >>> classifier_name(resnet20())
        'linear'
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier to freeze; "
            "use DistillConfig(freeze_classifier=False)"
        )
    return names[-1]


@contextmanager
def frozen_classifier(model: nn.Module) -> Iterator[str]:
    """The classifier's parameters stop learning (``requires_grad=False``) while the block
    lasts; their flags are restored afterwards, also on an exception. Yields its name."""
    name = classifier_name(model)
    params = list(model.get_submodule(name).parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield name
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
