"""What :func:`~recoverprune.compress` reports: top-1, sparsity, sizes, quality and time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.io import fingerprint
from recoverprune.core.progress import console
from recoverprune.core.runtime import Runtime, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.version import __version__
from recoverprune.data.evaluate import evaluate, read_as, resolve_data
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.distill.agreement import agreement_and_kl
from recoverprune.distill.config import DistillConfig
from recoverprune.pipeline.presets import Preset
from recoverprune.pruning.masks import finalize
from recoverprune.pruning.sparsity import sparsity
from recoverprune.synthesis.config import InversionConfig

__all__ = [
    "CHECK_MEANING",
    "CompressResult",
    "check_quality",
    "make_report",
    "measure_top1",
    "print_report",
    "sparse_size_bytes",
    "wilson_interval",
]


@dataclass
class CompressResult:
    """What :func:`compress` produced: the student and the report written to ``report.json``.

    Example:
        >>> import tempfile
        >>> from recoverprune import compress
        >>> res = compress(amount=0.5, preset="tiny", out_dir=tempfile.mkdtemp(), progress=False)
        >>> sorted(res.report["seconds"])
        ['prune', 'recover', 'synthesize']
    """

    student: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def sparse_size_bytes(model: nn.Module) -> tuple[int, int]:
    """``(dense, sparse)`` size in bytes of the model's weights as saved with ``torch.save``.

    The sparse form stores each pruned weight as a bit mask plus its non-zero values,
    the other tensors as they are.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> dense, sparse = sparse_size_bytes(prune(nn.Linear(1000, 100), 0.9))
        >>> sparse < dense / 3
        True
    """
    plain = finalize(model).state_dict()
    packed: dict[str, torch.Tensor] = {}
    for key, t in plain.items():
        if t.dim() >= 2 and t.is_floating_point() and (t == 0).float().mean() > 0.5:
            mask = (t != 0).flatten()
            pad = (-mask.numel()) % 8
            bits = torch.cat([mask, mask.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
            weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
            packed[key + ".mask_bits"] = (bits * weights).sum(1).to(torch.uint8)
            packed[key + ".values"] = t.flatten()[mask].clone()
        else:
            packed[key] = t
    return _state_bytes(plain), _state_bytes(packed)


#: the check set's seed is this far from the transfer set's, so no batch is shared
CHECK_SEED = 1_000_003


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion, in percent.

    Unlike ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 100] and does not shrink to a
    point at 0 % or 100 %: 64 of 64 agreeing images only show the rate is above ~94 %.

    Example:
        >>> wilson_interval(64, 64)
        (94.3, 100.0)
        >>> wilson_interval(0, 0)
        (0.0, 100.0)
    """
    if n <= 0:
        return 0.0, 100.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(100 * max(centre - half, 0.0), 1), round(100 * min(centre + half, 1.0), 1)


#: what the check measures, stored with it in every report
CHECK_MEANING = (
    "fidelity to the teacher on independently seeded synthetic images, not accuracy: it is "
    "typically higher than the agreement on real images; measure top-1 on labelled data "
    "(eval_data=, --eval-data) for accuracy"
)


@torch.no_grad()
def check_quality(
    teacher: nn.Module, student: nn.Module, check: SyntheticImages, batch_size: int = 256
) -> dict[str, Any]:
    """Teacher–student agreement (%) and ``KL(teacher ‖ student)`` on a check set.

    The data-free signal of how well a recovery worked: ``check`` should be synthetic
    images the student never trained on (``compress`` seeds them independently). It
    measures fidelity to the teacher on synthetic images, not accuracy, and it flatters:
    DeepInversion images are ones the teacher is sure about, so a student agrees with it
    more often on them than on real images. The agreement therefore comes with its Wilson
    95 % interval (``agreement_low``, ``agreement_high``), whose width shows how little a
    small check set can tell, and the report says what it measures (``measures``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> data = SyntheticImages(torch.randn(8, 3, 2, 2), torch.zeros(8, dtype=torch.long))
        >>> q = check_quality(net, net, data)
        >>> q["images"], q["agreement"], q["agreement_low"], q["agreement_high"], q["kl"]
        (8, 100.0, 67.6, 100.0, 0.0)
    """
    device = next(teacher.parameters()).device
    with borrowed(teacher, student):
        q: dict[str, Any] = dict(
            agreement_and_kl(teacher, student, check, resolve(device), batch_size)
        )
    agree = round(q["agreement"] * q["images"] / 100)
    q["agreement_low"], q["agreement_high"] = wilson_interval(agree, int(q["images"]))
    q["measures"] = CHECK_MEANING
    return q


