"""Sanity checks of a model's weights and of the input it is asked to take, before any compute."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "MAX_ABS_RUNNING_MEAN",
    "MAX_ABS_WEIGHT",
    "MAX_RUNNING_VAR",
    "check_finite",
    "check_image_size",
    "check_plausible",
    "probe",
]


#: no trained or freshly initialised parameter holds a value this large; corrupted bytes do
#: (a random float32 bit pattern exceeds it about 40 % of the time). Not lower: a short
#: distillation of a tiny ShuffleNetV2 legitimately grew BatchNorm weights to 5e4.
MAX_ABS_WEIGHT = 1e6


#: BatchNorm running variance beyond this (a standard deviation of 1e4) is not a statistic
MAX_RUNNING_VAR = 1e8


#: BatchNorm running mean beyond this, likewise
MAX_ABS_RUNNING_MEAN = 1e5


def _names(bad: Sequence[str]) -> str:
    return "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise ``ValueError`` naming the parameters/buffers of ``model`` holding NaN or Inf.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> check_finite(net)
        >>> with torch.no_grad():
        ...     net.bias[0] = float("nan")
        >>> check_finite(net, "teacher")
        Traceback (most recent call last):
        ...
        ValueError: the teacher holds NaN/Inf values in bias; it cannot be pruned, inverted or distilled. Retrain it or load a checkpoint saved before the values diverged.
    """
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the {what} holds NaN/Inf values in {names}; it cannot be pruned, inverted or "
            "distilled. Retrain it or load a checkpoint saved before the values diverged."
        )


def _implausible_bn(model: nn.Module) -> list[str]:
    """Running statistics of the BatchNorm layers that no data could have produced."""
    bad = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._NormBase) or m.running_var is None:
            continue
        var, mean = m.running_var.detach().float(), m.running_mean.detach().float()
        where = f"{name}." if name else ""
        if not bool(torch.isfinite(var).all()) or float(var.min()) < 0:
            bad.append(f"{where}running_var is negative or not finite (min {float(var.min()):.3g})")
        elif float(var.max()) > MAX_RUNNING_VAR:
            bad.append(
                f"{where}running_var reaches {float(var.max()):.3g} (> {MAX_RUNNING_VAR:.0e})"
            )
        top = float(mean.abs().max()) if mean.numel() else 0.0
        if not math.isfinite(top) or top > MAX_ABS_RUNNING_MEAN:
            bad.append(f"{where}running_mean reaches {top:.3g} (> {MAX_ABS_RUNNING_MEAN:.0e})")
    return bad


def check_plausible(model: nn.Module, what: str = "model") -> None:
    """Raise ``ValueError`` naming the tensors of ``model`` no trained network holds.

    Catches what :func:`check_finite` lets through: a BatchNorm ``running_var`` that is
    negative (a variance cannot be) or beyond :data:`MAX_RUNNING_VAR`, a ``running_mean``
    beyond :data:`MAX_ABS_RUNNING_MEAN`, a parameter with a value beyond
    :data:`MAX_ABS_WEIGHT` in magnitude: the marks of corrupted bytes or of a file that is
    not a trained network. The bounds are far above what randomly initialised and trained
    torchvision and timm models hold. Buffers other than BatchNorm statistics (attention
    masks hold large negative constants on purpose) are not checked.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> check_plausible(net)
        >>> with torch.no_grad():
        ...     net[1].running_var[2] = -1.0
        ...     net[0].weight[0, 0, 0, 0] = 3e9
        >>> check_plausible(net, "teacher")
        Traceback (most recent call last):
        ...
        ValueError: the teacher holds implausible values: 0.weight reaches 3e+09 in magnitude (> 1e+06); 1.running_var is negative or not finite (min -1). These are not a trained network's weights: the file is corrupt or is not what it claims. Get an intact copy (compare its SHA-256 with its source) and rerun.
    """
    bad = []
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.numel():
            top = float(p.detach().abs().max())
            if not math.isfinite(top) or top > MAX_ABS_WEIGHT:
                bad.append(f"{name} reaches {top:.3g} in magnitude (> {MAX_ABS_WEIGHT:.0e})")
    bad += _implausible_bn(model)
    if bad:
        raise ValueError(
            f"the {what} holds implausible values: {_names(bad)}. These are not a trained "
            "network's weights: the file is corrupt or is not what it claims. Get an intact "
            "copy (compare its SHA-256 with its source) and rerun."
        )


