"""One synthesis call, planned: checked arguments, its batches and target labels, its
manifest, where finished batches go, and the set they make. Shared by DeepInversion and
the experimental generator."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.resources import check_job_size
from recoverprune.core.runtime import Accel, Runtime, generator, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.data.synthetic_io import drop_unreadable, make_manifest, open_set, shard_name
from recoverprune.synthesis.bn import tracked_bn

__all__ = ["Plan", "barrier", "batch_sizes", "planned"]

#: what a finished batch leaves in memory: its images and its statistics
Batch = tuple[Tensor, dict[str, float]]


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """Split ``n`` into ``ceil(n / batch_size)`` near-equal batches (none smaller than 2).

    Example:
        >>> batch_sizes(7, 2)  # a batch of one image has no batch statistics to match
        [3, 2, 2]
    """
    count = max(1, min(math.ceil(n / batch_size), n // 2))
    base, extra = divmod(n, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _target_labels(
    labels: Sequence[int] | Tensor | None, n: int, num_classes: int, seed: int
) -> Tensor:
    """The target class of every image: as given (checked), or balanced over the classes."""
    if labels is None:
        balanced = torch.arange(n) % num_classes
        return balanced[torch.randperm(n, generator=generator(seed, "labels"))]
    given = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if given.numel() != n:
        raise ValueError(f"labels has {given.numel()} entries, expected n={n}")
    if given.min() < 0 or given.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the teacher has {num_classes} "
            f"classes), got values from {int(given.min())} to {int(given.max())}"
        )
    return given


def _check_call(teacher: nn.Module, n: int, batch_size: int) -> None:
    """Every check of the arguments that needs no compute."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if batch_size < 2:
        raise ValueError(
            f"batch_size must be >= 2 (DeepInversion matches batch statistics), got {batch_size}"
        )
    if n < 2:
        raise ValueError("n must be >= 2: a batch of one image has no batch statistics")
    if not tracked_bn(teacher):
        raise ValueError(
            f"{type(teacher).__name__} has no BatchNorm layer with running statistics. "
            "DeepInversion reconstructs images from those statistics, so it cannot work on this "
            "teacher; use a BN network or bring your own transfer images to recover()."
        )


def barrier(rt: Runtime) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if rt.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


@dataclass(frozen=True)
class Plan:
    """The batches of one call, their target labels, its manifest and output directory."""

    spec: InputSpec
    rt: Runtime
    sizes: list[int]
    labels: Tensor
    manifest: dict[str, Any]
    seed: int
    out: Path | None

    def labels_of(self, i: int) -> Tensor:
        """The target labels of batch ``i``."""
        start = sum(self.sizes[:i])
        return self.labels[start : start + self.sizes[i]]

    def start(self, overwrite: bool) -> list[int]:
        """Open ``out`` (see :func:`open_set`), drop its unreadable shards, and return this
        rank's batches still to make."""
        mine = [i for i in range(len(self.sizes)) if i % self.rt.world_size == self.rt.rank]
        if self.out is None:
            return mine
        open_set(self.out, self.manifest, self.rt.is_main, overwrite)
        barrier(self.rt)  # rank 0 has emptied an overwritten out_dir
        drop_unreadable(self.out, mine)
        return [i for i in mine if not (self.out / shard_name(i)).is_file()]

    def result(self, kept: dict[int, Batch]) -> SyntheticImages:
        """The set: read back from ``out``, or the batches ``kept`` in memory, in order."""
        if self.out is not None:
            barrier(self.rt)
            return SyntheticImages.load(self.out)
        mean, std = self.spec.normalisation()
        meta = {k: v for k, v in self.manifest.items() if k not in ("mean", "std")}
        order = sorted(kept)
        meta["stats"] = [kept[i][1] for i in order]
        images, labels = [kept[i][0] for i in order], [self.labels_of(i) for i in order]
        return SyntheticImages(images, labels, mean=mean, std=std, meta=meta)


@contextmanager
def planned(
    teacher: nn.Module, student: nn.Module | None, n: int, config: dict[str, Any], *,
    batch_size: int, labels: Sequence[int] | Tensor | None, input: InputSpec | None,
    out_dir: str | os.PathLike[str] | None, seed: int, device: str | torch.device | None,
    accel: Accel | None,
) -> Iterator[Plan]:
    """Check the call, borrow ``teacher`` and ``student`` on the runtime, yield its plan.

    ``config`` is what the manifest records as the call's settings.
    """
    _check_call(teacher, n, batch_size)
    rt = resolve(device, accel)
    spec = input if input is not None else InputSpec.of(teacher)
    check_job_size(n, spec.shape, batch_size, out_dir=out_dir)  # before anything of size n
    sizes = batch_sizes(n, batch_size)
    if rt.world_size > 1 and out_dir is None:
        raise ValueError("distributed synthesis needs out_dir= (a directory all ranks can reach)")
    with borrowed(teacher, student, runtime=rt):
        with torch.no_grad():
            probe = teacher(rt.prepare_input(torch.zeros(2, *spec.shape)))
        num_classes = int(probe.shape[1])
        targets = _target_labels(labels, n, num_classes, seed)
        how = dict(batch_sizes=sizes, seed=seed, labels=targets, num_classes=num_classes)
        manifest = make_manifest(teacher, student, config, spec, **how)
        out = Path(out_dir) if out_dir is not None else None
        yield Plan(spec, rt, sizes, targets, manifest, seed, out)