def make_report(
    teacher: nn.Module,
    student: nn.Module,
    check: SyntheticImages,
    amount: float,
    scope: str,
    p: Preset,
    inv: InversionConfig,
    dcfg: DistillConfig,
    seed: int,
    rt: Runtime,
) -> dict[str, Any]:
    dense_b, sparse_b = sparse_size_bytes(student)
    return {
        "library": __version__,
        "amount": amount,
        "scope": scope,
        "preset": asdict(p),
        "inversion": asdict(inv),
        "distill": asdict(dcfg),
        "seed": seed,
        "runtime": rt.describe(),
        "sparsity": sparsity(student).overall,
        "size_bytes": {"dense": dense_b, "sparse": sparse_b},
        "teacher": fingerprint(teacher),
        "check": check_quality(teacher, student, check),
    }


def measure_top1(
    teacher: nn.Module,
    pruned: nn.Module | None,
    student: nn.Module,
    data: Any,
    device: Any,
    spec: InputSpec,
    *,
    classes: Sequence[str] | None = None,
    subset: bool = False,
) -> dict[str, float]:
    """Top-1 of teacher, pruned and recovered student on labelled ``data``, read once.

    A path is read as ``spec`` says and its class folders checked against the teacher's
    outputs (``classes``/``subset``: see :func:`~recoverprune.data.evaluate.resolve_data`).
    """
    data = resolve_data(teacher, data, **read_as(spec), classes=classes, subset=subset)
    models = {"teacher": teacher, "pruned": pruned, "recovered": student}
    return {
        name: evaluate(model, data, device=device, progress=False).top1
        for name, model in models.items()
        if model is not None
    }


def _what_was_pruned(report: dict[str, Any]) -> str:
    """The report title's account of the pruning: amount and scope, or the dropped blocks."""
    if report.get("structure") == "block":
        dropped = report.get("dropped_blocks") or []
        return f"{len(dropped)} blocks dropped ({', '.join(dropped)})"
    how = "channels removed" if report.get("structure") == "channel" else "sparsity"
    return f"amount {report['amount']:.0%} ({report['scope']} {how})"


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"recoverprune: {_what_was_pruned(report)}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for name, acc in report.get("top1", {}).items():
        t.add_row(f"top-1 {name}", f"{acc:.2f} %")
    check = report.get("check")
    if check:
        where = f"{check['images']} independent synthetic images"
        t.add_row(f"teacher-student agreement ({where})", f"{check['agreement']:.2f} %")
        if "agreement_low" in check:
            t.add_row(
                "  its 95 % CI (Wilson)",
                f"{check['agreement_low']:.1f} to {check['agreement_high']:.1f} %",
            )
        t.add_row(f"KL(teacher ‖ student) ({where})", f"{check['kl']:.4f}")
        t.caption = "agreement and KL: fidelity to the teacher on synthetic images, not accuracy"
    t.add_row("sparsity", f"{report['sparsity']:.2%}")
    size = report["size_bytes"]
    t.add_row(
        "size dense / sparse-stored",
        f"{size['dense'] / 1e6:.2f} MB / {size['sparse'] / 1e6:.2f} MB",
    )
    for stage, sec in report["seconds"].items():
        t.add_row(f"time {stage}", f"{sec:.1f} s")
    console.print(t)
