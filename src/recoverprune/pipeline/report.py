"""What :func:`~recoverprune.compress` reports: top-1, sparsity, sizes, quality and time."""

from __future__ import annotations

import io
import math
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
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.distill.agreement import agreement_and_kl
from recoverprune.distill.config import DistillConfig
from recoverprune.evaluation.evaluate import evaluate, resolve_data
from recoverprune.pipeline.presets import Preset
from recoverprune.pruning.masks import finalize
from recoverprune.pruning.sparsity import sparsity
from recoverprune.synthesis.config import InversionConfig

__all__ = [
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

    Example (a whole run; tested in ``tests/test_pipeline.py``, marked slow):
        >>> from recoverprune import compress
        >>> res = compress(None, 0.5, preset="tiny", out_dir="run")  # doctest: +SKIP
        >>> sorted(res.report["seconds"])  # doctest: +SKIP
        ['prune', 'recover', 'synthesize']
    """

    student: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def sparse_size_bytes(model: nn.Module) -> tuple[int, int]:
    """``(dense, sparse)`` bytes of the weights as saved with ``torch.save``; the sparse form
    stores a mostly-zero weight as a bit mask plus its non-zero values.

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
            mask = (t != 0).flatten()  # stored as one bit a weight: only its size counts
            packed[key + ".mask_bits"] = torch.zeros((mask.numel() + 7) // 8, dtype=torch.uint8)
            packed[key + ".values"] = t.flatten()[mask].clone()
        else:
            packed[key] = t
    return _state_bytes(plain), _state_bytes(packed)


#: the check set's seed is this far from the transfer set's, so no batch is shared
CHECK_SEED = 1_000_003


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion, in percent (stays in [0, 100]).

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
    """Teacher–student agreement (%) with its Wilson 95 % interval, and ``KL(teacher ‖
    student)``, on a check set the student never trained on: fidelity, not accuracy.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> data = SyntheticImages(torch.randn(8, 3, 2, 2), torch.zeros(8, dtype=torch.long))
        >>> q = check_quality(net, net, data)
        >>> q["images"], q["agreement"], q["agreement_low"], q["agreement_high"], q["kl"]
        (8, 100.0, 67.6, 100.0, 0.0)
    """
    rt = resolve(next(teacher.parameters()).device)
    with borrowed(teacher, student):
        q: dict[str, Any] = dict(agreement_and_kl(teacher, student, check, rt, batch_size))
    agree = round(q["agreement"] * q["images"] / 100)
    q["agreement_low"], q["agreement_high"] = wilson_interval(agree, int(q["images"]))
    q["measures"] = CHECK_MEANING
    return q


def make_report(
    teacher: nn.Module,
    student: nn.Module,
    check: SyntheticImages,
    p: Preset,
    inv: InversionConfig,
    dcfg: DistillConfig,
    seed: int,
    rt: Runtime,
) -> dict[str, Any]:
    """Settings, sparsity, sizes and the check-set quality of a finished run (report.json);
    the caller adds how the student was pruned, the input, the source, times and top-1."""
    return {
        "library": __version__,
        "preset": asdict(p),
        "inversion": asdict(inv),
        "distill": asdict(dcfg),
        "seed": seed,
        "runtime": rt.describe(),
        "sparsity": sparsity(student).overall,
        "size_bytes": dict(zip(("dense", "sparse"), sparse_size_bytes(student), strict=True)),
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
) -> dict[str, float]:
    """Top-1 of teacher, pruned and recovered student on labelled ``data``, read once as
    ``spec`` says."""
    data = resolve_data(teacher, data, input=spec)
    models = {"teacher": teacher, "pruned": pruned, "recovered": student}
    return {
        name: evaluate(model, data, device=device, progress=False).top1
        for name, model in models.items()
        if model is not None
    }


def _what_was_pruned(report: dict[str, Any]) -> str:
    """The report title's account of the pruning: amount and scope, or the dropped blocks.

    Example:
        >>> _what_was_pruned({"structure": "channel", "amount": None, "channel": {"speedup": 2}})
        'channels removed to 2x fewer MACs'
    """
    structure, amount = report.get("structure"), report.get("amount")
    if structure == "block":
        dropped = report.get("dropped_blocks") or []
        return f"{len(dropped)} blocks dropped ({', '.join(dropped)})"
    ch = report.get("channel") or {}
    if structure == "channel" and amount is None:
        budget = f"{ch['speedup']}x fewer" if ch.get("speedup") else f"{ch.get('target_macs')}"
        return f"channels removed to {budget} MACs"
    if amount is None:
        return str(structure)
    how = "channels removed" if structure == "channel" else f"{report.get('scope')} sparsity"
    return f"amount {amount:.0%} ({how})"


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
            ci = f"{check['agreement_low']:.1f} to {check['agreement_high']:.1f} %"
            t.add_row("  its 95 % CI (Wilson)", ci)
        t.add_row(f"KL(teacher ‖ student) ({where})", f"{check['kl']:.4f}")
        t.caption = "agreement and KL: fidelity to the teacher on synthetic images, not accuracy"
    t.add_row("sparsity", f"{report['sparsity']:.2%}")
    dense, sparse = (report["size_bytes"][k] / 1e6 for k in ("dense", "sparse"))
    t.add_row("size dense / sparse-stored", f"{dense:.2f} MB / {sparse:.2f} MB")
    for stage, sec in report["seconds"].items():
        t.add_row(f"time {stage}", f"{sec:.1f} s")
    console.print(t)
