"""``compress()``: prune → synthesize → recover, every stage persisted and resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from recoverprune._distill import DistillConfig, recover
from recoverprune._inversion import InversionConfig, synthesize
from recoverprune._io import (
    extract_state_dict,
    fingerprint,
    load_checkpoint,
    read_json,
    save_atomic,
    write_json_atomic,
)
from recoverprune._progress import console
from recoverprune._prune import copy_model, finalize, prune, restore_pruning, sparsity
from recoverprune._runtime import Accel, resolve
from recoverprune._structured import ChannelConfig, apply_channel_spec, channel_spec
from recoverprune._version import __version__

__all__ = ["PRESETS", "CompressResult", "Preset", "compress", "sparse_size_bytes"]


@dataclass(frozen=True)
class Preset:
    """A compute budget for :func:`compress`.

    Attributes:
        n: synthetic images.
        iterations: DeepInversion steps per batch.
        batch_size: synthesis batch size.
        epochs: distillation epochs.

    Example:
        >>> PRESETS["quick"].n, PRESETS["quick"].iterations
        (1024, 200)
        >>> Preset(n=4096, iterations=500, batch_size=256, epochs=80).n
        4096
    """

    n: int
    iterations: int
    batch_size: int
    epochs: int


#: ``quick``: ResNet-20 on a 2-core CPU in about 15 minutes. ``paper``: the reference
#: budget (2,000 iterations per batch of 256), meant for a GPU. ``tiny``: seconds, for tests.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(n=32, iterations=4, batch_size=16, epochs=2),
    "quick": Preset(n=1024, iterations=200, batch_size=256, epochs=60),
    "paper": Preset(n=20_480, iterations=2000, batch_size=256, epochs=100),
}


@dataclass
class CompressResult:
    """What :func:`compress` produced: the student and the report written to ``report.json``.

    Example:
        >>> import tempfile
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


def _load_pruned(path: Path, template: nn.Module) -> nn.Module:
    model = copy_model(template)
    raw = load_checkpoint(path)
    state = extract_state_dict(raw, str(path))
    if raw.get("channel_spec"):  # channel-pruned: reshape the copy to the saved widths
        apply_channel_spec(model, raw["channel_spec"], state)
    restore_pruning(model, state)
    model.load_state_dict(state)
    return model.eval()


