"""``compress()``: prune → synthesize → recover (→ INT8), every stage persisted and resumable;
the transfer images come from a :class:`SourceFactory` (default :class:`DeepInversionSet`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from recoverprune.core.io import atomic_path, fingerprint, read_json, save_model, write_json_atomic
from recoverprune.core.lock import holding
from recoverprune.core.resources import check_batch_memory
from recoverprune.core.runtime import Accel, Runtime, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import run_stage, stage_key
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.data.transfer import as_source
from recoverprune.distill.config import DistillConfig
from recoverprune.distill.loop import recover
from recoverprune.models.default import default_teacher
from recoverprune.models.loading import load_model
from recoverprune.pipeline import quantize as quantization
from recoverprune.pipeline.checks import preflight, reuse_int8, reuse_pruned, stamp_key
from recoverprune.pipeline.layout import (
    CHECK,
    GRID,
    INT8,
    PRUNED,
    RECOVER,
    REPORT,
    STUDENT,
    SYNTHETIC,
    TIMING,
)
from recoverprune.pipeline.presets import PRESETS, Preset
from recoverprune.pipeline.prune import Calibration, prune
from recoverprune.pipeline.quantize import QuantConfig, QuantizedModel
from recoverprune.pipeline.report import (
    CHECK_SEED,
    CompressResult,
    int8_report,
    make_report,
    measure_top1,
    print_report,
)
from recoverprune.pruning.blocks import BlockConfig
from recoverprune.pruning.channel_spec import channel_spec, dropped_blocks
from recoverprune.pruning.channels import ChannelConfig
from recoverprune.pruning.dispatch import steps as prune_steps
from recoverprune.pruning.masks import UnstructuredConfig, copy_model
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.inversion import synthesize

__all__ = ["DeepInversionSet", "SourceContext", "SourceFactory", "compress"]


@dataclass(frozen=True)
class SourceContext:
    """What a :class:`SourceFactory` is given besides the teacher and its input.

    Attributes:
        budget: the preset, with this call's overrides (``n``, ``iterations``, ``epochs``).
        inversion: the DeepInversion settings (``iterations`` from the budget).
        out: the output directory.
        seed, device, accel, progress, overwrite: as given to :func:`compress`.
        runtime: the resolved device, precision and rank.
    """

    budget: Preset
    inversion: InversionConfig
    out: Path
    seed: int
    device: str | torch.device | None
    accel: Accel | None
    progress: bool
    overwrite: bool
    runtime: Runtime


class SourceFactory(Protocol):
    """Makes the transfer source of :func:`compress` (see ``recoverprune.distill.source``).

    A factory whose ``make()`` returns a fixed set of images says so with ``fixed = True``:
    ``compress(quantize=...)`` calibrates on that set, and refuses other sources at once.
    """

    def make(self, teacher: nn.Module, spec: InputSpec, ctx: SourceContext) -> Any:
        """The source recovery reads (a fixed set, or an object of the source protocol)."""
        ...

    def describe(self, ctx: SourceContext) -> dict[str, Any]:
        """What ``report.json`` records as ``synthesis`` (with ``made`` added)."""
        ...


@dataclass(frozen=True)
class DeepInversionSet:
    """The default source: ``budget.n`` DeepInversion images in ``synthetic/``, resumable,
    and a grid of the first ones (``synthetic-grid.png``).

    Example:
        >>> DeepInversionSet().describe(None)
        {'method': 'deepinversion'}
    """

    fixed: ClassVar[bool] = True  # the INT8 stage calibrates on the set

    def make(self, teacher: nn.Module, spec: InputSpec, ctx: SourceContext) -> Any:
        """Synthesize (or resume) the set, then draw its grid once."""
        data = _inversion(teacher, spec, ctx, ctx.budget.n, ctx.seed, SYNTHETIC)
        if ctx.runtime.is_main and (ctx.overwrite or not (ctx.out / GRID).exists()):
            data.save_grid(ctx.out / GRID)
        return data

    def describe(self, ctx: SourceContext | None) -> dict[str, Any]:
        return {"method": "deepinversion"}


@holding  # one run per directory; a second is refused at once
def compress(
    teacher: nn.Module | None = None,
    how: Any = None,
    *,
    out_dir: str | os.PathLike[str] = "recoverprune-out",
    preset: Literal["tiny", "quick", "paper", "seed"] | Preset = "quick",
    n: int | None = None,
    iterations: int | None = None,
    epochs: int | None = None,
    exclude: Sequence[str] = (),
    calibration: Calibration | None = None,
    source: SourceFactory | None = None,
    inversion: InversionConfig | None = None,
    distill: DistillConfig | None = None,
    eval_data: Any = None,
    input: InputSpec | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
    overwrite: bool = False,
    quantize: Literal["int8"] | QuantConfig | None = None,
) -> CompressResult:
    """Prune ``teacher``, synthesise a transfer set from it and distil it back, resumably.

    Every stage writes its result into ``out_dir`` (``pruned.pt``, ``synthetic/``,
    ``check/``, ``recover/``, ``student.pt``, ``student.int8.onnx`` with ``quantize``,
    ``report.json``); running the same call again
    after a crash or Ctrl-C resumes at the stage and step where it stopped, and refuses a
    directory made with other settings (or another source) by name.

    Besides the transfer set, a small *check* set (``preset.check_n`` images, seeded
    independently) is synthesised; the student never trains on it, and the report's
    ``check`` entry (teacher–student agreement and KL on it) is the data-free estimate of
    how well the recovery worked.

    Args:
        teacher: the trained network (left unchanged). ``None`` uses the embedded default
            CIFAR-10 ResNet-20 (see :func:`recoverprune.models.default_teacher`).
        how: as in :func:`~recoverprune.prune` (a float amount, a config or a list of
            them); default 0.75 (global magnitude masks).
        out_dir: where every stage is persisted.
        preset: budget (``"tiny"``, ``"quick"``, ``"paper"``, ``"seed"`` or a
            :class:`Preset`).
        n: number of synthetic images (overrides the preset).
        iterations: DeepInversion steps per batch (overrides the preset).
        epochs: distillation epochs (overrides the preset).
        exclude: as in :func:`~recoverprune.prune`.
        calibration: as in :func:`~recoverprune.prune` (the images pruning may make).
        source: what makes the transfer source (default :class:`DeepInversionSet`); its
            ``describe()`` goes into the report, and a resumed recovery refuses a
            directory made from another source.
        inversion: DeepInversion hyper-parameters (:class:`InversionConfig`).
        distill: distillation hyper-parameters (:class:`DistillConfig`).
        eval_data: labelled data (Dataset or ImageFolder/tar.gz path) to measure top-1 of
            teacher / pruned / recovered; only ever used for measuring.
        input: the teacher's input (default ``InputSpec.of(teacher)``); stored in the
            report (``"input"``) and in ``student.pt``.
        seed: as in the stage functions.
        device: as in the stage functions.
        accel: as in the stage functions.
        progress: as in the stage functions.
        overwrite: recompute every stage whose recorded settings differ from this call's
            (and the stages after it) instead of refusing the directory.
        quantize: ``"int8"`` (a default :class:`QuantConfig`) or a :class:`QuantConfig`:
            after recovery, an INT8 student calibrated on the transfer images
            (``student.int8.onnx``), and the report's ``int8`` entry: its top-1 (with
            ``eval_data``), and parameters, MACs, bytes and onnxruntime latency of teacher,
            student and INT8 student. Checked before any compute: onnxruntime installed,
            the teacher exportable to ONNX, a fixed set of transfer images.

    Returns:
        A :class:`CompressResult` with the student and the report.

    Example (a whole run; tested in ``tests/test_pipeline.py``, marked slow):
        >>> res = compress(None, 0.5, preset="tiny", out_dir="run")  # doctest: +SKIP
        >>> round(res.report["sparsity"], 2)  # doctest: +SKIP
        0.5
    """
    teacher = default_teacher() if teacher is None else teacher
    steps = prune_steps(0.75 if how is None else how)  # checked before any compute
    p = _budget(preset, n=n, iterations=iterations, epochs=epochs)
    factory: SourceFactory = source or DeepInversionSet()
    inv = replace(inversion or InversionConfig(), iterations=p.iterations)
    dcfg = replace(distill or p.distill or DistillConfig(), epochs=p.epochs)
    spec = input or InputSpec.of(teacher)
    qcfg = _quant_config(quantize, factory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve(device, accel)
    ready = {"clean": rt.is_main, "quantize": qcfg is not None}
    preflight(teacher, out, p.n, p.batch_size, spec, eval_data, **ready)
    check_batch_memory(teacher, spec.shape, max(p.batch_size, min(dcfg.batch_size, p.n)))
    clock = _StageClock(out / TIMING, rt.is_main)
    ctx = SourceContext(p, inv, out, seed, device, accel, progress, overwrite, rt)
    pruning = _pruning_record(steps, exclude, calibration, spec)
    with clock("prune"):  # pruned.pt is reused when it was made with exactly these settings
        key = stage_key(teacher=fingerprint(teacher), **pruning)
        if reuse_pruned(out / PRUNED, key, overwrite):
            student = load_model(teacher, out / PRUNED)
        else:
            student = prune(teacher, steps, exclude=exclude, calibration=calibration, input=spec)
            if rt.is_main:
                save_model(student, out / PRUNED, channel_spec=channel_spec(student), key=key)
    pruned_snapshot = copy_model(student) if eval_data is not None else None
    with clock("synthesize"):
        transfer = factory.make(teacher, spec, ctx)
        check = _inversion(teacher, spec, ctx, p.check_n, seed + CHECK_SEED, CHECK)
    with clock("recover"):
        run = partial(recover, teacher, student, transfer, config=dcfg, out_dir=out / RECOVER)
        stage = {"seed": seed, "device": device, "accel": accel, "progress": progress}
        outputs = [out / RECOVER, out / STUDENT, out / INT8, out / REPORT]
        student = run_stage(partial(run, **stage), outputs, overwrite)
    int8 = None
    if qcfg is not None and rt.is_main:
        with clock("quantize"):
            int8 = _int8(teacher, student, transfer, qcfg, ctx)
    report = {**make_report(teacher, student, check, p, inv, dcfg, seed, rt), **pruning}
    if "block" in pruning:
        report["dropped_blocks"] = dropped_blocks(student)
    made = getattr(transfer, "made", len(transfer))
    report["synthesis"] = {**factory.describe(ctx), "made": made}
    models = (teacher, pruned_snapshot, student)
    _measure(report, models, int8, qcfg, eval_data, spec, device, clock)
    report["seconds"] = clock.times
    if rt.is_main:  # student.pt (with the input description and channel widths), report.json
        widths, amount = channel_spec(student), report["amount"]
        save_model(student, out / STUDENT, amount=amount, input=spec.to_dict(), channel_spec=widths)
        write_json_atomic(report, out / REPORT)
        if progress:
            print_report(report)
    return CompressResult(spec.attach(student), report)


def _inversion(
    teacher: nn.Module, spec: InputSpec, ctx: SourceContext, n: int, seed: int, name: str
) -> SyntheticImages:
    """``n`` DeepInversion images into ``ctx.out / name`` (resumable), as ``ctx`` says."""
    return synthesize(
        teacher,
        n,
        config=ctx.inversion,
        batch_size=ctx.budget.batch_size,
        input=spec,
        out_dir=ctx.out / name,
        seed=seed,
        device=ctx.device,
        accel=ctx.accel,
        progress=ctx.progress,
        overwrite=ctx.overwrite,
    )


def _measure(
    report: dict[str, Any],
    models: tuple[nn.Module, nn.Module | None, nn.Module],
    int8: Path | None,
    cfg: QuantConfig | None,
    eval_data: Any,
    spec: InputSpec,
    device: Any,
    clock: _StageClock,
) -> None:
    """Add to ``report`` the ``int8`` entry (sizes and latency, when ``int8``) and, with
    ``eval_data``, the top-1 of teacher, pruned and recovered student and INT8 student."""
    teacher, _, student = models
    if int8 is not None and cfg is not None:
        with clock("latency"):
            report["int8"] = int8_report(teacher, student, int8, cfg, spec)
    if eval_data is not None:
        with clock("evaluate"):
            q = QuantizedModel(str(int8), spec) if int8 is not None else None
            report["top1"] = measure_top1(*models, eval_data, device, spec, int8=q)
            if q is not None:
                report["int8"]["top1"] = report["top1"].pop("int8")


def _quant_config(quantize: Any, factory: SourceFactory) -> QuantConfig | None:
    """The :class:`QuantConfig` of ``compress(quantize=...)``; refused at once when the
    source makes no fixed set of images to calibrate on.

    Example:
        >>> _quant_config("int8", DeepInversionSet()) == QuantConfig()
        True
    """
    if quantize is None:
        return None
    if not isinstance(quantize, QuantConfig) and quantize != "int8":
        raise ValueError(f'quantize must be "int8" or a QuantConfig, got {quantize!r}')
    if not getattr(factory, "fixed", False):
        raise ValueError(
            "quantize calibrates on the run's fixed set of transfer images, and this source "
            f"({type(factory).__name__}) makes none: use the DeepInversion set (--synthesis "
            "deepinversion), or quantize student.pt afterwards with `recoverprune quantize "
            "--synthetic DIR`"
        )
    return quantize if isinstance(quantize, QuantConfig) else QuantConfig()


def _int8(
    teacher: nn.Module, student: nn.Module, transfer: Any, cfg: QuantConfig, ctx: SourceContext
) -> Path:
    """The resumable stage ``quantize``: ``student.int8.onnx`` calibrated on ``transfer``,
    its key stamped in it (reused when it matches, refused by name or redone when not)."""
    path = ctx.out / INT8
    key = stage_key(
        teacher=fingerprint(teacher),
        student=fingerprint(student),
        config=asdict(cfg),
        data=as_source(transfer).key(),
        seed=ctx.seed,
    )
    if not reuse_int8(path, key, ctx.overwrite):
        with atomic_path(path) as tmp:  # a kill leaves no half file under the final name
            run = {"teacher": teacher, "path": tmp, "seed": ctx.seed, "progress": ctx.progress}
            quantization.quantize(student, transfer, config=cfg, **run)
            stamp_key(tmp, key)
    return path


#: report.json's name of each config type (its settings are stored under that name)
_KINDS = {UnstructuredConfig: "unstructured", ChannelConfig: "channel", BlockConfig: "block"}


def _pruning_record(
    steps: Sequence[Any], exclude: Sequence[str], calibration: Calibration | None, spec: InputSpec
) -> dict[str, Any]:
    """How the student is made smaller: the key of ``pruned.pt`` and report.json's entries
    (``structure``, ``amount``, ``scope``, and each config's settings under its kind).

    Example:
        >>> r = _pruning_record([UnstructuredConfig(0.5)], (), None, InputSpec(size=8))
        >>> r["structure"], r["amount"], r["scope"]
        ('unstructured', 0.5, 'global')
    """
    kinds = [_KINDS.get(type(s), type(s).__name__) for s in steps]
    record: dict[str, Any] = {k: asdict(s) for k, s in zip(kinds, steps, strict=True)}
    structure = "block" if "block" in kinds else kinds[-1]
    record.update(
        structure=structure,
        amount=None if structure == "block" else getattr(steps[-1], "amount", None),
        scope=record.get("unstructured", {}).get("scope"),
        exclude=list(exclude),
        calibration=asdict(calibration) if calibration else None,
        input=spec.to_dict(),
    )
    return record


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
