"""``evaluate()``: top-1 accuracy and loss of a model on labelled images."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from recoverprune._progress import progress as progress_bar
from recoverprune._runtime import resolve

__all__ = ["EvalResult", "evaluate", "resolve_data"]


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        top1: accuracy in percent (0–100).
        loss: mean cross-entropy.
        n: number of images.
        seconds: wall time.

    Example:
        >>> EvalResult(top1=87.5, loss=0.4, n=8, seconds=0.1).top1
        87.5
    """

    top1: float
    loss: float
    n: int
    seconds: float


def resolve_data(
    model: nn.Module,
    data: Any,
    *,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Turn a path into a dataset normalised as ``model`` expects; pass datasets through.

    Mean/std (and image size) come from the model's ``pretrained_cfg`` hint when present,
    else the CIFAR/ImageNet defaults.
    """
    if not isinstance(data, (str, os.PathLike)):
        return data
    from recoverprune.data import DEFAULT_MEAN, DEFAULT_STD, load_split

    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return load_split(
        data,
        split,
        mean=cfg.get("mean", DEFAULT_MEAN),
        std=cfg.get("std", DEFAULT_STD),
        cache_dir=cache_dir,
        image_size=int(size[-1]) if size else None,
    )


def _batches(data: Any, batch_size: int) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int]:
    fast = getattr(data, "batch", None) or getattr(data, "get_batch", None)
    if isinstance(data, Dataset) and callable(fast):
        n = len(data)  # type: ignore[arg-type]
        return (fast(torch.arange(s, min(s + batch_size, n))) for s in range(0, n, batch_size)), n
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else 0  # type: ignore[arg-type]
    return ((x, torch.as_tensor(y)) for x, y in loader), total


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on labelled images.

    Runs batched under ``torch.inference_mode``. The model's mode (every submodule's
    ``training`` flag) and device are restored afterwards, also on an exception.

    Args:
        model: the classifier.
        data: a Dataset of ``(image, label)``, a DataLoader, or a path to an ImageFolder
            directory or ``.tar.gz`` (normalised per the model's ``pretrained_cfg``).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA if available).
        split: sub-folder of a path to read (``"test"``).
        cache_dir: where archives are extracted.
        progress: show a rich progress bar.

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
    rt = resolve(device)
    data = resolve_data(model, data, split=split, cache_dir=cache_dir)
    modes = [(m, m.training) for m in model.modules()]
    first = next(model.parameters(), None)
    old_device = first.device if first is not None else None
    t0 = time.perf_counter()
    correct, loss_sum, seen = 0, 0.0, 0
    try:
        model.eval()
        if old_device is not None and old_device != rt.device:
            model.to(rt.device)
        batches, total = _batches(data, batch_size)
        with (
            torch.inference_mode(),
            progress_bar("Evaluating", total or None, progress and rt.is_main) as bar,
        ):
            for x, y in batches:
                x, y = x.to(rt.device), y.to(rt.device)
                with rt.autocast():
                    logits = model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.advance(len(y), top1=100.0 * correct / seen)
    finally:
        for m, flag in modes:
            m.training = flag
        if old_device is not None and old_device != rt.device:
            model.to(old_device)
    if seen == 0:
        raise ValueError("evaluate() got no images: the dataset is empty")
    return EvalResult(100.0 * correct / seen, loss_sum / seen, seen, time.perf_counter() - t0)