def probe(model: nn.Module, shape: Sequence[int], what: str = "model") -> tuple[int, ...]:
    """The output shape of ``model`` for one all-zero input of ``shape`` ``(C, H, W)``.

    One forward pass in eval mode without gradients, on the model's device and dtype; every
    submodule's mode is restored and the hooks that watch the feature maps are removed
    afterwards, also on an error. A cheap check that the network can take inputs of this
    shape at all, before a long job starts.

    Raises:
        ValueError: the forward pass fails (a feature map smaller than a kernel, channels
            that do not fit, ...), or a feature map shrinks to nothing; the message names
            the size and says what to pass.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(5))
        >>> probe(net, (3, 8, 8))
        (1, 5)
        >>> probe(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)), (3, 3, 3))
        Traceback (most recent call last):
        ...
        ValueError: the model cannot take inputs of shape (3, 3, 3): ... Output size is too small. Pass the image size it was trained at (image_size=, --image-size) or a larger one.
    """
    c, h, w = (int(s) for s in shape)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    empty: list[str] = []

    def watch(name: str, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[2:]) == 0:
            empty.append(name or type(model).__name__)

    modes = [(m, m.training) for m in model.modules()]
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: watch(name, out))
        for name, m in model.named_modules()
    ]
    hint = "Pass the image size it was trained at (image_size=, --image-size) or a larger one."
    try:
        model.eval()
        with torch.no_grad():  # not inference_mode: a lazy layer may materialise here
            out = model(torch.zeros(1, c, h, w, device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"the {what} cannot take inputs of shape {(c, h, w)}: {first}. {hint}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in modes:
            m.training = flag
    if empty:
        raise ValueError(
            f"the {what} cannot take inputs of shape {(c, h, w)}: its feature maps shrink to "
            f"nothing (at {empty[0]}). {hint}"
        )
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def check_image_size(
    model: nn.Module,
    shape: Sequence[int],
    *,
    trained: Sequence[int] | None = None,
    what: str = "model",
) -> tuple[int, ...]:
    """Refuse an input size the network cannot take, or far below the one it was made for.

    :func:`probe` at ``shape`` ``(C, H, W)``; and, when ``trained`` (the ``(H, W)`` the
    model records, its ``pretrained_cfg["input_size"]``) is given, a height or width
    below a quarter of it: the network would see a sixteenth of the pixels it learnt
    from, and its BatchNorm statistics (what DeepInversion matches) would not hold.
    Larger sizes are allowed (evaluating a 224-px model on upsized CIFAR is common).

    Returns:
        The output shape of one image (from :func:`probe`).

    Raises:
        ValueError: the message names the sizes and the smallest one accepted.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1))
        >>> check_image_size(net, (3, 16, 16), trained=(32, 32))
        (1, 4, 1, 1)
        >>> check_image_size(net, (3, 7, 7), trained=(32, 32))
        Traceback (most recent call last):
        ...
        ValueError: image size 7x7 is below a quarter of the 32x32 the model was made for: its features and BatchNorm statistics do not hold there. Pass --image-size 8 or more (image_size=), ideally 32.
    """
    _, h, w = (int(s) for s in shape)
    if trained is not None:
        th, tw = (int(s) for s in trained)
        if 4 * h < th or 4 * w < tw:
            least = max(math.ceil(th / 4), math.ceil(tw / 4))
            raise ValueError(
                f"image size {h}x{w} is below a quarter of the {th}x{tw} the {what} was made "
                "for: its features and BatchNorm statistics do not hold there. Pass "
                f"--image-size {least} or more (image_size=), ideally {max(th, tw)}."
            )
    return probe(model, shape, what)
