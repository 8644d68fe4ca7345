"""Command line: ``recoverprune {evaluate,prune,synthesize,recover,compress,models}``.

A thin layer over the public functions; it owns no logic of its own beyond parsing,
loading checkpoints and printing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)"
    )
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast precision on CUDA (default auto: bf16 where supported)",
    )
    p.add_argument("--no-compile", action="store_true", help="disable torch.compile on CUDA")
    p.add_argument("--no-channels-last", action="store_true", help="disable channels_last on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_model(
    p: argparse.ArgumentParser, required: bool = True, flag: str = "--checkpoint"
) -> None:
    p.add_argument("--arch", required=required, help="zoo architecture (see `recoverprune models`)")
    p.add_argument(flag, required=required, help="checkpoint file (state_dict or dict holding one)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="default: read from the checkpoint"
    )


def _accel(args: argparse.Namespace) -> Any:
    from recoverprune import Accel

    return Accel(
        amp=args.amp,
        compile=False if args.no_compile else None,
        channels_last=False if args.no_channels_last else None,
    )


def _config_overrides(
    p: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str]
) -> None:
    """One ``--prefix-field`` option per scalar field (int, float, bool, str) of a config."""
    for f in fields(cls):
        kind = type(f.default)
        if f.name in skip or kind not in (int, float, bool, str):
            continue
        opt = f"--{prefix}{f.name.replace('_', '-')}"
        if kind is bool:
            p.add_argument(
                opt,
                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                default=None,
                metavar="BOOL",
                help=f"(default {f.default})",
            )
        else:
            p.add_argument(opt, type=kind, default=None, help=f"(default {f.default})")


def _apply_overrides(cfg: Any, args: argparse.Namespace, prefix: str) -> Any:
    dest = prefix.replace("-", "_")
    changes = {
        f.name: getattr(args, dest + f.name)
        for f in fields(cfg)
        if getattr(args, dest + f.name, None) is not None
    }
    return replace(cfg, **changes)


def _load(arch: str, path: str, num_classes: int | None) -> Any:
    from recoverprune.models import load_model

    return load_model(arch, path, num_classes=num_classes)


def _add_structure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--structure",
        default="unstructured",
        choices=["unstructured", "channel"],
        help="unstructured masks, or remove whole channels (a smaller, faster dense model; "
        'needs pip install "recoverprune[channel]")',
    )
    p.add_argument(
        "--speedup", type=float, default=None, help="channel: prune to this many times fewer MACs"
    )
    p.add_argument(
        "--importance", default="magnitude", choices=["magnitude", "taylor"], help="channel"
    )


def _channel_config(args: argparse.Namespace) -> Any:
    from recoverprune import ChannelConfig

    if args.structure != "channel":
        return None
    return ChannelConfig(importance=args.importance, speedup=args.speedup)


def _save_model(model: Any, path: str, **extra: Any) -> None:
    from recoverprune._io import save_atomic
    from recoverprune._structured import channel_spec

    if channel_spec(model) is not None:  # channel-pruned: load_model reshapes from this
        extra["channel_spec"] = channel_spec(model)

    save_atomic({"state_dict": model.state_dict(), **extra}, path)


def _init_distributed() -> None:
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
    from recoverprune._evaluate import evaluate

    model = _load(args.arch, args.checkpoint, args.num_classes)
    res = evaluate(
        model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    print(
        f"top-1 {res.top1:.2f} %  loss {res.loss:.4f}  ({res.n} images, {args.split} split, "
        f"{res.seconds:.1f} s)"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from rich import print as rprint

    from recoverprune import prune, sparsity

    model = _load(args.arch, args.checkpoint, args.num_classes)
    if args.structure == "channel":
        import torch

        from recoverprune._structured import count_macs

        pruned = prune(
            model,
            args.amount,
            exclude=args.exclude or (),
            structure="channel",
            channel=_channel_config(args),
        )
        _save_model(pruned, args.out, arch=args.arch, amount=args.amount, structure="channel")
        x = torch.zeros(1, *model.pretrained_cfg["input_size"])
        params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
        print(
            f"{args.arch} channel-pruned: {params[0]:,} -> {params[1]:,} parameters, "
            f"{count_macs(model, x):,} -> {count_macs(pruned, x):,} MACs"
        )
        print(f"wrote {args.out}")
        return 0
    pruned = prune(
        model, args.amount, scope=args.scope, exclude=args.exclude or (), include=args.include
    )
    _save_model(pruned, args.out, arch=args.arch, amount=args.amount, scope=args.scope)
    rprint(sparsity(pruned).table(title=f"{args.arch} pruned ({args.scope}, amount {args.amount})"))
    print(f"wrote {args.out}")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from recoverprune import InversionConfig, synthesize

    teacher = _load(args.arch, args.checkpoint, args.num_classes)
    cfg = _apply_overrides(InversionConfig(), args, "di-")
    ds = synthesize(
        teacher,
        args.n,
        config=cfg,
        batch_size=args.batch_size,
        iterations=args.iterations,
        image_size=args.image_size,
        out_dir=args.out,
        seed=args.seed,
        device=args.device,
        accel=_accel(args),
        progress=not args.no_progress,
    )
    grid = Path(args.out) / "grid.png"
    ds.save_grid(grid)
    print(f"wrote {len(ds)} images to {args.out} (preview: {grid})")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from recoverprune import DistillConfig, SyntheticImages, recover

    teacher = _load(args.arch, args.teacher, args.num_classes)
    student = _load(args.arch, args.student, args.num_classes)
    synthetic = SyntheticImages.load(args.synthetic)
    cfg = _apply_overrides(DistillConfig(), args, "kd-")
    student = recover(
        teacher,
        student,
        synthetic,
        config=cfg,
        epochs=args.epochs,
        val_data=args.val_data,
        out_dir=args.out,
        seed=args.seed,
        device=args.device,
        accel=_accel(args),
        progress=not args.no_progress,
    )
    print(f"wrote {Path(args.out) / 'student.pt'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from recoverprune import DistillConfig, InversionConfig, compress

    teacher = None
    if args.checkpoint is not None:
        if args.arch is None:
            raise SystemExit("--checkpoint needs --arch (see `recoverprune models`)")
        teacher = _load(args.arch, args.checkpoint, args.num_classes)
    res = compress(
        teacher,
        args.amount,
        out_dir=args.out,
        preset=args.preset,
        n=args.n,
        iterations=args.iterations,
        epochs=args.epochs,
        scope=args.scope,
        exclude=args.exclude or (),
        structure=args.structure,
        channel=_channel_config(args),
        inversion=_apply_overrides(InversionConfig(), args, "di-"),
        distill=_apply_overrides(DistillConfig(), args, "kd-"),
        eval_data=args.eval_data,
        seed=args.seed,
        device=args.device,
        accel=_accel(args),
        progress=not args.no_progress,
    )
    print(f"wrote {Path(args.out) / 'student.pt'} and {Path(args.out) / 'report.json'}")
    return 0 if res.student is not None else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs' CLI reference)."""
    from recoverprune import DistillConfig, InversionConfig, __version__

    parser = argparse.ArgumentParser(
        prog="recoverprune",
        description="Prune a trained image classifier and recover its accuracy without real data.",
    )
    parser.add_argument("--version", action="version", version=f"recoverprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the zoo architectures")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="top-1 of a (pruned) checkpoint on labelled images")
    _add_model(p)
    p.add_argument("--data", required=True, help="ImageFolder directory or .tar.gz of one")
    p.add_argument("--split", default="test", help="sub-folder to read (default: test)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where archives are extracted (default ~/.cache/recoverprune)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prune", help="magnitude-prune a checkpoint")
    _add_model(p)
    p.add_argument(
        "--amount", type=float, required=True, help="fraction of weights to remove, e.g. 0.75"
    )
    p.add_argument("--scope", default="global", choices=["global", "layerwise"])
    p.add_argument("--exclude", nargs="*", help="layer-name globs to keep dense, e.g. conv1 linear")
    p.add_argument("--include", nargs="*", default=None, help="layer-name globs that take part")
    p.add_argument("--out", required=True, help="pruned checkpoint to write")
    _add_structure(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("synthesize", help="DeepInversion images from a teacher checkpoint")
    _add_model(p)
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        required=True,
        help="number of images (spell it --num-images under torchrun, whose own "
        "options would otherwise claim --n)",
    )
    p.add_argument("--out", required=True, help="directory for shards + manifest (resumable)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=None, help="steps per batch (default 2000)")
    p.add_argument(
        "--image-size", type=int, default=None, help="input size if the model has no hint"
    )
    _config_overrides(p, InversionConfig, "di-", skip=("iterations",))
    _add_runtime(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "recover", help="distil the teacher into a pruned student on synthetic images"
    )
    p.add_argument("--arch", required=True)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="pruned student checkpoint (from `prune`)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--synthetic", required=True, help="directory written by `synthesize`")
    p.add_argument(
        "--out", required=True, help="directory for checkpoints and student.pt (resumable)"
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--val-data", default=None, help="optional labelled data to track top-1")
    _config_overrides(p, DistillConfig, "kd-", skip=("epochs",))
    _add_runtime(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("compress", help="prune -> synthesize -> recover in one resumable run")
    _add_model(p, required=False)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "paper"])
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="synthetic images (overrides the preset; --num-images under torchrun)",
    )
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--scope", default="global", choices=["global", "layerwise"])
    p.add_argument("--exclude", nargs="*")
    p.add_argument("--eval-data", default=None, help="labelled data to measure top-1 (optional)")
    p.add_argument("--out", default="recoverprune-out", help="output directory (resumable)")
    _add_structure(p)
    _config_overrides(p, InversionConfig, "di-", skip=("iterations",))
    _config_overrides(p, DistillConfig, "kd-", skip=("epochs",))
    _add_runtime(p)
    p.set_defaults(func=cmd_compress)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recoverprune`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from recoverprune._io import CheckpointError

    try:
        _init_distributed()
        return int(args.func(args))
    except (CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"recoverprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
