"""The commands: each reads its arguments, calls the library and prints what it did."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import partial, wraps
from pathlib import Path
from typing import Any

from recoverprune.cli.options import (
    accel,
    apply_overrides,
    bars,
    block_config,
    calibration_config,
    channel_budget,
    channel_config,
)
from recoverprune.core.paths import check_outputs

__all__ = [
    "cmd_compress",
    "cmd_evaluate",
    "cmd_models",
    "cmd_prune",
    "cmd_quantize",
    "cmd_recover",
    "cmd_synthesize",
    "init_distributed",
]


def _load(args: argparse.Namespace, path: str, teacher: bool = True, batch: int = 1) -> Any:
    """Load ``--arch`` from ``path`` with its input description (options > checkpoint); a
    teacher's weights are checked for plausibility and outliers, a student's for impossible
    values (a short recovery may leave its BatchNorm statistics extreme)."""
    from recoverprune.core.spec import InputSpec
    from recoverprune.core.validate import check_finite, check_outliers, check_plausible
    from recoverprune.models import load_model
    from recoverprune.models.builders import parse_spec

    model = load_model(args.arch, path, num_classes=args.num_classes)
    if not teacher:
        check_finite(model, f"checkpoint {path}")
    check_plausible(model, f"checkpoint {path}", bounds=teacher)
    if teacher and not args.allow_outlier_weights:
        check_outliers(model, f"checkpoint {path}")
    # the zoo's size hint is what its models are trained at; a torchvision/timm builder's
    # hint is its reference weights' size, which says nothing about the user's checkpoint
    recorded = InputSpec.of(model).size if parse_spec(args.arch)[0] == "zoo" else None
    return _sized(model, args, recorded, f"checkpoint {path}", batch)


def _sized(model: Any, args: argparse.Namespace, trained: Any, what: str, batch: int) -> Any:
    """``model`` with its input spec attached, once a ``batch`` of its images fits in memory
    and ``--image-size`` is one it can take (see ``check_image_size``)."""
    from recoverprune.core.resources import check_batch_memory
    from recoverprune.core.validate import check_image_size

    spec = _spec(model, args)
    check_batch_memory(model, spec.shape, batch)  # before the probe at that size
    if args.image_size is not None:
        check_image_size(model, spec.shape, trained=trained, what=what)
    return spec.attach(model)


def _spec(model: Any, args: argparse.Namespace) -> Any:
    """The input description of ``model`` with the ``--image-size/--channels/--mean/--std`` given."""
    from recoverprune.core.spec import InputSpec

    return InputSpec.of(
        model, image_size=args.image_size, channels=args.channels, mean=args.mean, std=args.std
    )


def _input(model: Any) -> dict[str, Any]:
    from recoverprune.core.spec import InputSpec

    return InputSpec.of(model).to_dict()


def _runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The seed, device, acceleration and progress options every long command passes on."""
    return {"seed": args.seed, "device": args.device, "accel": accel(args), "progress": bars(args)}


def _labelled(model: Any, data: str | None, args: argparse.Namespace) -> Any:
    """``data`` as given, or read now when ``--resize`` or ``--classes`` asks for it."""
    classes, subset = getattr(args, "classes", None), getattr(args, "subset", False)
    if data is None or (args.resize is None and classes is None and not subset):
        return data
    from recoverprune.evaluation.evaluate import resolve_data

    return resolve_data(model, data, input=_read_as(model, args), classes=classes, subset=subset)


def _read_as(model: Any, args: argparse.Namespace) -> Any:
    """How a data path is read for ``model``: its own input spec, resized by ``--resize``."""
    if args.resize is None:
        return None
    from recoverprune.core.spec import InputSpec

    return InputSpec.of(model, image_size=args.resize)


def _save_model(model: Any, path: str, **extra: Any) -> None:
    """``model`` in the one model-file format (:func:`~recoverprune.core.io.save_model`),
    with its channel widths (load_model reshapes from them) and class names."""
    from recoverprune.core.io import save_model
    from recoverprune.evaluation.evaluate import model_classes
    from recoverprune.pruning.channel_spec import channel_spec

    names = model_classes(model) or None
    save_model(model, path, channel_spec=channel_spec(model), label_names=names, **extra)


