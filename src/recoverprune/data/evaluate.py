"""``evaluate()``: top-1 accuracy and loss of a model on labelled images."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import resolve
from recoverprune.core.spec import InputSpec
from recoverprune.data.folders import load_split
from recoverprune.data.transfer import as_transfer_set

__all__ = ["EvalResult", "evaluate", "read_as", "resolve_data"]


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
    channels: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: int | Sequence[int] | None = None,
) -> Any:
    """Turn a path into a dataset read as ``model`` expects; pass datasets through.

    Channels, mean/std and size come from the arguments, else the model's
    :class:`~recoverprune.InputSpec` (its ``pretrained_cfg`` hint, channels from its first
    convolution): a 1-channel model reads images as grayscale. Images are resized to
    ``resize``, else to the model's input size when known.
    """
    if not isinstance(data, (str, os.PathLike)):
        return data

    spec = InputSpec.of(model, image_size=resize, channels=channels, mean=mean, std=std)
    mean_, std_ = spec.normalisation()
    return load_split(
        data,
        split,
        mean=mean_,
        std=std_,
        cache_dir=cache_dir,
        image_size=spec.size,
        channels=spec.channels,
    )


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
    batch_size: int = 512,
    device: str | torch.device | None = None,
    split: str = "test",
    cache_dir: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: int | Sequence[int] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on labelled images.

    Runs batched under ``torch.inference_mode``. The model's mode (every submodule's
    ``training`` flag) and device are restored afterwards, also on an exception.

    Args:
        model: the classifier.
        data: a Dataset of ``(image, label)``, a ``TensorDataset``, ``(images, labels)``
            tensors, a DataLoader, or a path to an ImageFolder directory or ``.tar.gz``
            (read in the model's channel mode and normalised per its
            :class:`~recoverprune.InputSpec`).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA if available).
        split: sub-folder of a path to read (``"test"``).
        cache_dir: where archives are extracted.
        channels: input channels of a path's images, when the model carries no hint
            (default: from the model).
        mean: normalisation mean for a path's images, one value or one per channel
            (default: from the model).
        std: normalisation standard deviation, as ``mean``.
        resize: size to resize a path's images to (default: the model's input size when
            known, else as stored), e.g. 224 to evaluate a 224x224 model on CIFAR-10.
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
    data = resolve_data(
        model,
        data,
        split=split,
        cache_dir=cache_dir,
        channels=channels,
        mean=mean,
        std=std,
        resize=resize,
    )
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


def read_as(spec: InputSpec) -> dict[str, Any]:
    """How labelled images are read for this teacher (channel mode, size, normalisation)."""
    return {"channels": spec.channels, "mean": spec.mean, "std": spec.std, "resize": spec.size}
