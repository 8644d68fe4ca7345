"""What :func:`~recoverprune.compress` reports: top-1, sparsity, sizes, quality and time."""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
from recoverprune.evaluation.latency import ort_latency
from recoverprune.pipeline.presets import Preset
from recoverprune.pipeline.quantize import QuantConfig, plain_fp32
from recoverprune.pruning.export import export
from recoverprune.pruning.masks import finalize
from recoverprune.pruning.measure import count_macs
from recoverprune.pruning.sparsity import sparsity
from recoverprune.synthesis.config import InversionConfig

__all__ = [
    "CompressResult",
    "check_quality",
    "int8_report",
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
    int8: nn.Module | None = None,
) -> dict[str, float]:
    """Top-1 of teacher, pruned, recovered and INT8 student (when given) on labelled
    ``data``, read once as ``spec`` says."""
    data = resolve_data(teacher, data, input=spec)
    models = {"teacher": teacher, "pruned": pruned, "recovered": student, "int8": int8}
    return {
        name: evaluate(model, data, device=device, progress=False).top1
        for name, model in models.items()
        if model is not None
    }


#: seconds spent measuring latency at each batch size (at least 3 rounds)
LATENCY_SECONDS = 1.0


def int8_report(
    teacher: nn.Module, student: nn.Module, path: Path, config: QuantConfig, spec: InputSpec
) -> dict[str, Any]:
    """report.json's ``int8`` entry: the settings and file of the INT8 student, and the
    parameters, MACs, bytes (ONNX files) and onnxruntime latency (batch 1 and 64, one
    thread) of the fp32 teacher, the fp32 student and the INT8 student; top-1 is the
    caller's (``None`` here).

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from recoverprune.pipeline.quantize import quantize
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)).eval()
        >>> q = quantize(net, torch.randn(8, 3, 8, 8))
        >>> r = int8_report(net, net, Path(q.path), QuantConfig(), InputSpec(size=8))
        >>> r["models"]["int8"]["macs"] == r["models"]["student"]["macs"], r["latency"]["threads"]
        (True, 1)
    """
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"int8": str(path)}
        for name, model in (("teacher", teacher), ("student", student)):
            plain = plain_fp32(model)
            x = torch.zeros(1, *spec.shape)
            files[name] = export(plain, os.path.join(tmp, f"{name}.onnx"), example=x)
            params = sum(p.numel() for p in plain.parameters())
            models[name] = {"params": params, "macs": count_macs(plain, x)}
        models["int8"] = dict(models["student"])
        for name, file in files.items():
            models[name]["bytes"] = os.path.getsize(file)
        order = {k: files[k] for k in ("teacher", "student", "int8")}
        latency = ort_latency(order, spec.shape, threads=1, min_seconds=LATENCY_SECONDS)
    return {
        "config": asdict(config),
        "path": path.name,
        "bytes": models["int8"]["bytes"],
        "top1": None,
        "latency": latency,
        "models": models,
    }


def _int8_row(int8: dict[str, Any]) -> str:
    """The report's INT8 line: top-1, size and how many times faster than the teacher.

    Example:
        >>> lat = {"threads": 1, "batches": {"1": {"teacher": 2.0, "int8": 1.0},
        ...                                  "64": {"teacher": 50.0, "int8": 20.0}}}
        >>> _int8_row({"top1": 87.61, "bytes": 290_000, "latency": lat})
        'top-1 87.61 %, 0.29 MB, 2.00x / 2.50x faster than the teacher (batch 1 / 64, 1 thread)'
    """
    top1 = f"top-1 {int8['top1']:.2f} %, " if int8.get("top1") is not None else ""
    lat = int8["latency"]
    ratios = [b["teacher"] / b["int8"] for b in lat["batches"].values()]
    speed = " / ".join(f"{r:.2f}x" for r in ratios)
    which = " / ".join(lat["batches"])
    threads = f"{lat['threads']} thread{'s' if lat['threads'] != 1 else ''}"
    size = f"{int8['bytes'] / 1e6:.2f} MB"
    return f"{top1}{size}, {speed} faster than the teacher (batch {which}, {threads})"


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
    if report.get("int8"):
        t.add_row(f"INT8 ({report['int8']['path']})", _int8_row(report["int8"]))
    for stage, sec in report["seconds"].items():
        t.add_row(f"time {stage}", f"{sec:.1f} s")
    console.print(t)
