"""Any labelled data (tensors, a ``TensorDataset``, a ``Dataset`` of ``(image, label)``) as
the batched view ``evaluate`` reads (:func:`as_transfer_set`) and as a transfer source
(:func:`as_source`, :mod:`recoverprune.distill.source`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from recoverprune.data.synthetic import SyntheticImages, data_fingerprint, split_indices

__all__ = ["Labelled", "as_source", "as_transfer_set"]


_FORMS = (
    "a SyntheticImages, a Dataset of (image, label), a TensorDataset(images, labels) or "
    "(images, labels) tensors"
)


def _check_images(x: Tensor, source: str) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(
            f"{source} holds {x.dtype} images: give float tensors in the model's normalised input "
            "space (e.g. transforms.ToTensor() then Normalize(mean, std))"
        )
    return x.float()


def _tensors(images: Tensor, labels: Tensor) -> TensorDataset:
    """``(images (N, C, H, W), labels (N,))``, checked, as a ``TensorDataset``."""
    if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(
            f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    _check_images(images[:0], "the data")
    return TensorDataset(images, labels)


class Labelled:
    """A labelled dataset viewed through ``indices``: the batched view and a transfer source.

    Example:
        >>> src = Labelled(TensorDataset(torch.randn(10, 1, 4, 4), torch.arange(10)))
        >>> [len(b) for b in src.batches(0, 4, seed=0, rank=0, world_size=1)]
        [4, 4, 2]
        >>> [len(b) for b in src.batches(0, 4, seed=0, rank=1, world_size=2)]
        [4, 1]
    """

    def __init__(self, dataset: Any, indices: Tensor | None = None) -> None:
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else indices

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
        """Images (float) and labels at ``indices`` of this view."""
        idx = self.indices[torch.as_tensor(indices, dtype=torch.long)]
        if isinstance(self.dataset, TensorDataset):
            x, y = (t[idx] for t in self.dataset.tensors)
            return x.float(), y.long()
        fast = getattr(self.dataset, "get_batch", None) or getattr(self.dataset, "batch", None)
        if callable(fast):
            x, y = fast(idx)
            return _check_images(x, type(self.dataset).__name__), torch.as_tensor(y).long()
        items = [self._item(int(i)) for i in idx]
        if not items:
            return torch.empty(0, *self.image_shape), torch.empty(0, dtype=torch.long)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def split(self, fraction: float, seed: int = 0) -> tuple[Labelled, Labelled]:
        """``(rest, held out)``, the same images as ``SyntheticImages.split`` holds out."""
        rest, held = split_indices(len(self), fraction, seed)
        return Labelled(self.dataset, self.indices[rest]), Labelled(self.dataset, self.indices[held])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.get_batch(torch.tensor([0]))[0].shape[1:])

    # -- the transfer-source protocol ----------------------------------------------------
    def batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int
    ) -> list[Tensor]:
        """A shuffled pass of ``(seed, epoch)``, this rank's share (as ``DistributedSampler``)."""
        n = range(len(self))
        sampler = DistributedSampler(n, world_size, rank, seed=seed)  # type: ignore[arg-type]
        sampler.set_epoch(epoch)
        return list(torch.tensor(list(sampler)).split(batch_size))

    def key(self) -> str:
        """The fingerprint of every image and label."""
        return data_fingerprint(self)

    def start(self, teacher: Any, runtime: Any, state: Any) -> None:
        """A set that knows its classes refuses a teacher it does not fit (``check_for``)."""
        getattr(self.dataset, "check_for", lambda _: None)(teacher)

    @property
    def fill(self) -> tuple[float, ...] | None:
        """Black in the normalised space (``-mean / std``), when the data says its mean/std."""
        mean, std = getattr(self.dataset, "mean", None), getattr(self.dataset, "std", None)
        if mean is None or std is None or len(mean) != self.image_shape[0]:
            return None
        return tuple(-m / s for m, s in zip(mean, std, strict=True))


def _dataset(data: Any) -> Any:
    """The random-access dataset ``data`` holds (tensors as a checked ``TensorDataset``)."""
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TypeError(
            f"got the path {data!r}: load it first (SyntheticImages.load(dir) for a synthesis "
            "directory, recoverprune.data.load_split(path) for an ImageFolder)"
        )
    if isinstance(data, DataLoader):
        data = data.dataset
    pair = isinstance(data, (tuple, list)) and len(data) == 2
    if pair and all(isinstance(t, Tensor) for t in data):
        return _tensors(*data)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return _tensors(*data.tensors)
    if isinstance(data, IterableDataset):
        raise TypeError(f"{type(data).__name__} is iterable-only; give {_FORMS} (random access)")
    if isinstance(data, (Dataset, Sequence)) and hasattr(data, "__len__"):
        return data
    raise TypeError(f"expected labelled images: {_FORMS}; got {type(data).__name__}")


def as_transfer_set(data: Any) -> Any:
    """``data`` as a batched view (``len``, ``get_batch``, ``split``, ``image_shape``); a
    ``SyntheticImages`` comes back unchanged.

    Raises:
        TypeError: not labelled data in one of the accepted forms (the message lists them).
        ValueError: mismatched shapes, integer images, or items that are not ``(image, label)``.

    Example:
        >>> ts = as_transfer_set((torch.randn(10, 1, 4, 4), torch.arange(10)))
        >>> len(ts), ts.image_shape, [len(p) for p in ts.split(0.2)]
        (10, (1, 4, 4), [8, 2])
    """
    return data if isinstance(data, SyntheticImages) else Labelled(_dataset(data))


def as_source(data: Any) -> Any:
    """``data`` as a transfer source: a source already (it has ``batches``, ``get_batch``
    and ``key``) comes back unchanged, labelled data as a :class:`Labelled` view.

    Raises:
        TypeError: not labelled data in one of the accepted forms (the message lists them).
        ValueError: an empty set, mismatched shapes, integer images, or bad items.

    Example:
        >>> src = as_source((torch.randn(10, 1, 4, 4), torch.arange(10)))
        >>> len(src), as_source(src) is src, src.fill
        (10, True, None)
    """
    if all(callable(getattr(data, name, None)) for name in ("batches", "get_batch", "key")):
        return data
    source = Labelled(_dataset(data))
    if len(source) == 0:
        raise ValueError("the synthetic set is empty: synthesize some images first")
    return source
