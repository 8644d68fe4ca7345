"""``evaluate()``: top-1 accuracy and loss of a model on labelled images, in its own precision."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from recoverprune.core.borrow import borrowed
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import Accel, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.validate import check_image_size
from recoverprune.data.folders import DataError, load_split, match_classes
from recoverprune.data.transfer import as_transfer_set

__all__ = ["EvalResult", "evaluate", "model_classes", "output_width", "resolve_data"]


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`: top-1 in percent, mean cross-entropy, images, wall time.

    Example:
        >>> EvalResult(top1=87.5, loss=0.4, n=8, seconds=0.1).top1
        87.5
    """

    top1: float
    loss: float
    n: int
    seconds: float


def model_classes(model: nn.Module) -> list[str] | None:
    """The class names ``model`` records (timm-style ``pretrained_cfg["label_names"]``).

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> model_classes(net) is None
        True
        >>> net.pretrained_cfg = {"label_names": ["cat", "dog"]}
        >>> model_classes(net)
        ['cat', 'dog']
    """
    cfg = getattr(model, "pretrained_cfg", None)
    names = cfg.get("label_names") if isinstance(cfg, dict) else None
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def output_width(
    model: nn.Module, shape: Sequence[int], trained: Sequence[int] | None = None
) -> int | None:
    """How many classes ``model`` scores (``None`` unless its output is ``(batch,
    classes)``), from one probe image of ``shape``; refuses a shape far below ``trained``
    (:func:`~recoverprune.core.validate.check_image_size`).

    Example:
        >>> from torch import nn
        >>> output_width(nn.Sequential(nn.Flatten(), nn.Linear(12, 7)), (3, 2, 2))
        7
    """
    out = check_image_size(model, shape, trained=trained)
    return int(out[1]) if len(out) == 2 else None


def _names_for(model: nn.Module, classes: Sequence[str] | None, width: int | None) -> Any:
    """The class names to label folders by: given ones, else the model's when they fit."""
    if classes is not None:
        return list(classes)
    names = model_classes(model)
    if names is not None and width is not None and len(names) != width:
        warnings.warn(
            f"the model records {len(names)} class names but has {width} outputs (a replaced "
            "head?); its names are not used, class folders are labelled in sorted order",
            stacklevel=3,
        )
        return None
    return names


def resolve_data(
    model: nn.Module,
    data: Any,
    *,
    input: InputSpec | None = None,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    subset: bool = False,
) -> Any:
    """Turn a path into a dataset read as ``model`` expects; pass datasets through.

    Read as ``input`` says (default: the model's :class:`~recoverprune.InputSpec`). The class
    folders must match the model's outputs, found with one probe image; they are labelled by
    name when names are known (``classes``, else :func:`model_classes`), else in sorted order.

    Raises:
        DataError: class folders that do not match the model's outputs, or a path that is
            not an ImageFolder tree (see :func:`~recoverprune.data.load_split`).
        ValueError: the model cannot take images of the input size.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from torch import nn
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / "test" / c).mkdir(parents=True)
        ...     Image.new("RGB", (4, 4)).save(root / "test" / c / "0.png")
        >>> three = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        >>> four = InputSpec.of(three, image_size=4)
        >>> resolve_data(three, root, input=four, cache_dir=root / "c")
        Traceback (most recent call last):
        ...
        recoverprune.data.folders.DataError: ...test has 2 class folders (cat, dog) but the model has 3 outputs: ...
        >>> ds = resolve_data(three, root, input=four, cache_dir=root / "c",
        ...                   classes=["bird", "cat", "dog"], subset=True)
        >>> ds.labels.tolist()
        [1, 2]
    """
    if not isinstance(data, (str, os.PathLike)):
        return data

    spec = input or InputSpec.of(model)
    mean_, std_ = spec.normalisation()
    recorded = InputSpec.of(model).size if input is not None else None
    width = output_width(model, spec.shape, recorded) if spec.size is not None else None
    names = _names_for(model, classes, width)
    ds = load_split(
        data,
        split,
        mean=mean_,
        std=std_,
        cache_dir=cache_dir,
        image_size=spec.size,
        channels=spec.channels,
        num_classes=width,
        classes=names,
        subset=subset,
    )
    if width is None:  # the input size was unknown: probe at the size the images have
        width = output_width(model, tuple(ds.images.shape[1:]))
        match_classes(ds.classes, width, _names_for(model, names, width), where=data)
    return ds


