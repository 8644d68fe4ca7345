"""``SyntheticImages``: the transfer set, in memory or as shards on disk
(the format: :mod:`recoverprune.data.synthetic_io`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from recoverprune.core.io import atomic_path
from recoverprune.core.spec import InputSpec
from recoverprune.data import synthetic_io
from recoverprune.data.synthetic_io import FORMAT_VERSION, read_set, write_manifest, write_shard

__all__ = ["SyntheticImages", "data_fingerprint", "split_indices"]


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, held)`` sorted indices; a random ``fraction`` held out.

    Example:
        >>> [t.tolist() for t in split_indices(5, 0.4, 0)]
        [[1, 2, 3], [0, 4]]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = round(fraction * n)
    return perm[n_held:].sort().values, perm[:n_held].sort().values


class SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """Synthetic images (in the teacher's normalised input space) and their target labels.

    A ``Dataset`` of ``(image, label)``, images float32 ``(C, H, W)``; ``mean``/``std`` turn
    them back into pixels (default ImageNet's, RGB only). Backed by tensors in memory or by
    the memory-mapped shards of a synthesis directory.

    Example:
        >>> import torch
        >>> from recoverprune import SyntheticImages
        >>> ds = SyntheticImages(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> len(ds), int(ds.labels[1]), ds.image_shape
        (4, 1, (3, 8, 8))
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[torch.Tensor],
        *,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self._images = [images] if isinstance(images, torch.Tensor) else list(images)
        self._labels = [labels] if isinstance(labels, torch.Tensor) else list(labels)
        if len(self._images) != len(self._labels):
            raise ValueError("images and labels must come in the same number of chunks")
        for im, lb in zip(self._images, self._labels, strict=True):
            if im.dim() != 4 or lb.dim() != 1 or im.shape[0] != lb.shape[0]:
                raise ValueError(
                    f"expected images (N, C, H, W) and labels (N,), got {tuple(im.shape)} "
                    f"and {tuple(lb.shape)}"
                )
        if not self._images:
            raise ValueError("expected at least one chunk of images")
        shapes = {tuple(im.shape[1:]) for im in self._images}
        if len(shapes) > 1:
            raise ValueError(f"every chunk must hold images of one shape, got {sorted(shapes)}")
        sizes = [im.shape[0] for im in self._images]
        self._offsets = torch.tensor([0, *sizes]).cumsum(0)
        channels = int(self._images[0].shape[1])
        if mean is None and std is None and channels != 3:  # ImageNet's values: RGB only
            raise ValueError(
                f"the images have {channels} channel(s): pass mean= and std= (one value or one "
                "per channel), the normalisation of the model's input"
            )
        spec = InputSpec(channels=channels, mean=mean, std=std)  # type: ignore[arg-type]
        self.mean, self.std = spec.normalisation()
        self.meta: dict[str, Any] = dict(meta or {})

    # -- Dataset protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        x, y = self.get_batch(torch.tensor([index % len(self)]))
        return x[0], int(y[0])

    # -- batched access ---------------------------------------------------------------
    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float32) and labels at ``indices``, gathered without a DataLoader."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if len(self._images) == 1:
            return self._images[0][indices].float(), self._labels[0][indices]
        chunk = torch.searchsorted(self._offsets, indices, right=True) - 1
        local = indices - self._offsets[chunk]
        shape = (len(indices), *self.image_shape)
        images = torch.empty(shape, dtype=torch.float32)
        labels = torch.empty(len(indices), dtype=torch.long)
        for c in chunk.unique().tolist():
            sel = chunk == c
            images[sel] = self._images[c][local[sel]].float()
            labels[sel] = self._labels[c][local[sel]]
        return images, labels

    @property
    def images(self) -> torch.Tensor:
        """All images as one ``(N, C, H, W)`` float32 tensor (materialised in memory)."""
        return (self._images[0] if len(self._images) == 1 else torch.cat(self._images)).float()

    @property
    def labels(self) -> torch.Tensor:
        """All target labels as one int64 tensor."""
        return self._labels[0] if len(self._labels) == 1 else torch.cat(self._labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of every image."""
        return tuple(self._images[0].shape[1:])

    def split(self, fraction: float, seed: int = 0) -> tuple[SyntheticImages, SyntheticImages]:
        """Split off a random ``fraction`` (e.g. a held-out slice): ``(rest, held_out)``."""
        rest, held = split_indices(len(self), fraction, seed)

        def sub(idx: torch.Tensor) -> SyntheticImages:
            im, lb = self.get_batch(idx)
            return SyntheticImages(im, lb, mean=self.mean, std=self.std, meta=self.meta)

        return sub(rest), sub(held)

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the set as one shard plus ``manifest.json`` (atomically), readable by ``load``.

        Example:
            >>> import tempfile, torch
            >>> ds = SyntheticImages(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
            >>> d = ds.save(tempfile.mkdtemp())
            >>> torch.equal(SyntheticImages.load(d).images, ds.images)
            True
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_shard(d, 0, self.images, self.labels)
        sizes = {"n": len(self), "batch_sizes": [len(self)]}
        shape = {"image_shape": list(self.image_shape)}
        norm = {"mean": list(self.mean), "std": list(self.std)}
        write_manifest(d, {**self.meta, "format": FORMAT_VERSION, **sizes, **shape, **norm})
        return d

    def check_for(self, teacher: Any) -> None:
        """Refuse a ``teacher`` whose input or classes the set does not fit; warn when another
        teacher made it (:func:`~recoverprune.data.synthetic_io.check_made_for`; ``recover()``
        calls it).

        Example:
            >>> ds = SyntheticImages(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), mean=0, std=1)
            >>> ds.check_for(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
        """
        meta = {**self.meta, "image_shape": list(self.image_shape)}
        synthetic_io.check_made_for(meta, self.labels, teacher, "the synthetic set")

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> SyntheticImages:
        """Read a set written by :meth:`save` or by ``synthesize(out_dir=...)``, checked
        (:func:`~recoverprune.data.synthetic_io.read_set`, which names what it raises)."""
        manifest, shards = read_set(Path(directory), mmap=mmap)
        meta = {k: v for k, v in manifest.items() if k not in ("mean", "std")}
        stats = [shard.get("stats") for shard in shards]
        if stats and all(st is not None for st in stats):
            meta["stats"] = stats  # per batch, as synthesize() returns them in memory
        images, labels = [s["images"] for s in shards], [s["labels"] for s in shards]
        return cls(images, labels, mean=manifest["mean"], std=manifest["std"], meta=meta)

    def denormalize(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels in ``[0, 1]`` from normalised images (default: all of them)."""
        x = self.images if images is None else images
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def save_grid(
        self, path: str | os.PathLike[str], *, per_class: int = 8, max_classes: int = 10
    ) -> Path:
        """Write a PNG grid: one row per class (up to ``max_classes``), ``per_class`` images each.

        Example:
            >>> import tempfile, torch, os
            >>> ds = SyntheticImages(torch.randn(4, 3, 8, 8), torch.tensor([0, 0, 1, 1]))
            >>> p = ds.save_grid(os.path.join(tempfile.mkdtemp(), "grid.png"), per_class=2)
            >>> p.suffix
            '.png'
        """
        from torchvision.utils import save_image

        labels = self.labels
        rows = []
        for c in labels.unique().tolist()[:max_classes]:
            idx = (labels == c).nonzero().flatten()[:per_class]
            imgs = self.denormalize(self.get_batch(idx)[0])
            if len(idx) < per_class:  # pad short rows so the grid stays aligned
                pad = torch.ones(per_class - len(idx), *imgs.shape[1:])
                imgs = torch.cat([imgs, pad])
            rows.append(imgs)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            save_image(torch.cat(rows), tmp, nrow=per_class, padding=1, format="png")
        return out

    def __repr__(self) -> str:
        return f"SyntheticImages(n={len(self)}, image_shape={self.image_shape})"


def data_fingerprint(data: Any, chunk: int = 1024) -> str:
    """A short SHA-256 of every image and label of a :class:`~recoverprune.SyntheticImages`,
    read ``chunk`` images at a time (a memory-mapped set is never materialised).

    Example:
        >>> import torch
        >>> from recoverprune import SyntheticImages
        >>> a = SyntheticImages(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]), mean=0.5, std=0.5)
        >>> data_fingerprint(a) == data_fingerprint(a), len(data_fingerprint(a))
        (True, 16)
    """
    h = hashlib.sha256()
    n = len(data)
    for start in range(0, n, chunk):
        x, y = data.get_batch(torch.arange(start, min(start + chunk, n)))
        h.update(x.float().contiguous().numpy().tobytes())
        h.update(y.long().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
