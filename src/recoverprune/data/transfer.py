"""Any labelled data as the batched view the recovery loop and ``evaluate`` use.

The loop needs ``len``, ``get_batch(indices) -> (images, labels)``, ``split(fraction, seed)``
and ``image_shape``. :class:`~recoverprune.SyntheticImages` has them; :func:`as_transfer_set`
gives them to ``(images, labels)`` tensors, a ``TensorDataset`` and any map-style
``Dataset`` of ``(image, label)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from recoverprune.data.synthetic import SyntheticImages

__all__ = ["TransferSet", "as_transfer_set"]


_FORMS = (
    "a SyntheticImages, a Dataset of (image, label), a TensorDataset(images, labels) or "
    "(images, labels) tensors"
)


class TransferSet(Protocol):
    """What the recovery loop reads."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]: ...

    def split(self, fraction: float, seed: int = 0) -> tuple[TransferSet, TransferSet]: ...

    @property
    def image_shape(self) -> tuple[int, ...]: ...


def split_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(rest, held)`` sorted indices; the same permutation as ``SyntheticImages.split``.

    Example:
        >>> [t.tolist() for t in split_indices(5, 0.4, 0)]
        [[1, 2, 3], [0, 4]]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = round(fraction * n)
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def _check_images(x: Tensor, source: str) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(
            f"{source} holds {x.dtype} images: give float tensors in the model's normalised input "
            "space (e.g. transforms.ToTensor() then Normalize(mean, std))"
        )
    return x.float()


class _Tensors:
    """``(images (N, C, H, W), labels (N,))`` tensors."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        _check_images(images[:0], "the data")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx].float(), self.labels[idx].long()

    def split(self, fraction: float, seed: int = 0) -> tuple[_Tensors, _Tensors]:
        rest, held = split_indices(len(self), fraction, seed)
        return _Tensors(*self.get_batch(rest)), _Tensors(*self.get_batch(held))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


class _Items:
    """A map-style dataset of ``(image, label)``, viewed through ``indices``."""

    def __init__(self, dataset: Any, indices: Tensor | None = None) -> None:
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else indices
        fast = getattr(dataset, "get_batch", None) or getattr(dataset, "batch", None)
        self._fast = fast if callable(fast) else None

    def __len__(self) -> int:
        return len(self.indices)

    def _item(self, i: int) -> tuple[Tensor, int]:
        item = self.dataset[i]
        name = type(self.dataset).__name__
        if not isinstance(item, Sequence) or len(item) != 2:
            raise ValueError(f"item {i} of {name} is {type(item).__name__}, not (image, label)")
        x, y = item
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(
                f"item {i} of {name} has a {type(x).__name__} image, expected a (C, H, W) tensor "
                "(add transforms.ToTensor() and Normalize(mean, std) to the dataset)"
            )
        return _check_images(x, name), int(y)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        idx = self.indices[torch.as_tensor(indices, dtype=torch.long)]
        if self._fast is not None:
            x, y = self._fast(idx)
            return _check_images(x, type(self.dataset).__name__), torch.as_tensor(y).long()
        items = [self._item(int(i)) for i in idx]
        if not items:
            return torch.empty(0, *self.image_shape), torch.empty(0, dtype=torch.long)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def split(self, fraction: float, seed: int = 0) -> tuple[_Items, _Items]:
        rest, held = split_indices(len(self), fraction, seed)
        return _Items(self.dataset, self.indices[rest]), _Items(self.dataset, self.indices[held])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.get_batch(torch.tensor([0]))[0].shape[1:])


def as_transfer_set(data: Any) -> Any:
    """``data`` as a :class:`TransferSet`; a ``SyntheticImages`` comes back unchanged.

    Raises:
        TypeError: not labelled data in one of the accepted forms (the message lists them).
        ValueError: mismatched shapes, integer images, or items that are not ``(image, label)``.

    Example:
        >>> import torch
        >>> ts = as_transfer_set((torch.randn(10, 1, 4, 4), torch.arange(10)))
        >>> len(ts), ts.image_shape, [len(p) for p in ts.split(0.2)]
        (10, (1, 4, 4), [8, 2])
    """

    if isinstance(data, SyntheticImages):
        return data
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TypeError(
            f"got the path {data!r}: load it first (SyntheticImages.load(dir) for a synthesis "
            "directory, recoverprune.data.load_split(path) for an ImageFolder)"
        )
    if isinstance(data, DataLoader):
        data = data.dataset
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return _Tensors(*data)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return _Tensors(*data.tensors)
    if isinstance(data, IterableDataset):
        raise TypeError(f"{type(data).__name__} is iterable-only; give {_FORMS} (random access)")
    if isinstance(data, (Dataset, Sequence)) and hasattr(data, "__len__"):
        return _Items(data)
    raise TypeError(f"expected labelled images: {_FORMS}; got {type(data).__name__}")
