"""The transfer-source protocol: everything :func:`~recoverprune.recover` reads of its data.

A source has a length, the index batches of one epoch for a rank, ``get_batch(idx) ->
(images, labels)`` and a ``key()`` that identifies it for resuming. The rest is optional,
with the defaults of :func:`hook`: ``start(teacher, runtime, state)`` binds a source to the
borrowed teacher (and restores its checkpointed state), ``on_epoch(student, epoch)`` runs
before every epoch and may return progress-bar fields, ``state_dict()`` is saved with every
checkpoint, ``split(fraction, seed)`` holds images out for the agreement report, and
``fill`` is the padding colour of crops (black in the normalised space).

Fixed sets (``SyntheticImages``, ``(images, labels)`` tensors, a ``Dataset``) are adapted
by :func:`recoverprune.data.transfer.as_source`; the experimental stream implements the
protocol itself. ``distill/`` names no concrete source.

Example:
    >>> import torch
    >>> from recoverprune.data.transfer import as_source
    >>> src = as_source((torch.randn(10, 1, 4, 4), torch.arange(10)))
    >>> isinstance(src, TransferSource), len(src), len(src.batches(0, 4, 0, 0, 1))
    (True, 10, 3)
    >>> hook(src, "on_epoch")(None, 0) is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Batched", "TransferSource", "hook"]


class Batched(Protocol):
    """Images and labels by index (what agreement and the repairs read)."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class TransferSource(Batched, Protocol):
    """What :func:`~recoverprune.recover` reads (the optional members: see :func:`hook`)."""

    def batches(  # the index batches of ``epoch`` for ``rank`` of ``world_size``
        self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int
    ) -> list[Tensor]: ...

    def key(self) -> Any: ...  # identifies the images: a resume refuses another key


#: what an optional member defaults to when a source lacks it
DEFAULTS: Mapping[str, Any] = {
    "start": lambda teacher, runtime, state: None,
    "on_epoch": lambda student, epoch: None,
    "state_dict": dict,
    "split": lambda fraction, seed: None,
    "fill": None,
}


def hook(source: Any, name: str) -> Any:
    """``source.<name>``, or its default in :data:`DEFAULTS` when the source lacks it.

    Example:
        >>> hook(object(), "fill") is None, hook(object(), "state_dict")()
        (True, {})
    """
    return getattr(source, name, DEFAULTS[name])
