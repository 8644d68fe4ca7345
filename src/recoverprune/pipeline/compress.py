"""``compress()``: prune → synthesize → recover, every stage persisted and resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from recoverprune.core.io import (
    fingerprint,
    read_json,
    save_atomic,
    write_json_atomic,
)
from recoverprune.core.runtime import Accel, Runtime, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import run_stage, stage_key
from recoverprune.data.evaluate import read_as
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.distill.config import DistillConfig
from recoverprune.distill.loop import recover
from recoverprune.models.default import default_teacher
from recoverprune.models.loading import load_model
from recoverprune.pipeline.checks import preflight, reuse_pruned
from recoverprune.pipeline.layout import (
    CHECK,
    GRID,
    PRUNED,
    RECOVER,
    REPORT,
    STUDENT,
    SYNTHETIC,
    TIMING,
)
from recoverprune.pipeline.presets import PRESETS, Preset
from recoverprune.pipeline.prune import prune
from recoverprune.pipeline.report import (
    CHECK_SEED,
    CompressResult,
    make_report,
    measure_top1,
    print_report,
)
from recoverprune.pruning.blocks import BlockConfig
from recoverprune.pruning.channel_spec import channel_spec, dropped_blocks
from recoverprune.pruning.channels import ChannelConfig
from recoverprune.pruning.masks import copy_model
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.inversion import synthesize
from recoverprune.synthesis.stream import StreamConfig, SyntheticStream

__all__ = ["compress"]


def compress(
    teacher: nn.Module | None = None,
    amount: float | None = None,
    *,
    out_dir: str | os.PathLike[str] = "recoverprune-out",
    preset: Literal["tiny", "quick", "paper", "seed"] | Preset = "quick",
    n: int | None = None,
    iterations: int | None = None,
    epochs: int | None = None,
    scope: Literal["global", "layerwise"] = "global",
    exclude: Sequence[str] = (),
    structure: Literal["unstructured", "channel", "block"] = "unstructured",
    channel: ChannelConfig | None = None,
    block: BlockConfig | None = None,
    synthesis: Literal["deepinversion", "stream"] = "deepinversion",
    stream: StreamConfig | None = None,
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
        amount: global sparsity to reach (default 0.75); for ``structure="channel"`` the
            fraction of every group's channels; ``None`` for ``structure="block"``.
        out_dir: where every stage is persisted.
        preset: budget (``"tiny"``, ``"quick"``, ``"paper"``, ``"seed"`` or a
            :class:`Preset`).
        n: number of synthetic images (overrides the preset).
        iterations: DeepInversion steps per batch (overrides the preset).
        epochs: distillation epochs (overrides the preset).
        scope: as in :func:`~recoverprune.prune`.
        exclude: as in :func:`~recoverprune.prune`.
        structure: as in :func:`~recoverprune.prune` (``"channel"``: a smaller dense model;
            ``"block"``: a shorter one).
        channel: as in :func:`~recoverprune.prune` (channel-pruning settings).
        block: as in :func:`~recoverprune.prune` (block-dropping settings; the stage key
            of ``pruned.pt`` records them, so a resumed run refuses other ones by name).
        synthesis: ``"deepinversion"``: a fixed set of ``n`` DeepInversion images made
            before recovery; ``"stream"``: a :class:`SyntheticStream` of generator
            batches made between the epochs of recovery (``n`` and ``iterations`` then
            apply to the check set only; an epoch is ``stream.steps_per_epoch`` steps).
        stream: the stream's settings (default :class:`StreamConfig`).
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
        teacher = default_teacher()
    amount = _amount(amount, structure)
    p = _budget(preset, n=n, iterations=iterations, epochs=epochs)
    stream = _stream_of(synthesis, stream, p)  # checked before any compute
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
        read_as=read_as(spec),
    )
    clock = _StageClock(out / TIMING, rt.is_main)
    stage = {"seed": seed, "device": device, "accel": accel, "progress": progress}
    with clock("prune"):
        how = dict(scope=scope, exclude=exclude, structure=structure, channel=channel, block=block)
        student = _prune_stage(teacher, amount, how, out / PRUNED, rt, overwrite)
    pruned_snapshot = copy_model(student) if eval_data is not None else None
    with clock("synthesize"):
        synth = {"config": inv, "batch_size": p.batch_size, **_input_kwargs(spec), **stage}
        synth["stream"] = stream
        synthetic, check = _synthesize_stage(teacher, p, synth, out, rt, overwrite)
    with clock("recover"):
        student = run_stage(
            partial(
                recover, teacher, student, synthetic, config=dcfg, out_dir=out / RECOVER, **stage
            ),
            [out / RECOVER, out / STUDENT, out / REPORT],
            overwrite,
        )
    report = make_report(teacher, student, check, amount, scope, p, inv, dcfg, seed, rt)
    report.update(input=spec.to_dict(), **_structure_record(structure, channel, block, student))
    report["synthesis"] = _synthesis_record(synthetic)
    if eval_data is not None:
        with clock("evaluate"):
            report["top1"] = measure_top1(
                teacher, pruned_snapshot, student, eval_data, device, spec
            )
    report["seconds"] = clock.times
    if rt.is_main:
        _write_outputs(out, student, amount, spec, report, progress)
    return CompressResult(spec.attach(student), report)


def _synthesize_stage(
    teacher: nn.Module,
    p: Preset,
    synth: dict[str, Any],
    out: Path,
    rt: Runtime,
    overwrite: bool,
) -> tuple[SyntheticImages | SyntheticStream, SyntheticImages]:
    """The transfer set (or stream) and the independently seeded check set, and a grid."""
    stream_cfg = synth.pop("stream", None)
    if stream_cfg is not None:  # made during recovery, checkpointed with it
        keys = ("image_size", "mean", "std", "channels", "seed")
        synthetic: Any = SyntheticStream(teacher, stream_cfg, **{k: synth[k] for k in keys})
    else:
        synthetic = synthesize(teacher, p.n, out_dir=out / SYNTHETIC, overwrite=overwrite, **synth)
    check_seed = synth["seed"] + CHECK_SEED
    check = synthesize(
        teacher,
        p.check_n,
        out_dir=out / CHECK,
        overwrite=overwrite,
        **{**synth, "seed": check_seed},
    )
    if rt.is_main and stream_cfg is None and (overwrite or not (out / GRID).exists()):
        synthetic.save_grid(out / GRID)
    return synthetic, check


def _stream_of(synthesis: str, stream: StreamConfig | None, p: Preset) -> StreamConfig | None:
    """The stream's settings for ``synthesis="stream"``, ``None`` for a fixed set."""
    if synthesis not in ("deepinversion", "stream"):
        raise ValueError(f"synthesis must be 'deepinversion' or 'stream', got {synthesis!r}")
    return (stream or stream_for(p)) if synthesis == "stream" else None


