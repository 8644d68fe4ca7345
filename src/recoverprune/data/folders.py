"""``torchvision.datasets.ImageFolder`` trees and ``.tar.gz`` archives: extracted once, class
folders checked against the model's outputs, decoded once into a cached ``uint8`` tensor."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from recoverprune.core.files import clean_stale
from recoverprune.core.io import read_json, save_atomic, sha256_file, write_json_atomic
from recoverprune.core.spec import DEFAULT_MEAN, DEFAULT_STD, per_channel

__all__ = ["DataError", "ImageTensorDataset", "class_folders", "default_cache_dir", "extract",
    "load_split", "match_classes"]

_MARKER = ".recoverprune-complete.json"
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class DataError(ValueError):
    """The data path is missing, empty, corrupt or not in ImageFolder layout.

    Example:
        >>> try:
        ...     load_split("/no/such/dir")
        ... except DataError as exc:
        ...     print(str(exc).split(" (")[0])
        data path not found: /no/such/dir
    """


def default_cache_dir() -> Path:
    """``$RECOVERPRUNE_CACHE`` or ``~/.cache/recoverprune``."""
    return Path(os.environ.get("RECOVERPRUNE_CACHE", Path.home() / ".cache" / "recoverprune"))


def extract(
    archive: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Extract a tar(.gz) of an ImageFolder tree once into the cache and return its root.

    A temporary directory is renamed into place, under a lock, only when complete, with a
    marker of the archive's SHA-256; a complete extraction is reused and never removed.

    Raises:
        DataError: the archive is missing, corrupt or truncated (no cache is left behind).

    Example:
        >>> import io, tarfile, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with tarfile.open(d / "toy.tar.gz", "w:gz") as tar:
        ...     info = tarfile.TarInfo("test/cat/0.txt"); info.size = 1
        ...     tar.addfile(info, io.BytesIO(b"x"))
        >>> root = extract(d / "toy.tar.gz", cache_dir=d / "cache")
        >>> (root / "test" / "cat" / "0.txt").read_text()
        'x'
    """
    src = Path(archive)
    if not src.is_file():
        raise DataError(f"archive not found: {src}")
    digest = sha256_file(src)  # hashed once per process while the archive is unchanged
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = src.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    target = cache / f"{stem}-{digest[:12]}"
    if _complete(target, digest):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    clean_stale(cache)  # half-extracted folders of killed runs
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=cache))
    try:
        with tarfile.open(src) as tar:
            for member in tar:
                tar.extract(member, tmp, filter="data")
        write_json_atomic({"sha256": digest, "archive": str(src)}, tmp / _MARKER)
        with _locked(cache):
            if not _complete(target, digest):  # else another process finished first
                shutil.rmtree(target, ignore_errors=True)  # an incomplete or foreign one
                os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # full disk, read-only cache, ...: not the archive's fault
        raise DataError(
            f"{src} is corrupt or truncated ({type(exc).__name__}: {exc}); get a complete copy "
            "of the archive (its README gives the SHA-256)"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(target: Path, digest: str) -> bool:
    """Whether ``target`` is a finished extraction of the archive with SHA-256 ``digest``."""
    try:
        return read_json(target / _MARKER).get("sha256") == digest
    except (OSError, ValueError):  # absent or corrupt marker: not complete
        return False


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An advisory inter-process lock on ``directory`` (POSIX ``flock``; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # Windows: the rename is still atomic, only the race is wider
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class ImageTensorDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decoded ``uint8`` images ``(N, C, H, W)`` with labels; serves normalised floats.

    Example:
        >>> import torch
        >>> ds = ImageTensorDataset(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8),
        ...                         torch.tensor([0, 1]), ["a", "b"], mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> x, y = ds[1]
        >>> float(x.max()), y
        (1.0, 1)
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
        mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError("labels must have one entry per image")
        self.images, self.labels, self.classes = images, labels.long(), list(classes)
        self.mean = per_channel(mean, images.shape[1], "mean")
        self.std = per_channel(std, images.shape[1], "std")
        self._mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and labels at ``indices`` (fast path, no DataLoader)."""
        x = self.images[indices].float().div_(255.0)
        return (x - self._mean) / self._std, self.labels[indices]


def _split_root(root: Path, split: str) -> Path:
    """The folder of ``root`` that holds the split's class folders."""
    if not root.is_dir():
        raise DataError(f"{root} is neither a directory nor a .tar/.tar.gz archive")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DataError(f"{root} is empty: expected an ImageFolder tree <split>/<class>/<image>")
    if not split:
        return root  # class folders right here
    for folder in (root / split, *(root / e / split for e in entries)):  # <top>/<split>/ too
        if folder.is_dir():
            return folder
    raise DataError(
        f"{root} has no '{split}' folder (found: {', '.join(entries[:10])}). Pass one of those "
        "as the split (--split on the command line, split= in Python), or a directory laid "
        "out as <split>/<class>/<image>"
    )


def class_folders(
    folder: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> list[str]:
    """The class folders of an ImageFolder split, sorted: what its labels are made from.

    Hidden entries and files are not classes, nor (with a warning) a symlink into the data
    ``root`` (default ``folder``) or above ``folder``: a loop or a second view of the data
    would shift every label after it. Links to directories outside the root are classes.

    Example:
        >>> import tempfile, pathlib, warnings
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "cat").mkdir(); (d / ".cache").mkdir(); (d / "again").symlink_to(d)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     class_folders(d)
        ['cat']
        >>> "again" in str(caught[0].message)
        True
    """
    here = Path(folder)
    top = Path(root if root is not None else folder).resolve()
    inside = here.resolve()
    names = []
    for p in sorted(here.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        target = p.resolve()
        if p.is_symlink() and (top in (target, *target.parents) or target in inside.parents):
            warnings.warn(
                f"skipped {p}: a symlink to {target}, inside the data root {top} or above the "
                "split (a loop or a second view of the data), is not a class folder. Remove "
                "the link, or replace it with the folder itself.",
                stacklevel=2,
            )
            continue
        names.append(p.name)
    return names


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_classes(
    found: Sequence[str], num_classes: int | None = None, names: Sequence[str] | None = None,
    *, subset: bool = False, where: str | os.PathLike[str] = "the data",
) -> list[int]:
    """The label of each class folder in ``found``: the model output it stands for.

    By name when the model's class ``names`` (in output order) are known, else by sorted
    position; either way exactly the model's classes (``num_classes`` folders, or exactly
    ``names``), so that no folder shifts the labels. ``subset=True`` (needs ``names``)
    allows absent classes.

    Raises:
        DataError: the folders do not match the model's outputs; the message names them.

    Example:
        >>> match_classes(["cat", "dog"], 2)
        [0, 1]
        >>> match_classes(["dog"], 3, ["bird", "cat", "dog"], subset=True)
        [2]
        >>> match_classes(["b", "c"], 3, where="data/test")
        Traceback (most recent call last):
        ...
        recoverprune.data.folders.DataError: data/test has 2 class folders (b, c) but the model has 3 outputs: a class folder is missing or extra, and labels follow folder order, so they would be shifted. Restore the missing folder or remove the extra one. To read a deliberate subset ...
    """
    found = list(found)
    if names is None:
        if subset:
            raise DataError(
                "subset=True (--subset) labels class folders by name, so it needs the model's "
                "class names in output order: pass classes=[...] (--classes), or save them "
                "with the model"
            )
        if num_classes is not None and len(found) != num_classes:
            raise DataError(
                f"{where} has {len(found)} class folders ({_listing(found)}) but the model has "
                f"{num_classes} outputs: a class folder is missing or extra, and labels follow "
                "folder order, so they would be shifted. Restore the missing folder or remove "
                "the extra one. To read a deliberate subset of the classes, give the model's "
                "class names in output order (classes=[...] in Python, --classes on the command "
                "line) and subset=True (--subset): folders are then labelled by name, not by "
                "position."
            )
        return list(range(len(found)))
    names = [str(n) for n in names]
    if num_classes is not None and len(names) != num_classes:
        raise DataError(
            f"{len(names)} class names were given but the model has {num_classes} outputs; "
            "give one name per output, in output order"
        )
    if len(set(names)) != len(names):
        raise DataError(f"the class names repeat a name: {_listing(names)}")
    unknown = [f for f in found if f not in names]
    missing = [n for n in names if n not in found]
    if unknown:
        raise DataError(
            f"{where} has class folders that are not among the model's classes: "
            f"{_listing(unknown)} (its classes: {_listing(names)}). Rename or remove those "
            "folders; a folder is labelled by its name."
        )
    if missing and not subset:
        raise DataError(
            f"{where} lacks the class folders {_listing(missing)} of the model's "
            f"{len(names)} classes. Restore them, or pass subset=True (--subset) to read the "
            f"{len(found)} classes present, each labelled by its name."
        )
    return [names.index(f) for f in found]


class _Folders(ImageFolder):
    """torchvision's ImageFolder over the class folders given, labelled in their order."""

    def __init__(self, folder: Path, classes: list[str], loader: Any) -> None:
        self._given = classes
        super().__init__(str(folder), loader=loader, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given, {c: i for i, c in enumerate(self._given)}


def _decode(path: str, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """One image as an ``(H, W, C)`` uint8 array; a file that does not decode is named."""
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(
            f"{path} cannot be decoded as an image ({type(exc).__name__}: {exc}); delete or "
            "replace that file and rerun"
        ) from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_folder(
    folder: Path, classes: list[str], size: tuple[int, int] | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the class folders, decoded: ``uint8 (N, C, H, W)`` and folder labels."""
    ds = _Folders(folder, classes, partial(_decode, size=size, mode=mode))
    if not ds.samples:
        raise DataError(f"{folder} holds no images ({', '.join(ds.extensions)})")
    arrays = [ds[i][0] for i in range(len(ds))]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images in {folder} have different sizes {sorted(shapes)[:3]}...; pass image_size"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.long)


def load_split(
    path: str | os.PathLike[str], split: str = "test", *, mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD, cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] | None = None, channels: int = 3,
    num_classes: int | None = None, classes: Sequence[str] | None = None, subset: bool = False,
) -> ImageTensorDataset:
    """Load one split of an ImageFolder tree (directory or archive) as a tensor dataset.

    ``path`` holds ``<split>/<class>/<image>`` (class folders directly with ``split=""``),
    or is a ``.tar``/``.tar.gz`` of such a tree. Images are decoded once in ``channels``'
    mode (1, 3 or 4), resized to ``image_size`` (int or ``(H, W)``) if given, and cached.
    :func:`class_folders` are checked by :func:`match_classes` before decoding; ``ds.classes``
    are then the model's names (``classes``), else the folders as found.

    Raises:
        DataError: missing/empty path, no such split, no class folders or images, mixed
            image sizes without ``image_size``, a corrupt archive, or class folders that
            do not match ``num_classes``/``classes``.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / "test" / c).mkdir(parents=True)
        ...     Image.new("RGB", (4, 4)).save(root / "test" / c / "0.png")
        >>> ds = load_split(root, "test", cache_dir=root / "cache")
        >>> len(ds), ds.classes, tuple(ds.images.shape)
        (2, ['cat', 'dog'], (2, 3, 4, 4))
        >>> ds = load_split(root, cache_dir=root / "cache", classes=["bird", "cat", "dog"],
        ...                 subset=True)
        >>> ds.labels.tolist(), ds.classes
        ([1, 2], ['bird', 'cat', 'dog'])
    """
    src = Path(path)
    if not src.exists():
        raise DataError(f"data path not found: {src} (an ImageFolder directory or a .tar.gz)")
    if channels not in _MODES:
        raise DataError(f"cannot read images with {channels} channels (1, 3 or 4 are supported)")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = extract(src, cache) if src.is_file() else src
    folder = _split_root(root, split)
    found = class_folders(folder, root)
    if not found:
        raise DataError(f"{folder} has no class folders: expected <class>/<image> inside it")
    label_of = match_classes(found, num_classes, classes, subset=subset, where=folder)
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    size = None if size is None else (int(size[0]), int(size[1]))
    # the key changes when the folder's class directories change (files added/removed);
    # the key of an RGB square (the original layout) is unchanged, so old caches stay valid
    stamp = [(name, (folder / name).stat().st_mtime_ns) for name in found]
    square = size[0] if size is not None and size[0] == size[1] else size
    mode = _MODES[channels]
    tag = f"{folder.resolve()}|{square}|{stamp}" + ("" if mode == "RGB" else f"|{mode}")
    key = hashlib.sha256(tag.encode()).hexdigest()[:12]
    cached = cache / "decoded" / f"{folder.name}-{key}.pt"
    clean_stale(cached.parent)
    state = _load_cached(cached)
    if state is not None and list(state["classes"]) == found:
        images, labels = state["images"], state["labels"]
    else:
        images, labels = _decode_folder(folder, found, size, mode)
        save_atomic({"images": images, "labels": labels, "classes": found}, cached)
    labels = torch.tensor(label_of, dtype=torch.long)[labels]  # folder order -> model outputs
    return ImageTensorDataset(images, labels, list(classes or found), mean, std)


def _load_cached(cached: Path) -> dict[str, Any] | None:
    """The decoded-image cache at ``cached``, or ``None`` (a corrupt one is deleted)."""
    if not cached.is_file():
        return None
    try:
        state = torch.load(cached, weights_only=True)
        if isinstance(state, dict) and {"images", "labels", "classes"} <= state.keys():
            return state
    except Exception:  # truncated or corrupt: decode again below
        pass
    cached.unlink(missing_ok=True)
    return None
