"""``compress()``: prune → synthesize → recover, every stage persisted and resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from recoverprune._checks import preflight, reuse_pruned, run_stage, stage_key
from recoverprune._dataset import SyntheticImages
from recoverprune._distill import DistillConfig, agreement_and_kl, recover
from recoverprune._inversion import InversionConfig, borrowed, synthesize
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
from recoverprune._runtime import Accel, Runtime, resolve
from recoverprune._spec import InputSpec
from recoverprune._structured import ChannelConfig, apply_channel_spec, channel_spec
from recoverprune._version import __version__

__all__ = [
    "PRESETS",
    "CompressResult",
    "Preset",
    "check_quality",
    "compress",
    "sparse_size_bytes",
]


@dataclass(frozen=True)
class Preset:
    """A compute budget for :func:`compress`.

    Attributes:
        n: synthetic images.
        iterations: DeepInversion steps per batch.
        batch_size: synthesis batch size.
        epochs: distillation epochs.
        check_n: images of the independently seeded check set (the data-free quality
            signal in the report).
        distill: the preset's own distillation settings (``None``: the library's
            :class:`DistillConfig` defaults); an explicit ``compress(distill=...)`` wins.

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
    check_n: int = 128
    distill: DistillConfig | None = None

    def __post_init__(self) -> None:
        for name in ("n", "iterations", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"Preset.{name} must be >= 1, got {getattr(self, name)}")
        if self.check_n < 2:
            raise ValueError(f"Preset.check_n must be >= 2, got {self.check_n}")