def stream_for(p: Preset) -> StreamConfig:
    """The stream of a preset: its budget in generator batches (``StreamConfig()`` for quick).

    The pool starts with about ``p.n`` images (at most 8 batches) in batches of at most 128,
    and the warm-up batches take at most ``p.iterations`` steps.

    Example:
        >>> from recoverprune import PRESETS
        >>> cfg = stream_for(PRESETS["tiny"])
        >>> cfg.batch_size, cfg.initial_batches, cfg.generator.warmup_steps
        (16, 2, 4)
    """
    default = StreamConfig()
    batch = min(default.batch_size, p.batch_size)
    initial = max(1, min(default.initial_batches, p.n // batch))
    warm = min(default.generator.warmup_steps, p.iterations)
    return replace(
        default,
        batch_size=batch,
        initial_batches=initial,
        pool_size=max(default.pool_size, batch),
        generator=replace(default.generator, warmup_steps=warm),
    )


def _structure_record(
    structure: str, channel: ChannelConfig | None, block: BlockConfig | None, student: nn.Module
) -> dict[str, Any]:
    """How the student was made smaller (report.json's ``structure``, ``channel``, ``block``)."""
    record: dict[str, Any] = {"structure": structure}
    record["channel"] = asdict(channel) if channel else None
    if structure == "block":
        record["block"] = asdict(block or BlockConfig())
        record["dropped_blocks"] = dropped_blocks(student)
    return record


def _synthesis_record(synthetic: SyntheticImages | SyntheticStream) -> dict[str, Any]:
    """How the transfer images were made (report.json's ``synthesis``)."""
    if isinstance(synthetic, SyntheticStream):
        return {"method": "stream", "stream": asdict(synthetic.config), "made": synthetic.made}
    return {"method": "deepinversion", "made": len(synthetic)}


def _write_outputs(
    out: Path,
    student: nn.Module,
    amount: float,
    spec: InputSpec,
    report: dict[str, Any],
    progress: bool,
) -> None:
    """``student.pt`` (with the input description and channel widths) and ``report.json``."""
    final = {
        "state_dict": student.state_dict(),
        "amount": amount,
        "input": spec.to_dict(),
        "channel_spec": channel_spec(student),
    }
    save_atomic(final, out / STUDENT)
    write_json_atomic(report, out / REPORT)
    if progress:
        print_report(report)


def _amount(amount: float | None, structure: str) -> float | None:
    """``amount``, 0.75 when not given; ``None`` for block dropping, which takes none."""
    if structure != "block":
        return 0.75 if amount is None else amount
    if amount is not None:
        raise ValueError(
            f'structure="block" drops whole blocks and takes no amount (got {amount!r}): '
            "pass amount=None and block=BlockConfig(drop=N) or BlockConfig(speedup=X)"
        )
    return None


def _input_kwargs(spec: InputSpec) -> dict[str, Any]:
    return {"image_size": spec.size, "mean": spec.mean, "std": spec.std, "channels": spec.channels}


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
    channel = how["channel"] or (ChannelConfig() if how["structure"] == "channel" else None)
    parts = {**how, "channel": asdict(channel) if channel else None}
    del parts["block"]  # in the key only when blocks are dropped: older keys stay valid
    if how["structure"] == "block":
        parts["block"] = asdict(how["block"] or BlockConfig())
    key = stage_key(  # the defaults themselves: a default that changes is not a stale match
        teacher=fingerprint(teacher),
        amount=amount,
        **parts,
    )
    if reuse_pruned(path, key, overwrite):
        return load_model(teacher, path)
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