def _batches(data: Any, batch_size: int) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int]:
    if isinstance(data, IterableDataset):  # no random access: stream it
        data = DataLoader(data, batch_size=batch_size)
    if isinstance(data, DataLoader):
        total = len(data.dataset) if hasattr(data.dataset, "__len__") else 0  # type: ignore[arg-type]
        return ((x, torch.as_tensor(y)) for x, y in data), total
    view = as_transfer_set(data)
    n = len(view)
    return (
        view.get_batch(torch.arange(s, min(s + batch_size, n))) for s in range(0, n, batch_size)
    ), n


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    input: InputSpec | None = None,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    subset: bool = False,
    amp: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on labelled images.

    Batched under ``torch.inference_mode``, in the model's own precision (float32 for a
    float32 model); its mode and device are restored afterwards, also on an exception.

    Args:
        model: the classifier.
        data: a Dataset of ``(image, label)``, a ``TensorDataset``, ``(images, labels)``
            tensors, a DataLoader, or a path to an ImageFolder directory or ``.tar.gz``
            (read as ``input`` says).
        input: how a path's images are read (default: the model's
            :class:`~recoverprune.InputSpec`, e.g. ``InputSpec.of(model, image_size=224)``).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA if available).
        split: sub-folder of a path to read (``"test"``).
        cache_dir: where archives are extracted.
        classes: the model's class names in output order, to label a path's class folders
            by name (default: those it records, else folder order; :func:`resolve_data`).
        subset: a path holds a deliberate subset of the classes (needs class names).
        amp: autocast (bf16 on CUDA and CPUs with native bf16): faster, top-1 may differ.
        progress: show a rich progress bar.

    Raises:
        DataError: a path's class folders do not match the model's outputs, or labels
            (of any data) fall outside them: the labels would not mean what the model means.
        ValueError: the model's outputs are NaN/Inf (the message names the first layer
            that made one): no accuracy is reported.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from recoverprune import SyntheticImages, evaluate
        >>> data = SyntheticImages(torch.randn(8, 3, 2, 2), torch.zeros(8, dtype=torch.long))
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].bias.copy_(torch.tensor([10.0, -10.0]))
        >>> evaluate(model, data, progress=False).top1
        100.0
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of images, got {batch_size!r}")
    rt = resolve(device, Accel(amp="auto" if amp else "off"))
    data = resolve_data(
        model, data, input=input, split=split, cache_dir=cache_dir, classes=classes, subset=subset
    )
    declared = getattr(data, "classes", None)
    t0 = time.perf_counter()
    correct, loss_sum, seen = 0, 0.0, 0
    batches, total = _batches(data, batch_size)
    with (
        borrowed(model, runtime=rt),  # mode, flags and tensors restored, also on an exception
        torch.inference_mode(),
        progress_bar("Evaluating", total or None, progress and rt.is_main) as bar,
    ):
        for x, y in batches:
            x, y = rt.prepare_input(x), y.to(rt.device)
            with rt.autocast():
                logits = model(x).float()
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(_nonfinite(model, x, rt))
            _check_labels(logits, y, declared)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.advance(len(y), top1=100.0 * correct / seen)
    if seen == 0:
        raise ValueError("evaluate() got no images: the dataset is empty")
    return EvalResult(100.0 * correct / seen, loss_sum / seen, seen, time.perf_counter() - t0)


def _nonfinite(model: nn.Module, x: torch.Tensor, rt: Any) -> str:
    """Why ``model`` scores ``x`` NaN/Inf: the first layer whose output is not finite, found
    by one more pass with forward hooks (removed afterwards, also on an error)."""
    bad: list[str] = []

    def watch(name: str, m: nn.Module, out: Any) -> None:
        if not bad and isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            bad.append(f"{name or 'the model'} ({type(m).__name__})")

    handles = [
        m.register_forward_hook(lambda m, _i, out, name=name: watch(name, m, out))
        for name, m in model.named_modules()
    ]
    try:
        with rt.autocast():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return (
        f"the model's outputs are NaN/Inf (first made by {bad[0] if bad else 'no layer'}): "
        "no accuracy can be reported. Its weights or BatchNorm statistics are broken (e.g. "
        "a zero or negative running_var, a diverged training): evaluate an intact checkpoint."
    )


def _check_labels(logits: torch.Tensor, y: torch.Tensor, declared: Any) -> None:
    """Labels that the model's outputs cannot mean: a clear error, never an IndexError."""
    width = int(logits.shape[-1])
    if isinstance(declared, (list, tuple)) and declared and len(declared) != width:
        raise DataError(
            f"the data has {len(declared)} classes ({', '.join(map(str, declared[:8]))}"
            f"{' ...' if len(declared) > 8 else ''}) but the model has {width} outputs: its "
            "labels would not mean what the model means. Evaluate on data of the model's "
            "classes, or read a subset of them by name (classes=, subset=True)."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= width):
        raise DataError(
            f"labels range from {int(y.min())} to {int(y.max())} but the model has {width} "
            "outputs: the data has classes the model does not. Evaluate on data of the "
            f"model's classes, labelled 0 to {width - 1}."
        )
