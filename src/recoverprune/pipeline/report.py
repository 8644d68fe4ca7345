"""What :func:`~recoverprune.compress` reports: top-1, sparsity, sizes, quality and time."""

from __future__ import annotations

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
    "CompressResult",
    "check_quality",
    "make_report",
    "measure_top1",
    "print_report",
    "sparse_size_bytes",
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


@torch.no_grad()
def check_quality(
    teacher: nn.Module, student: nn.Module, check: SyntheticImages, batch_size: int = 256
) -> dict[str, float]:
    """Teacher–student agreement (%) and ``KL(teacher ‖ student)`` on a check set.

    The data-free signal of how well a recovery worked: ``check`` should be synthetic
    images the student never trained on (``compress`` seeds them independently).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> data = SyntheticImages(torch.randn(8, 3, 2, 2), torch.zeros(8, dtype=torch.long))
        >>> check_quality(net, net, data)
        {'images': 8, 'agreement': 100.0, 'kl': 0.0}
    """
    device = next(teacher.parameters()).device
    with borrowed(teacher, student):
        return agreement_and_kl(teacher, student, check, resolve(device), batch_size)


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
) -> dict[str, float]:

    data = resolve_data(teacher, data, **read_as(spec))
    models = {"teacher": teacher, "pruned": pruned, "recovered": student}
    return {
        name: evaluate(model, data, device=device, progress=False).top1
        for name, model in models.items()
        if model is not None
    }


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    how = "channels removed" if report.get("structure") == "channel" else "sparsity"
    t = Table(title=f"recoverprune: amount {report['amount']:.0%} ({report['scope']} {how})")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for name, acc in report.get("top1", {}).items():
        t.add_row(f"top-1 {name}", f"{acc:.2f} %")
    check = report.get("check")
    if check:
        where = f"{check['images']} independent synthetic images"
        t.add_row(f"teacher-student agreement ({where})", f"{check['agreement']:.2f} %")
        t.add_row(f"KL(teacher ‖ student) ({where})", f"{check['kl']:.4f}")
    t.add_row("sparsity", f"{report['sparsity']:.2%}")
    size = report["size_bytes"]
    t.add_row(
        "size dense / sparse-stored",
        f"{size['dense'] / 1e6:.2f} MB / {size['sparse'] / 1e6:.2f} MB",
    )
    for stage, sec in report["seconds"].items():
        t.add_row(f"time {stage}", f"{sec:.1f} s")
    console.print(t)
