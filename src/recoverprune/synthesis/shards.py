"""A synthetic set on disk: its manifest, the check that a directory belongs to this call,
room for its shards and which of them are unreadable."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recoverprune.core.files import check_free_space, clean_stale, remove_outputs
from recoverprune.core.io import fingerprint, read_json, write_json_atomic
from recoverprune.core.stages import StageMismatch, check_key
from recoverprune.core.version import __version__
from recoverprune.data.synthetic import MANIFEST, SHARD_GLOB, shard_name
from recoverprune.synthesis.config import InversionConfig

__all__ = ["check_or_write_manifest", "make_manifest", "unreadable_shards"]


def make_manifest(
    teacher: nn.Module,
    student: nn.Module | None,
    cfg: InversionConfig,
    *,
    n: int,
    batch_sizes: list[int],
    seed: int,
    shape: tuple[int, int, int],
    num_classes: int,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    return {
        "format": 1,
        "n": n,
        "batch_sizes": batch_sizes,
        "seed": seed,
        "image_shape": list(shape),
        "num_classes": num_classes,
        "labels_sha": hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16],
        "teacher": fingerprint(teacher),
        "student": fingerprint(student) if student is not None else None,
        "config": asdict(cfg),
        "mean": list(mean),
        "std": list(std),
    }


_IDENTITY_KEYS = (
    "format",
    "n",
    "batch_sizes",
    "seed",
    "image_shape",
    "num_classes",
    "labels_sha",
    "teacher",
    "student",
    "config",
    "mean",
    "std",
)


def check_or_write_manifest(
    out: Path, manifest: dict[str, Any], is_main: bool, overwrite: bool = False
) -> None:
    """Refuse (or, with ``overwrite``, empty) an ``out`` made with other settings; clean leftovers.

    Shards and the manifest of another synthesis are never mixed with this one's.
    """
    path = out / MANIFEST
    if is_main:
        clean_stale(out)
    if path.exists():
        try:
            check_key(read_json(path), {k: manifest[k] for k in _IDENTITY_KEYS}, out)
            return _check_room(out, manifest)
        except StageMismatch:
            if not overwrite:
                raise
        if is_main:
            remove_outputs([path, *sorted(out.glob(SHARD_GLOB))])
    _check_room(out, manifest)
    if is_main:
        write_json_atomic({**manifest, "library": __version__}, path)


def _check_room(out: Path, manifest: dict[str, Any]) -> None:
    """Raise ``OSError(ENOSPC)`` when the shards still to write clearly do not fit on disk."""
    left = [b for i, b in enumerate(manifest["batch_sizes"]) if not (out / shard_name(i)).exists()]
    check_free_space(out, sum(left) * math.prod(manifest["image_shape"]) * 4)


def unreadable_shards(out: Path, indices: list[int]) -> list[int]:
    """Finished-looking shards among ``indices`` that cannot be read; they are deleted."""
    bad = []
    for i in indices:
        path = out / shard_name(i)
        if not path.is_file():
            continue
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            ok = isinstance(shard, dict) and {"images", "labels"} <= shard.keys()
        except Exception:  # any unreadable file: regenerate it (batch i depends on (seed, i))
            ok = False
        if not ok:
            path.unlink()
            bad.append(i)
    return bad
