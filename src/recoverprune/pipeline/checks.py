"""Pre-flight checks of a whole job, and whether a pruned student on disk can be reused."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recoverprune.core.files import check_free_space, check_writable, clean_stale, remove_outputs
from recoverprune.core.io import load_own
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import StageMismatch, check_key
from recoverprune.core.validate import check_finite, check_plausible
from recoverprune.data.synthetic_io import SHARD_GLOB
from recoverprune.evaluation.evaluate import resolve_data
from recoverprune.pipeline.layout import RECOVER, REPORT, STUDENT, SYNTHETIC

__all__ = ["OUTLIER_FACTOR", "check_outliers", "check_statistics", "preflight", "reuse_pruned"]

#: a weight holding a value this many times its median nonzero magnitude holds corrupted
#: bytes: trained and freshly initialised networks stay below 25 (ResNet-20/32 on CIFAR-10,
#: torchvision's initialisations); a 64-byte flip of ResNet-20 reaches 5,900
OUTLIER_FACTOR = 500


def check_outliers(model: nn.Module, what: str = "teacher") -> None:
    """Raise ``ValueError`` naming the weights (2-D or more, 64+ nonzero values) holding
    values beyond :data:`OUTLIER_FACTOR` times their median nonzero magnitude.

    Example:
        >>> net = nn.Linear(16, 16)
        >>> check_outliers(net)
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


def check_statistics(model: nn.Module, what: str = "student") -> None:
    """Raise ``ValueError`` naming NaN/Inf values or a negative BatchNorm running variance
    (the impossible values :func:`~recoverprune.core.validate.check_plausible` refuses in a
    teacher; its magnitude bounds are left out: recovery may leave statistics extreme).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> check_statistics(net)
        >>> _ = net[1].running_var.fill_(-1.0)
        >>> check_statistics(net)
        Traceback (most recent call last):
        ...
        ValueError: the student holds impossible BatchNorm statistics: 1.running_var is negative. ...
    """
    check_finite(model, what)
    bad = [
        f"{name}.running_var"
        for name, m in model.named_modules()
        if isinstance(getattr(m, "running_var", None), torch.Tensor)
        and bool((m.running_var < 0).any())
    ]
    if bad:
        raise ValueError(
            f"the {what} holds impossible BatchNorm statistics: {', '.join(bad[:5])} is "
            "negative. A variance cannot be: the file is corrupt. Get an intact copy, or "
            "recover the student again."
        )


def preflight(
    teacher: nn.Module,
    out: Path,
    n: int,
    batch_size: int,
    spec: InputSpec,
    eval_data: Any,
    *,
    clean: bool = True,
) -> None:
    """Check every input of :func:`~recoverprune.compress` before any compute: plausible
    teacher weights, a writable ``out`` (cleaned when ``clean``) with room for the shards and
    checkpoints, and an ``eval_data`` path that reads as ``spec``.

    Example:
        >>> import tempfile
        >>> from recoverprune.models import resnet20
        >>> net = resnet20()
        >>> preflight(net, Path(tempfile.mkdtemp()), 8, 4, InputSpec.of(net), None)
    """
    check_finite(teacher, "teacher")
    check_plausible(teacher, "teacher")
    check_writable(out)
    if clean:
        clean_stale(out)
    done = len(list((out / SYNTHETIC).glob(SHARD_GLOB))) * batch_size
    image_bytes = max(n - done, 0) * math.prod(spec.shape) * 4
    model_bytes = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    check_free_space(out, image_bytes + 8 * model_bytes)  # pruned, checkpoints, student
    if isinstance(eval_data, (str, os.PathLike)):
        resolve_data(teacher, eval_data, input=spec)


def reuse_pruned(path: Path, key: Mapping[str, Any], overwrite: bool) -> bool:
    """Whether ``path`` holds the pruned student for ``key``. One pruned with other settings
    raises :class:`StageMismatch`, or with ``overwrite`` is removed (``False``) together with
    ``recover/``, ``student.pt`` and ``report.json`` beside it.

    Example:
        >>> import tempfile
        >>> reuse_pruned(Path(tempfile.mkdtemp()) / "pruned.pt", {"amount": 0.5}, False)
        False
    """
    if not path.is_file():
        return False
    state = load_own(path)
    old = state.get("key") or {k: state.get(k) for k in ("teacher", "amount", "scope")}
    try:
        check_key(old, key, path)
        return True
    except StageMismatch:
        if not overwrite:
            raise
    out = path.parent
    remove_outputs([path, out / RECOVER, out / STUDENT, out / REPORT])
    return False
