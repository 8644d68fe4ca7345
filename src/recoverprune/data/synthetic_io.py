"""The synthetic-set disk format, whole: ``manifest.json`` plus one shard per batch.

A directory holds :data:`MANIFEST` (what made the set: sizes, seed, teacher, settings,
normalisation) and shards ``shard-000000.pt``, ... (``{"images", "labels", "batch",
"stats"}``). Synthesis writes a shard per finished batch and resumes from the ones present;
:meth:`~recoverprune.SyntheticImages.load` reads them memory-mapped.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_shard(d, 0, torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    >>> _ = write_manifest(d, {"batch_sizes": [2], "mean": [0.5], "std": [0.5]})
    >>> manifest, shards = read_set(d)
    >>> manifest["batch_sizes"], shards[0]["labels"].tolist()
    ([2], [0, 1])
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recoverprune.core.files import check_free_space, clean_stale, remove_outputs
from recoverprune.core.io import (
    CheckpointError,
    fingerprint,
    read_json,
    save_atomic,
    write_json_atomic,
)
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import StageMismatch, check_key
from recoverprune.core.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SHARD_GLOB",
    "drop_unreadable",
    "make_manifest",
    "open_set",
    "read_set",
    "shard_name",
    "write_manifest",
    "write_shard",
]

MANIFEST = "manifest.json"
#: the shards of a synthetic set on disk (see :func:`shard_name`)
SHARD_GLOB = "shard-*.pt"
FORMAT_VERSION = 1
#: the manifest entries that say which call made a directory (a resumed call must match)
_IDENTITY_KEYS = (
    *("format", "n", "batch_sizes", "seed", "image_shape", "num_classes", "labels_sha"),
    *("teacher", "student", "config", "mean", "std"),
)


def shard_name(index: int) -> str:
    """File name of batch ``index``.

    Example:
        >>> shard_name(3)
        'shard-000003.pt'
    """
    return f"shard-{index:06d}.pt"


def make_manifest(
    teacher: nn.Module,
    student: nn.Module | None,
    config: dict[str, Any],
    spec: InputSpec,
    *,
    batch_sizes: list[int],
    seed: int,
    labels: Tensor,
    num_classes: int,
) -> dict[str, Any]:
    """What a synthesis call records about itself (and checks on resume)."""
    mean, std = spec.normalisation()
    return {
        "format": FORMAT_VERSION,
        "n": sum(batch_sizes),
        "batch_sizes": batch_sizes,
        "seed": seed,
        "image_shape": list(spec.shape),
        "num_classes": num_classes,
        "labels_sha": hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16],
        "teacher": fingerprint(teacher),
        "student": fingerprint(student) if student is not None else None,
        "config": config,
        "mean": list(mean),
        "std": list(std),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (stamped with the library version) atomically."""
    return write_json_atomic({**manifest, "library": __version__}, directory / MANIFEST)


def write_shard(
    directory: Path, index: int, images: Tensor, labels: Tensor, stats: dict[str, Any] | None = None
) -> Path:
    """Write batch ``index`` atomically."""
    shard: dict[str, Any] = {"images": images, "labels": labels.clone(), "batch": index}
    if stats is not None:
        shard["stats"] = stats
    return save_atomic(shard, directory / shard_name(index))


def open_set(out: Path, manifest: dict[str, Any], is_main: bool, overwrite: bool = False) -> None:
    """Make ``out`` ready for the shards of the call ``manifest`` describes.

    A directory made with other settings is refused (:class:`StageMismatch`) or, with
    ``overwrite``, emptied: shards of two syntheses are never mixed. Rank 0
    (``is_main``) removes a killed run's leftovers and writes the manifest. Raises
    ``OSError(ENOSPC)`` when the shards still to write clearly do not fit on disk.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if is_main:
        clean_stale(out)
    fresh = True
    if path.exists():
        try:
            check_key(read_json(path), {k: manifest[k] for k in _IDENTITY_KEYS}, out)
            fresh = False
        except StageMismatch:
            if not overwrite:
                raise
            if is_main:
                remove_outputs([path, *sorted(out.glob(SHARD_GLOB))])
    sizes = manifest["batch_sizes"]
    left = sum(b for i, b in enumerate(sizes) if not (out / shard_name(i)).exists())
    check_free_space(out, left * math.prod(manifest["image_shape"]) * 4)
    if fresh and is_main:
        write_manifest(out, manifest)


def drop_unreadable(out: Path, indices: Sequence[int]) -> list[int]:
    """Delete the shards among ``indices`` that exist but cannot be read; return their indices."""
    bad = []
    for i in indices:
        path = out / shard_name(i)
        if path.is_file() and _read_shard(path, mmap=True) is None:
            path.unlink()
            bad.append(i)
    return bad


def _read_shard(path: Path, mmap: bool) -> dict[str, Any] | None:
    """The shard at ``path``, or ``None`` when it is unreadable or not a shard."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # any unreadable file counts as missing: batch i can be made again
        return None
    return shard if isinstance(shard, dict) and {"images", "labels"} <= shard.keys() else None


def read_set(directory: Path, *, mmap: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and every shard of a finished set (memory-mapped by default).

    Raises:
        FileNotFoundError: no manifest, or a shard is missing (synthesis unfinished).
        CheckpointError: a shard is unreadable.
    """
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {MANIFEST}: pass a directory written by "
            "synthesize(out_dir=...) or SyntheticImages.save()"
        )
    manifest = read_json(directory / MANIFEST)
    shards = []
    for i in range(len(manifest["batch_sizes"])):
        path = directory / shard_name(i)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the synthesis in {directory} is unfinished; rerun the "
                "same synthesize call (or CLI command) to resume it"
            )
        shard = _read_shard(path, mmap)
        if shard is None:
            raise CheckpointError(
                f"{path} is not a readable shard; it is corrupt or truncated. Rerun the "
                "synthesize call (or CLI command) that made this directory: it makes "
                "unreadable shards again."
            )
        shards.append(shard)
    return manifest, shards
