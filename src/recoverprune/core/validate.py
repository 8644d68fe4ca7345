"""Sanity checks of a model's weights and of the input it is asked to take, before any compute."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recoverprune.core.borrow import eval_mode

__all__ = [
    "MAX_ABS_RUNNING_MEAN",
    "MAX_ABS_WEIGHT",
    "MAX_RUNNING_VAR",
    "OUTLIER_FACTOR",
    "check_fields",
    "check_finite",
    "check_image_size",
    "check_number",
    "check_outliers",
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


def check_plausible(model: nn.Module, what: str = "model", *, bounds: bool = True) -> None:
    """Raise ``ValueError`` naming the tensors of ``model`` no trained network holds.

    The marks of corrupted bytes: a negative BatchNorm ``running_var``, statistics or weights
    beyond the ``MAX_*`` bounds; other buffers (attention masks hold large constants) are not.
    ``bounds=False`` checks only the impossible values (non-finite, a negative variance): a
    short recovery may leave a student's statistics extreme.

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
            if not math.isfinite(top) or (bounds and top > MAX_ABS_WEIGHT):
                bad.append(f"{name} reaches {top:.3g} in magnitude (> {MAX_ABS_WEIGHT:.0e})")
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._NormBase) or m.running_var is None:
            continue
        var, mean = m.running_var.detach().float(), m.running_mean.detach().float()
        where = f"{name}." if name else ""
        if not bool(torch.isfinite(var).all()) or float(var.min()) < 0:
            bad.append(f"{where}running_var is negative or not finite (min {float(var.min()):.3g})")
        elif bounds and float(var.max()) > MAX_RUNNING_VAR:
            bad.append(
                f"{where}running_var reaches {float(var.max()):.3g} (> {MAX_RUNNING_VAR:.0e})"
            )
        top = float(mean.abs().max()) if mean.numel() else 0.0
        if not math.isfinite(top) or (bounds and top > MAX_ABS_RUNNING_MEAN):
            bad.append(f"{where}running_mean reaches {top:.3g} (> {MAX_ABS_RUNNING_MEAN:.0e})")
    if bad:
        raise ValueError(
            f"the {what} holds implausible values: {_names(bad)}. These are not a trained "
            "network's weights: the file is corrupt or is not what it claims. Get an intact "
            "copy (compare its SHA-256 with its source) and rerun."
        )


#: a weight holding a value this many times its median nonzero magnitude holds corrupted
#: bytes: trained and freshly initialised networks stay below 25 (ResNet-20/32 on CIFAR-10,
#: torchvision's initialisations); a 64-byte flip of ResNet-20 reaches 5,900
OUTLIER_FACTOR = 500


def check_outliers(model: nn.Module, what: str = "teacher") -> None:
    """Raise ``ValueError`` naming the weights (2-D or more, 64+ nonzero values) holding
    values beyond :data:`OUTLIER_FACTOR` times their median nonzero magnitude.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(16, 16)
        >>> check_outliers(net)
        >>> import torch
        >>> with torch.no_grad():
        ...     net.weight[0, :3] = 300.0
        >>> check_outliers(net)
        Traceback (most recent call last):
        ...
        ValueError: the teacher holds weights far outside their layer's distribution: weight has 3 value(s) up to 300, ...x its median ...
    """
    bad = []
    for name, p in model.named_parameters():
        a = p.detach().abs().flatten().float()
        a = a[a > 0]
        if p.dim() < 2 or a.numel() < 64:
            continue
        scale, top = float(a.median()), float(a.max())
        if top > OUTLIER_FACTOR * scale:
            n = int((a > OUTLIER_FACTOR * scale).sum())
            bad.append(f"{name} has {n} value(s) up to {top:.3g}, {top / scale:.0f}x its median")
    if bad:
        raise ValueError(
            f"the {what} holds weights far outside their layer's distribution: "
            f"{'; '.join(bad[:5])} (a trained network stays within {OUTLIER_FACTOR}x). Flipped "
            "or corrupted bytes do this: get an intact copy (compare its SHA-256 with its "
            "source), or pass --allow-outlier-weights if the values are meant."
        )


def probe(model: nn.Module, shape: Sequence[int], what: str = "model") -> tuple[int, ...]:
    """The output shape of ``model`` for one all-zero input of ``shape`` ``(C, H, W)``.

    One forward pass in eval mode without gradients, on the model's device and dtype; modes
    and hooks are restored. ``ValueError`` when it fails or a feature map shrinks to nothing.

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

    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: watch(name, out))
        for name, m in model.named_modules()
    ]
    hint = "Pass the image size it was trained at (image_size=, --image-size) or a larger one."
    try:  # no_grad, not inference_mode: a lazy layer may materialise here
        with eval_mode(model), torch.no_grad():
            out = model(torch.zeros(1, c, h, w, device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"the {what} cannot take inputs of shape {(c, h, w)}: {first}. {hint}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
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

    :func:`probe` at ``shape`` ``(C, H, W)`` (its output shape is returned); with
    ``trained`` (the recorded ``(H, W)``), a side below a quarter of it is refused: the
    BatchNorm statistics DeepInversion matches would not hold. Larger sizes are allowed.

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


def check_number(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    integer: bool = False,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name`` and the range unless ``value`` is a finite number
    (an integer with ``integer``) from ``lo`` to ``hi`` (excluded with ``lo_open``/``hi_open``):
    the one rule for every number a user gives (config fields, CLI flags).

    Example:
        >>> check_number(0.9, "momentum", 0, 1, hi_open=True)
        >>> check_number(float("nan"), "momentum", 0, 1, hi_open=True)
        Traceback (most recent call last):
        ...
        ValueError: momentum must be in [0, 1), got nan
    """
    v: Any = value
    real = isinstance(v, numbers.Real) and not isinstance(v, bool)
    whole = isinstance(v, numbers.Integral)
    ok = real and (whole or (not integer and math.isfinite(v)))
    if not (ok and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
        bounds = [f"{'>' if lo_open else '>='} {lo}"] if lo > -math.inf else []
        bounds += [f"{'<' if hi_open else '<='} {hi}"] if hi < math.inf else [] if integer else ["finite"]
        if len(bounds) == 2 and hi < math.inf:  # two-sided: an interval
            bounds = [f"in {'(['[not lo_open]}{lo}, {hi}{')]'[not hi_open]}"]
        bounds += ["an integer"] if integer else []
        raise ValueError(f"{name} must be {' and '.join(bounds)}, got {value!r}")


def check_fields(obj: object, lo: float, *names: str, **rule: Any) -> None:
    """:func:`check_number` (``lo``, ``rule``) on the fields ``names`` of ``obj`` not ``None``.

    Example:
        >>> from types import SimpleNamespace
        >>> check_fields(SimpleNamespace(steps=3, lr=None), 1, "steps", "lr", integer=True)
        >>> check_fields(SimpleNamespace(steps=3, lr=0.0), 0, "lr", lo_open=True)
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0 and finite, got 0.0
    """
    for name in names:
        if getattr(obj, name) is not None:
            check_number(getattr(obj, name), name, lo, **rule)