def _locked(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``cmd`` holding the lock of its ``--out`` (a file for prune and quantize) while it runs; compress
    takes its own, in the library."""

    @wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        from recoverprune.core.lock import locked

        with locked(args.out, file=args.command in ("prune", "quantize")):
            return cmd(args)

    return run


def init_distributed() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(
            seconds=float(os.environ.get("RECOVERPRUNE_DIST_TIMEOUT", "1800"))
        )
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)


def cmd_models(args: argparse.Namespace) -> int:
    from recoverprune.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recoverprune.evaluation.evaluate import evaluate

    model = _load(args, args.checkpoint, teacher=False)
    res = evaluate(
        model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        input=_read_as(model, args),
        classes=args.classes,
        subset=args.subset,
        progress=bars(args),
    )
    print(
        f"top-1 {res.top1:.2f} %  loss {res.loss:.4f}  ({res.n} images, {args.split} split, "
        f"{res.seconds:.1f} s)"
    )
    return 0


@_locked
def cmd_prune(args: argparse.Namespace) -> int:
    from rich import print as rprint

    from recoverprune import UnstructuredConfig, prune, sparsity
    from recoverprune.core.spec import InputSpec

    check_outputs({"--checkpoint": args.checkpoint}, {"--out": args.out})
    block = block_config(args)  # refuses block options that do not fit, before loading
    channel = channel_config(args)
    budget = args.structure == "channel" and channel_budget(args)
    if args.amount is None and block is None and not budget:
        raise ValueError(
            "prune needs --amount (only --structure block, and --structure channel with "
            "--speedup or --latency-speedup, take none)"
        )
    model = _load(args, args.checkpoint)
    if args.structure == "unstructured":
        how: Any = UnstructuredConfig(args.amount, scope=args.scope, include=args.include)
        meta, kw = {"scope": args.scope}, {}
    else:
        how, meta = [c for c in (block, channel) if c is not None], {"structure": args.structure}
        spec = InputSpec.of(model, image_size=args.image_size)
        kw = {"calibration": calibration_config(args), "input": spec}
    pruned = prune(model, how, exclude=args.exclude or (), **kw)
    _save_model(pruned, args.out, arch=args.arch, amount=args.amount, input=_input(model), **meta)
    if args.structure == "unstructured":
        title = f"{args.arch} pruned ({args.scope}, amount {args.amount})"
        rprint(sparsity(pruned).table(title=title))
    else:
        print(_smaller(args.arch, model, pruned))
    print(f"wrote {args.out}")
    return 0


def _smaller(arch: str, model: Any, pruned: Any) -> str:
    """One line: what channel pruning or block dropping removed, in parameters and MACs."""
    import torch

    from recoverprune.pruning.channel_spec import dropped_blocks, kept_channels
    from recoverprune.pruning.measure import count_macs

    x = torch.zeros(1, *model.pretrained_cfg["input_size"])
    params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
    dropped = dropped_blocks(pruned)
    how = "channel-pruned" if dropped is None else f"without blocks {', '.join(dropped)}"
    if dropped is not None and kept_channels(pruned) is not None:
        how += ", channel-pruned"
    return (
        f"{arch} {how}: {params[0]:,} -> {params[1]:,} parameters, "
        f"{count_macs(model, x):,} -> {count_macs(pruned, x):,} MACs"
    )


@_locked
def cmd_synthesize(args: argparse.Namespace) -> int:
    from recoverprune import InversionConfig, synthesize
    from recoverprune.core.spec import InputSpec
    from recoverprune.data.synthetic_io import check_export_dir, export_images
    from recoverprune.evaluation.evaluate import model_classes

    check_outputs({"--checkpoint": args.checkpoint}, {"--out": args.out, "--export": args.export})
    if args.export is not None:  # refused before the synthesis, not after
        check_export_dir(args.export, args.overwrite)
    teacher = _load(args, args.checkpoint, batch=args.batch_size)
    cfg = apply_overrides(InversionConfig(), args, "di-")
    ds = synthesize(
        teacher,
        args.n,
        config=cfg,
        batch_size=args.batch_size,
        iterations=args.iterations,
        input=InputSpec.of(teacher, image_size=args.image_size),
        out_dir=args.out,
        overwrite=args.overwrite,
        **_runtime(args),
    )
    grid = Path(args.out) / "grid.png"
    ds.save_grid(grid)
    print(f"wrote {len(ds)} images to {args.out} (preview: {grid})")
    if args.export is not None:
        names = model_classes(teacher)
        export_images(ds, args.export, args.format, classes=names, overwrite=args.overwrite)
        print(f"exported them to {args.export} ({args.format})")
    return 0


@_locked
def cmd_recover(args: argparse.Namespace) -> int:
    from recoverprune import DistillConfig, SyntheticImages, recover
    from recoverprune.core.resources import check_batch_memory
    from recoverprune.core.stages import run_stage
    from recoverprune.distill.loop import CHECKPOINT, FINAL, HISTORY

    out = Path(args.out)
    written = [out / name for name in (CHECKPOINT, FINAL, HISTORY)]
    inputs = {"--teacher": args.teacher, "--student": args.student, "--synthetic": args.synthetic}
    check_outputs(
        {**inputs, "--val-data": args.val_data},
        {"--out": out, **{path.name: path for path in written}},
        untouched=["--val-data"],
    )
    teacher = _load(args, args.teacher)
    student = _load(args, args.student, teacher=False)
    synthetic = SyntheticImages.load(args.synthetic)
    cfg = apply_overrides(DistillConfig(), args, "kd-")
    check_batch_memory(teacher, synthetic.image_shape, min(cfg.batch_size, len(synthetic)))
    student = run_stage(
        partial(
            recover,
            teacher,
            student,
            synthetic,
            config=cfg,
            epochs=args.epochs,
            val_data=_labelled(student, args.val_data, args),
            out_dir=args.out,
            **_runtime(args),
        ),
        written,
        args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # with the input description, for `evaluate`
        _save_model(student, str(out / FINAL), arch=args.arch, input=_input(student))
    print(f"wrote {out / 'student.pt'}")
    return 0


@_locked
def cmd_quantize(args: argparse.Namespace) -> int:
    from recoverprune import QuantConfig, SyntheticImages, quantize
    from recoverprune.evaluation.evaluate import evaluate, resolve_data

    inputs = {"--checkpoint": args.checkpoint, "--synthetic": args.synthetic}
    check_outputs(
        {**inputs, "--eval-data": args.eval_data}, {"--out": args.out}, untouched=["--eval-data"]
    )
    if not args.out.endswith(".onnx"):
        raise ValueError(f"--out is an ONNX file to write (e.g. student.int8.onnx), not {args.out}")
    model = _load(args, args.checkpoint, teacher=False)
    data = resolve_data(model, args.eval_data) if args.eval_data is not None else None
    cfg = QuantConfig(
        method=args.method,
        calibration_images=args.calibration_images,
        equalize=args.equalize,
        bias_correction=args.bias_correction,
        distill_steps=args.distill_steps,
    )
    q = quantize(model, SyntheticImages.load(args.synthetic), config=cfg, path=args.out)
    print(f"wrote {q.path} ({q.bytes:,} bytes; INT8, calibrated on {args.synthetic})")
    if data is not None:
        fp32, int8 = (evaluate(m, data, progress=False) for m in (model, q))
        print(f"top-1 fp32 {fp32.top1:.2f} %, INT8 {int8.top1:.2f} % ({fp32.n} images)")
    print(_latency_line(model, q.path))
    return 0


def _latency_line(model: Any, path: str) -> str:
    """fp32 ``model`` against the INT8 file in onnxruntime, batch 1 and 64, one thread."""
    from recoverprune.core.spec import InputSpec
    from recoverprune.evaluation.latency import ort_latency
    from recoverprune.pipeline.report import LATENCY_SECONDS

    shape = InputSpec.of(model).shape
    r = ort_latency({"fp32": model, "int8": path}, shape, min_seconds=LATENCY_SECONDS)
    cells = [
        f"batch {b}: fp32 {t['fp32']:.2f} ms, INT8 {t['int8']:.2f} ms "
        f"({t['fp32'] / t['int8']:.2f}x faster)"
        for b, t in r["batches"].items()
    ]
    features = ", ".join(r["cpu_features"]) or "none read"
    return f"latency in {r['runtime']}, {r['threads']} thread (CPU {features}): " + "; ".join(cells)


def _compress_how(args: argparse.Namespace, block: Any) -> Any:
    """What ``compress`` prunes: the configs of ``--structure`` (default amount 0.75)."""
    from dataclasses import replace

    from recoverprune import UnstructuredConfig

    amount = 0.75 if args.amount is None else args.amount
    if args.structure == "unstructured":
        return UnstructuredConfig(amount, scope=args.scope)
    channel = channel_config(args)
    if args.structure == "channel" and not channel_budget(args):
        channel = replace(channel, amount=amount)
    return [c for c in (block, channel) if c is not None]


def _source(args: argparse.Namespace) -> Any:
    """The transfer source of ``--synthesis``: ``None`` (the DeepInversion set) or the stream."""
    if args.synthesis != "stream":
        return None
    from recoverprune.experimental.stream import StreamSource

    return StreamSource()


def cmd_compress(args: argparse.Namespace) -> int:
    from recoverprune import PRESETS, DistillConfig, InversionConfig, compress
    from recoverprune.models import default_teacher
    from recoverprune.pipeline.layout import (
        CHECK,
        INT8,
        PRUNED,
        RECOVER,
        REPORT,
        STUDENT,
        SYNTHETIC,
    )

    out = Path(args.out)
    written = (PRUNED, SYNTHETIC, CHECK, RECOVER, STUDENT, INT8, REPORT)
    check_outputs(
        {"--checkpoint": args.checkpoint, "--eval-data": args.eval_data},
        {"--out": out, **{name: out / name for name in written}},
        untouched=["--eval-data"],
    )
    block = block_config(args)  # refuses block options that do not fit, before any work
    batch = PRESETS[args.preset].batch_size  # the library checks recovery's batch too
    if args.checkpoint is None:  # the bundled teacher, as checked as a checkpoint
        teacher = _sized(default_teacher(), args, (32, 32), "bundled ResNet-20", batch)
    elif args.arch is None:
        raise SystemExit("--checkpoint needs --arch (see `recoverprune models`)")
    else:
        teacher = _load(args, args.checkpoint, batch=batch)
    if not args.quiet:
        _startup(args, teacher)
    res = compress(
        teacher,
        _compress_how(args, block),
        out_dir=args.out,
        preset=args.preset,
        n=args.n,
        iterations=args.iterations,
        epochs=args.epochs,
        exclude=args.exclude or (),
        calibration=calibration_config(args),
        source=_source(args),
        inversion=apply_overrides(InversionConfig(), args, "di-"),
        distill=apply_overrides(PRESETS[args.preset].distill or DistillConfig(), args, "kd-"),
        eval_data=_labelled(teacher, args.eval_data, args),
        input=_spec(teacher, args),
        overwrite=args.overwrite,
        quantize=args.quantize,
        **_runtime(args),
    )
    if args.no_progress and not args.quiet:
        from recoverprune.pipeline.report import print_report

        print_report(res.report)
    files = [out / STUDENT, *([out / INT8] if args.quantize else []), out / REPORT]
    print(f"wrote {', '.join(map(str, files[:-1]))} and {files[-1]}")
    return 0 if res.student is not None else 1


def _startup(args: argparse.Namespace, teacher: Any) -> None:
    """The start-up summary of ``compress``: teacher, stages, budgets, output, threads, time."""
    from recoverprune import PRESETS
    from recoverprune.core.progress import console, duration, plan
    from recoverprune.core.spec import InputSpec
    from recoverprune.core.threads import threads
    from recoverprune.pipeline.estimate import rough_seconds

    p = PRESETS[args.preset]
    n, iterations, epochs = args.n or p.n, args.iterations or p.iterations, args.epochs or p.epochs
    who = f"{args.arch} from {args.checkpoint}" if args.checkpoint else "bundled ResNet-20"
    if args.structure == "block" and args.block_speedup is not None:
        what = f"drop residual blocks to {args.block_speedup}x fewer MACs"
    elif args.structure == "block":
        what = f"drop {args.drop_blocks or 1} residual block(s)"
    elif args.structure == "channel" and args.latency_speedup is not None:
        what = f"remove channels until {args.latency_speedup}x faster here (measured)"
    elif args.structure == "channel" and args.speedup is not None:
        what = f"remove channels to {args.speedup}x fewer MACs"
    else:
        what = f"prune {0.75 if args.amount is None else args.amount:.0%} ({args.scope})"
    lines = [
        f"recoverprune compress: teacher {who}; {what}; "
        + (
            f"DeepInversion {n:,} images x {iterations:,} iterations (batch {p.batch_size}); "
            if args.synthesis == "deepinversion"
            else f"generator batches streamed into recovery (check set {p.check_n} images); "
        )
        + f"recovery {epochs} epochs; "
        + ("INT8 calibrated on the synthetic images; " if args.quantize else "")
        + f"preset {args.preset}; output {args.out}",
        threads().line(),
    ]
    try:
        if args.synthesis == "stream":
            raise ValueError("not modelled for --synthesis stream yet")
        shape = InputSpec.of(teacher, image_size=args.image_size).shape
        budget = {"n": n, "iterations": iterations, "epochs": epochs, "batch_size": p.batch_size}
        est = rough_seconds(teacher, shape, **budget, device=args.device)
    except (ValueError, RuntimeError) as exc:  # the stages will say what is wrong
        lines.append(f"time estimate unavailable ({exc})")
    else:
        plan(est)
        again = "; a resumed run skips finished work" if Path(args.out).is_dir() else ""
        lines.append(
            f"rough time: synthesis {duration(est['DeepInversion'])}, recovery "
            f"{duration(est['Recovery'])}, about {duration(sum(est.values()))} in all "
            f"(from one timed pass of the teacher{again})"
        )
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