#: ``quick``: meant for a CPU (its measured time: the README). ``paper``: the reference
#: budget (2,000 iterations per batch of 256), meant for a GPU. ``tiny``: seconds, for tests.
#: ``seed``: the recipe of the work this project started from (1,024 images, 200 iterations,
#: synthesis batch 32, 15 epochs of SGD lr 1e-3 momentum 0.9, T = 3, student BN frozen).
PRESETS: dict[str, Preset] = {
    "tiny": Preset(n=32, iterations=4, batch_size=16, epochs=2, check_n=16),
    "quick": Preset(n=1024, iterations=200, batch_size=256, epochs=60),
    "paper": Preset(n=20_480, iterations=2000, batch_size=256, epochs=100, check_n=1024),
    "seed": Preset(
        n=1024,
        iterations=200,
        batch_size=32,
        epochs=15,
        distill=DistillConfig(
            epochs=15,
            batch_size=32,
            optimizer="sgd",
            lr=1e-3,
            momentum=0.9,
            weight_decay=0.0,
            temperature=3.0,
            bn_mode="frozen",
            feature_weight=0.0,
            reconstruct=False,
            mix="none",
        ),
    ),
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
    preset: Literal["tiny", "quick", "paper", "seed"] | Preset = "quick",
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
    image_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    channels: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> CompressResult:
    """Prune ``teacher``, synthesise a transfer set from it and distil it back, resumably.

    Every stage writes its result into ``out_dir`` (``pruned.pt``, ``synthetic/``,
    ``check/``, ``recover/``, ``student.pt``, ``report.json``); running the same call again
    after a crash or Ctrl-C resumes at the stage and step where it stopped.

    Besides the transfer set, a small *check* set (``preset.check_n`` images, seeded
    independently) is synthesised; the student never trains on it, and the report's
    ``check`` entry (teacher–student agreement and KL on it) is the data-free estimate of
    how well the recovery worked.

    Args:
        teacher: the trained network (left unchanged). ``None`` uses the embedded default
            CIFAR-10 ResNet-20 (see :func:`recoverprune.models.default_teacher`).
        amount: global sparsity to reach.
        out_dir: where every stage is persisted.
        preset: budget (``"tiny"``, ``"quick"``, ``"paper"``, ``"seed"`` or a
            :class:`Preset`).
        n: number of synthetic images (overrides the preset).
        iterations: DeepInversion steps per batch (overrides the preset).
        epochs: distillation epochs (overrides the preset).
        scope: as in :func:`~recoverprune.prune`.
        exclude: as in :func:`~recoverprune.prune`.
        structure: as in :func:`~recoverprune.prune` (``"channel"``: a smaller dense model).
        channel: as in :func:`~recoverprune.prune` (channel-pruning settings).
        inversion: DeepInversion hyper-parameters (:class:`InversionConfig`).
        distill: distillation hyper-parameters (:class:`DistillConfig`).
        eval_data: labelled data (Dataset or ImageFolder/tar.gz path) to measure top-1 of
            teacher / pruned / recovered; only ever used for measuring.
        image_size: the teacher's input size, when its ``pretrained_cfg`` hint does not say
            or says otherwise; stored in the report (``"input"``) and in ``student.pt``.
        mean: the teacher's input mean, one value or one per channel (as ``image_size``).
        std: the teacher's input standard deviation (as ``mean``).
        channels: the teacher's input channels (as ``image_size``).
        seed: as in the stage functions.
        device: as in the stage functions.
        accel: as in the stage functions.
        progress: as in the stage functions.
        overwrite: recompute every stage whose recorded settings differ from this call's
            (and the stages after it) instead of refusing the directory.

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
    p = _budget(preset, n=n, iterations=iterations, epochs=epochs)
    inv = replace(inversion or InversionConfig(), iterations=p.iterations)
    dcfg = replace(distill or p.distill or DistillConfig(), epochs=p.epochs)
    spec = InputSpec.of(teacher, image_size=image_size, channels=channels, mean=mean, std=std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve(device, accel)
    preflight(
        teacher,
        out,
        p.n,
        p.batch_size,
        spec.size,
        eval_data,
        clean=rt.is_main,
        read_as=_read_as(spec),
    )
    clock = _StageClock(out / "timing.json", rt.is_main)
    stage = {"seed": seed, "device": device, "accel": accel, "progress": progress}

    with clock("prune"):
        how = {"scope": scope, "exclude": exclude, "structure": structure, "channel": channel}
        student = _prune_stage(teacher, amount, how, out / "pruned.pt", rt, overwrite)
    pruned_snapshot = copy_model(student) if eval_data is not None else None
    with clock("synthesize"):
        synth = {"config": inv, "batch_size": p.batch_size, **_input_kwargs(spec), **stage}
        synth["overwrite"] = overwrite
        synthetic = synthesize(teacher, p.n, out_dir=out / "synthetic", **synth)
        check = synthesize(
            teacher, p.check_n, out_dir=out / "check", **{**synth, "seed": seed + CHECK_SEED}
        )
    if rt.is_main and (overwrite or not (out / "synthetic-grid.png").exists()):
        synthetic.save_grid(out / "synthetic-grid.png")
    with clock("recover"):
        student = run_stage(
            partial(
                recover, teacher, student, synthetic, config=dcfg, out_dir=out / "recover", **stage
            ),
            [out / "recover", out / "student.pt", out / "report.json"],
            overwrite,
        )
    report = _report(teacher, student, check, amount, scope, p, inv, dcfg, seed, rt)
    report["input"] = spec.to_dict()
    report["structure"] = structure
    report["channel"] = asdict(channel) if channel else None
    if eval_data is not None:
        with clock("evaluate"):
            report["top1"] = _top1(teacher, pruned_snapshot, student, eval_data, device, spec)
    report["seconds"] = clock.times
    if rt.is_main:
        final = {
            "state_dict": student.state_dict(),
            "amount": amount,
            "input": spec.to_dict(),
            "channel_spec": channel_spec(student),
        }
        save_atomic(final, out / "student.pt")
        write_json_atomic(report, out / "report.json")
        if progress:
            _print_report(report)
    return CompressResult(spec.attach(student), report)


#: the check set's seed is this far from the transfer set's, so no batch is shared
CHECK_SEED = 1_000_003


def _input_kwargs(spec: InputSpec) -> dict[str, Any]:
    return {"image_size": spec.size, "mean": spec.mean, "std": spec.std, "channels": spec.channels}


def _read_as(spec: InputSpec) -> dict[str, Any]:
    """How labelled images are read for this teacher (channel mode, size, normalisation)."""
    return {"channels": spec.channels, "mean": spec.mean, "std": spec.std, "resize": spec.size}


def _budget(preset: str | Preset, **overrides: int | None) -> Preset:
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return replace(p, **{k: v for k, v in overrides.items() if v is not None})


class _StageClock:
    """Wall time per stage, accumulated over interrupted and resumed runs (timing.json)."""

    def __init__(self, path: Path, write: bool) -> None:
        self.path, self.write = path, write
        self.times: dict[str, float] = read_json(path) if path.is_file() else {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0
            if self.write:
                write_json_atomic(self.times, self.path)


def _prune_stage(
    teacher: nn.Module,
    amount: float,
    how: dict[str, Any],
    path: Path,
    rt: Runtime,
    overwrite: bool,
) -> nn.Module:
    """``prune(teacher, amount, **how)``, or the pruned student ``path`` holds for exactly that."""
    channel = how["channel"]
    key = stage_key(
        teacher=fingerprint(teacher),
        amount=amount,
        **{**how, "channel": asdict(channel) if channel else None},
    )
    if reuse_pruned(path, key, overwrite):
        return _load_pruned(path, teacher)
    student = prune(teacher, amount, **how)
    if rt.is_main:
        state = {
            "state_dict": student.state_dict(),
            "amount": amount,
            "scope": how["scope"],
            "structure": how["structure"],
            "channel_spec": channel_spec(student),
            "teacher": fingerprint(teacher),
            "key": key,
        }
        save_atomic(state, path)
    return student


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


def _report(
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


def _top1(
    teacher: nn.Module,
    pruned: nn.Module | None,
    student: nn.Module,
    data: Any,
    device: Any,
    spec: InputSpec,
) -> dict[str, float]:
    from recoverprune._evaluate import evaluate, resolve_data

    data = resolve_data(teacher, data, **_read_as(spec))
    models = {"teacher": teacher, "pruned": pruned, "recovered": student}
    return {
        name: evaluate(model, data, device=device, progress=False).top1
        for name, model in models.items()
        if model is not None
    }


def _print_report(report: dict[str, Any]) -> None:
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
