"""The synthetic-set disk format, whole: ``manifest.json`` plus one shard per batch.

A directory holds :data:`MANIFEST` (sizes, seed, teacher, settings, normalisation) and
shards ``shard-000000.pt``, ... (``{"images", "labels", "batch", "stats"}``), one per batch.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_shard(d, 0, torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    >>> _ = write_manifest(d, {"batch_sizes": [2], "image_shape": [1, 2, 2], "mean": [0.5], "std": [0.5]})
    >>> manifest, shards = read_set(d)
    >>> manifest["batch_sizes"], shards[0]["labels"].tolist()
    ([2], [0, 1])
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
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
from recoverprune.core.validate import probe
from recoverprune.core.version import __version__

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "MANIFEST",
    "SHARD_GLOB",
    "check_export_dir",
    "check_made_for",
    "drop_unreadable",
    "export_images",
    "make_manifest",
    "open_set",
    "read_set",
    "shard_name",
    "to_pixels",
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
    """Make ``out`` ready for the shards of the call ``manifest`` describes: a directory made
    with other settings is refused (:class:`StageMismatch`) or, with ``overwrite``, emptied;
    rank 0 (``is_main``) cleans leftovers and writes the manifest; ``OSError(ENOSPC)`` when
    the shards still to write do not fit on disk."""
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


def _schema_ok(m: Any) -> bool:
    """Whether ``m`` is a manifest of this format: the keys :func:`read_set` reads, typed."""

    def seq(v: Any, kind: type) -> bool:
        return isinstance(v, list) and bool(v) and all(type(i) in (kind, int) for i in v)

    keys = ("batch_sizes", "image_shape", "mean", "std")
    return isinstance(m, dict) and all(seq(m.get(k), float if k in keys[2:] else int) for k in keys)


def read_set(directory: Path, *, mmap: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and every shard of a finished set (memory-mapped by default), checked:
    the manifest's keys and types, every shard's images ``(batch, *image_shape)`` floats
    and integer labels ``(batch,)``.

    Raises:
        FileNotFoundError: no manifest, or a shard is missing (synthesis unfinished).
        CheckpointError: a shard is unreadable.
        ValueError: the manifest or a shard is not of this format.
    """
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {MANIFEST}: pass a directory written by "
            "synthesize(out_dir=...) or SyntheticImages.save()"
        )
    manifest = read_json(directory / MANIFEST)
    if not _schema_ok(manifest):
        raise ValueError(
            f"{directory / MANIFEST} is not a synthetic-set manifest: expected a JSON object "
            "with batch_sizes (integers), image_shape ([C, H, W]), mean and std (numbers), got "
            f"{str(manifest)[:80]}. Pass a directory written by synthesize(out_dir=...) or "
            "SyntheticImages.save(), or synthesize the set again."
        )
    shards = []
    for i, size in enumerate(manifest["batch_sizes"]):
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
        x, y, want = shard["images"], shard["labels"], (size, *manifest["image_shape"])
        if not (isinstance(x, Tensor) and x.is_floating_point() and tuple(x.shape) == want) or not (
            isinstance(y, Tensor) and not y.is_floating_point() and y.shape == want[:1]
        ):
            raise ValueError(
                f"{path} does not hold batch {i} of the set its manifest describes: expected "
                f"float images {want} and integer labels ({size},), got {_describe(x)} and "
                f"{_describe(y)}. Synthesize the set again."
            )
        shards.append(shard)
    return manifest, shards


def _describe(t: Any) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__


def check_made_for(meta: Mapping[str, Any], labels: Tensor, teacher: nn.Module, where: str) -> None:
    """Refuse (``ValueError``) a set whose input shape or classes (``num_classes``, labels)
    do not fit ``teacher``; warn when another teacher made it (``meta``: the manifest).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
        >>> meta = {"image_shape": [1, 2, 2], "num_classes": 100, "teacher": "1234abcd"}
        >>> check_made_for(meta, torch.tensor([3, 99]), net, "set")
        Traceback (most recent call last):
        ...
        ValueError: set was made for a 100-class network (teacher 1234abcd) but the teacher has 10 outputs: ...
    """
    try:
        out = probe(teacher, meta["image_shape"], "teacher")
    except ValueError as exc:
        raise ValueError(f"the images of {where} do not fit the teacher: {exc}") from exc
    width, n, made = (
        out[-1] if len(out) == 2 else None,
        meta.get("num_classes"),
        meta.get("teacher"),
    )
    top = int(labels.max()) + 1 if labels.numel() else 0
    if width is not None and (n not in (None, width) or top > width):
        raise ValueError(
            f"{where} was made for a {n or top}-class network (teacher {made or 'unrecorded'}) "
            f"but the teacher has {width} outputs: its labels do not mean the teacher's "
            "classes. Synthesize a set from this teacher."
        )
    if isinstance(made, str) and made != (ours := fingerprint(teacher)):
        warnings.warn(
            f"{where} was made for another teacher (fingerprint {made}) of the same shape "
            f"(this one is {ours}): its images were inverted from that one",
            stacklevel=3,
        )