def compress(
    teacher: nn.Module | None = None,
    amount: float = 0.75,
    *,
    out_dir: str | os.PathLike[str] = "recoverprune-out",
    preset: Literal["tiny", "quick", "paper"] | Preset = "quick",
    n: int | None = None,
    iterations: int | None = None,
    epochs: int | None = None,
    scope: Literal["global", "layerwise"] = "global",
    exclude: Sequence[str] = (),
    structure: Literal["unstructured", "channel"] = "unstructured",
    channel: ChannelConfig | None = None,
    inversion: InversionConfig | None = None,
    distill: DistillConfig | None = None,
    eval_data: Any = None,
    image_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
) -> CompressResult:
    """Prune ``teacher``, synthesise a transfer set from it and distil it back, resumably.

    Every stage writes its result into ``out_dir`` (``pruned.pt``, ``synthetic/``,
    ``recover/``, ``student.pt``, ``report.json``); running the same call again after a
    crash or Ctrl-C resumes at the stage and step where it stopped.

    Args:
        teacher: the trained network (left unchanged). ``None`` uses the embedded default
            CIFAR-10 ResNet-20 (see :func:`recoverprune.models.default_teacher`).
        amount: global sparsity to reach.
        out_dir: where every stage is persisted.
        preset: budget (``"tiny"``, ``"quick"``, ``"paper"`` or a :class:`Preset`).
        n, iterations, epochs: override the preset.
        scope, exclude, structure, channel: as in :func:`~recoverprune.prune`.
        inversion, distill: full hyper-parameter control.
        eval_data: labelled data (Dataset or ImageFolder/tar.gz path) to measure top-1 of
            teacher / pruned / recovered; only ever used for measuring.
        image_size: input size if the teacher carries no ``pretrained_cfg`` hint.
        seed, device, accel, progress: as in the stage functions.

    Returns:
        A :class:`CompressResult` with the student and the report.

    Example:
        >>> import tempfile
        >>> res = compress(amount=0.5, preset="tiny", out_dir=tempfile.mkdtemp(), progress=False)
        >>> round(res.report["sparsity"], 2)
        0.5
    """
    if teacher is None:
        from recoverprune.models import default_teacher

        teacher = default_teacher()
    p = PRESETS[preset] if isinstance(preset, str) else preset
    p = replace(
        p,
        **{
            k: v
            for k, v in {"n": n, "iterations": iterations, "epochs": epochs}.items()
            if v is not None
        },
    )
    inv = replace(inversion or InversionConfig(), iterations=p.iterations)
    dcfg = replace(distill or DistillConfig(), epochs=p.epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve(device, accel)
    # wall time per stage, accumulated over interrupted and resumed runs
    timing_path = out / "timing.json"
    times: dict[str, float] = read_json(timing_path) if timing_path.is_file() else {}

    def spent(stage: str, t0: float) -> None:
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0
        if rt.is_main:
            write_json_atomic(times, timing_path)

    # 1. prune
    t0 = time.perf_counter()
    pruned_path = out / "pruned.pt"
    if pruned_path.is_file():
        student = _load_pruned(pruned_path, teacher)
    else:
        student = prune(
            teacher, amount, scope=scope, exclude=exclude, structure=structure, channel=channel
        )
        if rt.is_main:
            save_atomic(
                {
                    "state_dict": student.state_dict(),
                    "amount": amount,
                    "scope": scope,
                    "structure": structure,
                    "channel_spec": channel_spec(student),
                    "teacher": fingerprint(teacher),
                },
                pruned_path,
            )
    spent("prune", t0)
    pruned_snapshot = None
    if eval_data is not None:
        pruned_snapshot = copy_model(student)

    # 2. synthesize
    t0 = time.perf_counter()
    synthetic = synthesize(
        teacher,
        p.n,
        config=inv,
        batch_size=p.batch_size,
        image_size=image_size,
        out_dir=out / "synthetic",
        seed=seed,
        device=device,
        accel=accel,
        progress=progress,
    )
    spent("synthesize", t0)
    if rt.is_main:
        grid = out / "synthetic-grid.png"
        if not grid.exists():
            synthetic.save_grid(grid)

    # 3. recover
    t0 = time.perf_counter()
    student = recover(
        teacher,
        student,
        synthetic,
        config=dcfg,
        out_dir=out / "recover",
        seed=seed,
        device=device,
        accel=accel,
        progress=progress,
    )
    spent("recover", t0)

    # 4. report
    sp = sparsity(student)
    dense_b, sparse_b = sparse_size_bytes(student)
    history = getattr(student, "recovery_history", [])
    report: dict[str, Any] = {
        "library": __version__,
        "amount": amount,
        "scope": scope,
        "structure": structure,
        "channel": asdict(channel) if channel else None,
        "preset": asdict(p),
        "inversion": asdict(inv),
        "distill": asdict(dcfg),
        "seed": seed,
        "runtime": rt.describe(),
        "sparsity": sp.overall,
        "size_bytes": {"dense": dense_b, "sparse": sparse_b},
        "seconds": times,
        "teacher": fingerprint(teacher),
        "agreement": history[-1].get("agreement") if history else None,
    }
    if eval_data is not None:
        from recoverprune._evaluate import evaluate, resolve_data

        data = resolve_data(teacher, eval_data)
        t0 = time.perf_counter()
        report["top1"] = {
            name: evaluate(model, data, device=device, progress=False).top1
            for name, model in (
                ("teacher", teacher),
                ("pruned", pruned_snapshot),
                ("recovered", student),
            )
            if model is not None
        }
        spent("evaluate", t0)
    if rt.is_main:
        save_atomic(
            {
                "state_dict": student.state_dict(),
                "amount": amount,
                "channel_spec": channel_spec(student),
            },
            out / "student.pt",
        )
        write_json_atomic(report, out / "report.json")
        if progress:
            _print_report(report)
    return CompressResult(student, report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"recoverprune: {report['amount']:.0%} global sparsity")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for name, acc in report.get("top1", {}).items():
        t.add_row(f"top-1 {name}", f"{acc:.2f} %")
    if report.get("agreement") is not None:
        t.add_row("teacher-student agreement (held-out synthetic)", f"{report['agreement']:.2f} %")
    t.add_row("sparsity", f"{report['sparsity']:.2%}")
    size = report["size_bytes"]
    t.add_row(
        "size dense / sparse-stored",
        f"{size['dense'] / 1e6:.2f} MB / {size['sparse'] / 1e6:.2f} MB",
    )
    for stage, sec in report["seconds"].items():
        t.add_row(f"time {stage}", f"{sec:.1f} s")
    console.print(t)
