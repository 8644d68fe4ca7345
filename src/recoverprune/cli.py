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
from functools import partial
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
    p: argparse.ArgumentParser,
    required: bool = True,
    flag: str = "--checkpoint",
    resize: bool = False,
) -> None:
    p.add_argument("--arch", required=required, help=_ARCH_HELP)
    p.add_argument(flag, required=required, help="checkpoint file (state_dict or dict holding one)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="default: read from the checkpoint"
    )
    _add_input(p, resize)


_ARCH_HELP = (
    "model spec: a zoo name (see `recoverprune models`), torchvision:NAME, timm:NAME or "
    "module:pkg.mod:factory (weights come from the checkpoint, never downloaded)"
)


def _add_input(p: argparse.ArgumentParser, resize: bool = False) -> None:
    """The model's input description; defaults come from the checkpoint or the model."""
    p.add_argument(
        "--image-size", type=int, default=None, help="input size (default: from the model)"
    )
    p.add_argument(
        "--channels", type=int, default=None, help="input channels (default: first conv)"
    )
    p.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="normalisation mean, one value or one per channel",
    )
    p.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="normalisation std, one value or one per channel",
    )
    if resize:
        p.add_argument(
            "--resize",
            type=int,
            default=None,
            help="resize labelled images to this size (default: the input size)",
        )


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute what --out holds from other settings instead of refusing it",
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


def _load(args: argparse.Namespace, path: str) -> Any:
    """Load ``--arch`` from ``path`` and attach the input description (options > checkpoint)."""
    from recoverprune._spec import InputSpec
    from recoverprune.models import load_model

    model = load_model(args.arch, path, num_classes=args.num_classes)
    spec = InputSpec.of(
        model, image_size=args.image_size, channels=args.channels, mean=args.mean, std=args.std
    )
    return spec.attach(model)


def _input(model: Any) -> dict[str, Any]:
    from recoverprune._spec import InputSpec

    return InputSpec.of(model).to_dict()


def _labelled(model: Any, data: str | None, resize: int | None) -> Any:
    """``data`` as given, or read now at ``--resize`` when that is set."""
    if data is None or resize is None:
        return data
    from recoverprune._evaluate import resolve_data

    return resolve_data(model, data, resize=resize)


def _save_model(model: Any, path: str, **extra: Any) -> None:
    from recoverprune._io import save_atomic

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

    model = _load(args, args.checkpoint)
    res = evaluate(
        model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        resize=args.resize,
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

    model = _load(args, args.checkpoint)
    pruned = prune(
        model, args.amount, scope=args.scope, exclude=args.exclude or (), include=args.include
    )
    _save_model(
        pruned, args.out, arch=args.arch, amount=args.amount, scope=args.scope, input=_input(model)
    )
    rprint(sparsity(pruned).table(title=f"{args.arch} pruned ({args.scope}, amount {args.amount})"))
    print(f"wrote {args.out}")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from recoverprune import InversionConfig, synthesize

    teacher = _load(args, args.checkpoint)
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
        overwrite=args.overwrite,
    )
    grid = Path(args.out) / "grid.png"
    ds.save_grid(grid)
    print(f"wrote {len(ds)} images to {args.out} (preview: {grid})")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from recoverprune import DistillConfig, SyntheticImages, recover
    from recoverprune._checks import run_stage

    teacher = _load(args, args.teacher)
    student = _load(args, args.student)
    synthetic = SyntheticImages.load(args.synthetic)
    cfg = _apply_overrides(DistillConfig(), args, "kd-")
    student = run_stage(
        partial(
            recover,
            teacher,
            student,
            synthetic,
            config=cfg,
            epochs=args.epochs,
            val_data=_labelled(student, args.val_data, args.resize),
            out_dir=args.out,
            seed=args.seed,
            device=args.device,
            accel=_accel(args),
            progress=not args.no_progress,
        ),
        [
            Path(args.out) / f
            for f in ("recover-checkpoint.pt", "student.pt", "recover-history.json")
        ],
        args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # with the input description, for `evaluate`
        _save_model(
            student, str(Path(args.out) / "student.pt"), arch=args.arch, input=_input(student)
        )
    print(f"wrote {Path(args.out) / 'student.pt'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from recoverprune import PRESETS, DistillConfig, InversionConfig, compress

    teacher = None
    if args.checkpoint is not None:
        if args.arch is None:
            raise SystemExit("--checkpoint needs --arch (see `recoverprune models`)")
        teacher = _load(args, args.checkpoint)
    else:
        from recoverprune.models import default_teacher

        teacher = default_teacher()
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
        inversion=_apply_overrides(InversionConfig(), args, "di-"),
        distill=_apply_overrides(PRESETS[args.preset].distill or DistillConfig(), args, "kd-"),
        eval_data=_labelled(teacher, args.eval_data, args.resize),
        image_size=args.image_size,
        mean=args.mean,
        std=args.std,
        channels=args.channels,
        seed=args.seed,
        device=args.device,
        accel=_accel(args),
        progress=not args.no_progress,
        overwrite=args.overwrite,
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
    parser.add_argument(
        "--debug", action="store_true", help="also show the traceback of an expected error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the zoo architectures")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="top-1 of a (pruned) checkpoint on labelled images")
    _add_model(p, resize=True)
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
    p.add_argument("--iterations", type=int, default=None, help="steps per batch (default 200)")
    _config_overrides(p, InversionConfig, "di-", skip=("iterations",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "recover", help="distil the teacher into a pruned student on synthetic images"
    )
    p.add_argument("--arch", required=True, help=_ARCH_HELP)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="pruned student checkpoint (from `prune`)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--synthetic", required=True, help="directory written by `synthesize`")
    p.add_argument(
        "--out", required=True, help="directory for checkpoints and student.pt (resumable)"
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--val-data", default=None, help="optional labelled data to track top-1")
    _add_input(p, resize=True)
    _config_overrides(p, DistillConfig, "kd-", skip=("epochs",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("compress", help="prune -> synthesize -> recover in one resumable run")
    _add_model(p, required=False, resize=True)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "paper", "seed"])
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
    _config_overrides(p, InversionConfig, "di-", skip=("iterations",))
    _config_overrides(p, DistillConfig, "kd-", skip=("epochs",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_compress)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recoverprune`` console script.

    Expected failures (bad input, a corrupt or unwritable file, a full disk, a directory
    made with other settings) print one paragraph and return 2; ``--debug`` shows their
    traceback too. Anything else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, also after the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    from recoverprune._checks import explain

    try:
        _init_distributed()
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = explain(exc)
        if message is None or debug:
            raise
        print(f"recoverprune {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