#: what :func:`export_images` writes: an ImageFolder of PNGs, or ``images.npy`` + ``labels.npy``
EXPORT_FORMATS = ("png", "npy")


def check_export_dir(directory: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``directory`` if :func:`export_images` may write it: absent or empty, or ``overwrite``.

    Example:
        >>> import tempfile
        >>> check_export_dir(Path(tempfile.mkdtemp()) / "calibration").name
        'calibration'
    """
    d = Path(directory)
    if d.exists() and not overwrite and (not d.is_dir() or any(d.iterdir())):
        raise ValueError(
            f"{d} exists and is not empty: pass a new directory to export to, or --overwrite "
            "(overwrite=True) to replace it"
        )
    return d


def export_images(
    data: Any,
    directory: str | os.PathLike[str],
    format: str = "png",
    *,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    chunk: int = 256,
) -> Path:
    """Write a synthetic set for other toolchains' calibration: ``"png"``, an ImageFolder
    ``directory/<class>/<index>.png`` (pixels de-normalised with the set's mean and std to
    0..255; ``<class>`` a name of ``classes``, else the label zero-padded so folders sort in
    label order), or ``"npy"``, ``images.npy`` ``(N, C, H, W)`` float32 normalised as the
    model takes it and ``labels.npy`` int64. Written beside ``directory`` and renamed into
    place when complete.

    Args:
        data: a :class:`~recoverprune.SyntheticImages` (``get_batch``, ``labels``, ``mean``
            and ``std`` are read).

    Example:
        >>> import tempfile
        >>> from recoverprune import SyntheticImages
        >>> ds = SyntheticImages(torch.randn(12, 3, 4, 4), torch.arange(12) % 11)
        >>> d = export_images(ds, Path(tempfile.mkdtemp()) / "cal")
        >>> sorted(p.name for p in d.iterdir())[:3], sorted(p.name for p in (d / "00").iterdir())
        (['00', '01', '02'], ['00.png', '11.png'])
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    channels = int(data.get_batch(torch.zeros(1, dtype=torch.long))[0].shape[1])
    if format == "png" and channels not in (1, 3):
        raise ValueError(f"PNG holds 1 or 3 channels, these images have {channels}: use npy")
    d = check_export_dir(directory, overwrite)
    d.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{d.name}.{os.getpid()}."  # a hidden temporary, as core.files names them
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=d.parent))
    try:
        write = _write_png if format == "png" else _write_npy
        write(data, tmp, classes, chunk)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        remove_outputs([d])
        os.replace(tmp, d)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return d


def to_pixels(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised images as uint8 pixels ``round(255 * clamp(x * std + mean, 0, 1))``.

    Example:
        >>> to_pixels(torch.tensor([[[[-1.0, 0.0, 1.0, 9.0]]]]), [0.5], [0.5]).tolist()
        [[[[0, 128, 255, 255]]]]
    """
    m, s = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
    return (images.float() * s + m).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _write_png(data: Any, out: Path, classes: Sequence[str] | None, chunk: int) -> None:
    from PIL import Image

    labels = data.labels
    n = len(labels)
    width = len(str(max(len(classes) if classes else int(labels.max()) + 1, 1) - 1))
    digits = len(str(max(n - 1, 0)))
    for start in range(0, n, chunk):
        x, y = data.get_batch(torch.arange(start, min(start + chunk, n)))
        pixels = to_pixels(x, data.mean, data.std).permute(0, 2, 3, 1).numpy()
        for i, (image, label) in enumerate(zip(pixels, y.tolist(), strict=True)):
            folder = out / (classes[label] if classes else f"{label:0{width}d}")
            folder.mkdir(exist_ok=True)
            plain = image[..., 0] if image.shape[-1] == 1 else image
            Image.fromarray(plain).save(folder / f"{start + i:0{digits}d}.png")


def _write_npy(data: Any, out: Path, classes: Sequence[str] | None, chunk: int) -> None:
    import numpy as np

    labels = data.labels
    n = len(labels)
    first = data.get_batch(torch.zeros(1, dtype=torch.long))[0]
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.float32, shape=(n, *first.shape[1:])
    )
    for start in range(0, n, chunk):
        x, _ = data.get_batch(torch.arange(start, min(start + chunk, n)))
        images[start : start + len(x)] = x.float().numpy()
    images.flush()
    del images
    np.save(out / "labels.npy", labels.long().numpy())
