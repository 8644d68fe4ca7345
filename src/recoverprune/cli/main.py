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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_output(p)


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this "
        "process may use less those other jobs keep busy; printed at the start)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or lines (the start-up summary and results are still shown)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="print only errors and the final 'wrote' line"
    )


def _add_model(
    p: argparse.ArgumentParser,
    required: bool = True,
    flag: str = "--checkpoint",
    resize: bool = False,
) -> None:
    default = "" if required else " (default: none, the bundled ResNet-20 teacher)"
    p.add_argument("--arch", required=required, help=f"{_ARCH_HELP}{default}")
    p.add_argument(
        flag, required=required, help=f"checkpoint file (state_dict or dict holding one){default}"
    )
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
        help="normalisation mean, one value or one per channel (default: from the checkpoint "
        "or the model's hint; ImageNet values for RGB)",
    )
    p.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="normalisation std, one value or one per channel (default: as --mean)",
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
    from recoverprune.core.spec import InputSpec
    from recoverprune.models import load_model

    model = load_model(args.arch, path, num_classes=args.num_classes)
    spec = InputSpec.of(
        model, image_size=args.image_size, channels=args.channels, mean=args.mean, std=args.std
    )
    return spec.attach(model)


def _input(model: Any) -> dict[str, Any]:
    from recoverprune.core.spec import InputSpec

    return InputSpec.of(model).to_dict()


def _labelled(model: Any, data: str | None, resize: int | None) -> Any:
    """``data`` as given, or read now at ``--resize`` when that is set."""
    if data is None or resize is None:
        return data
    from recoverprune.data.evaluate import resolve_data

    return resolve_data(model, data, resize=resize)


def _add_structure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--structure",
        default="unstructured",
        choices=["unstructured", "channel"],
        help="unstructured masks, or remove whole channels (a smaller, faster dense model; "
        'needs pip install "recoverprune[channel]") (default unstructured)',
    )
    p.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="channel: prune to this many times fewer MACs instead of --amount (default: none)",
    )
    p.add_argument(
        "--importance",
        default="magnitude",
        choices=["magnitude", "taylor"],
        help="channel: how channels are ranked; taylor scores them on DeepInversion images "
        "(default magnitude)",
    )


def _channel_config(args: argparse.Namespace) -> Any:
    from recoverprune import ChannelConfig

    if args.structure != "channel":
        return None
    return ChannelConfig(importance=args.importance, speedup=args.speedup)


def _save_model(model: Any, path: str, **extra: Any) -> None:
    from recoverprune.core.io import save_atomic
    from recoverprune.pruning.channel_spec import channel_spec

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
    from recoverprune.data.evaluate import evaluate

    model = _load(args, args.checkpoint)
    res = evaluate(
        model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        resize=args.resize,
        progress=_bars(args),
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
    if args.structure == "channel":
        import torch

        from recoverprune.pruning.channels import count_macs

        pruned = prune(
            model,
            args.amount,
            exclude=args.exclude or (),
            structure="channel",
            channel=_channel_config(args),
        )
        _save_model(
            pruned,
            args.out,
            arch=args.arch,
            amount=args.amount,
            structure="channel",
            input=_input(model),
        )
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
        progress=_bars(args),
        overwrite=args.overwrite,
    )
    grid = Path(args.out) / "grid.png"
    ds.save_grid(grid)
    print(f"wrote {len(ds)} images to {args.out} (preview: {grid})")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from recoverprune import DistillConfig, SyntheticImages, recover
    from recoverprune.core.stages import run_stage

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
            progress=_bars(args),
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
    from recoverprune.models import default_teacher

    if args.checkpoint is not None:
        if args.arch is None:
            raise SystemExit("--checkpoint needs --arch (see `recoverprune models`)")
        teacher = _load(args, args.checkpoint)
    else:
        teacher = default_teacher()
    if not args.quiet:
        _startup(args, teacher)
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
        distill=_apply_overrides(PRESETS[args.preset].distill or DistillConfig(), args, "kd-"),
        eval_data=_labelled(teacher, args.eval_data, args.resize),
        image_size=args.image_size,
        mean=args.mean,
        std=args.std,
        channels=args.channels,
        seed=args.seed,
        device=args.device,
        accel=_accel(args),
        progress=_bars(args),
        overwrite=args.overwrite,
    )
    if args.no_progress and not args.quiet:
        from recoverprune.pipeline.report import print_report

        print_report(res.report)
    print(f"wrote {Path(args.out) / 'student.pt'} and {Path(args.out) / 'report.json'}")
    return 0 if res.student is not None else 1


def _startup(args: argparse.Namespace, teacher: Any) -> None:
    """The start-up summary of ``compress``: teacher, stages, budgets, output, threads, time."""
    from recoverprune import PRESETS
    from recoverprune.core.progress import console, duration, plan
    from recoverprune.core.spec import infer_input_shape
    from recoverprune.core.threads import threads
    from recoverprune.pipeline.estimate import rough_seconds

    p = PRESETS[args.preset]
    n, iterations = args.n or p.n, args.iterations or p.iterations
    epochs = args.epochs or p.epochs
    who = f"{args.arch} from {args.checkpoint}" if args.checkpoint else "bundled ResNet-20"
    lines = [
        f"recoverprune compress: teacher {who}; prune {args.amount:.0%} ({args.scope}); "
        f"DeepInversion {n:,} images x {iterations:,} iterations (batch {p.batch_size}); "
        f"recovery {epochs} epochs; preset {args.preset}; output {args.out}",
        threads().line(),
    ]
    try:
        shape = infer_input_shape(teacher, getattr(args, "image_size", None))
        est = rough_seconds(
            teacher,
            shape,
            n=n,
            iterations=iterations,
            epochs=epochs,
            batch_size=p.batch_size,
            device=args.device,
        )
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


_COMPRESS_DESCRIPTION = """\
Prune a teacher, synthesise DeepInversion images from it and distil it back into the
pruned student, every stage saved in --out and resumed after an interruption.

Without --arch/--checkpoint the teacher is the bundled CIFAR-10 ResNet-20
(recoverprune.models.default_teacher).
"""


def _configs() -> tuple[type, type]:
    from recoverprune import DistillConfig, InversionConfig

    return InversionConfig, DistillConfig


def _default(known: bool, which: int, name: str) -> str:
    """A config field's default for a help text (only needed when that help is shown)."""
    return str(getattr(_configs()[which], name)) if known else "from the config"


def _presets_text() -> str:
    from recoverprune import PRESETS
    from recoverprune.models import default_teacher_info

    info = default_teacher_info()
    teacher = f"It scores {info['top1']:.2f} % top-1 on the {info['data']} test split.\n"

    meant = {"tiny": "a smoke test, seconds", "quick": "a CPU", "paper": "a GPU, the reference"}
    lines = ["", "presets (images x DeepInversion iterations per batch, distillation epochs):"]
    for name, p in PRESETS.items():
        lines.append(
            f"  {name:6} {p.n:>6,} images x {p.iterations:>5,} iterations (batch {p.batch_size}), "
            f"{p.epochs:>3} epochs: {meant.get(name, '')}"
        )
    return teacher + "\n".join(lines)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs' CLI reference).

    Args:
        command: the sub-command whose options need torch (the ``--di-*``/``--kd-*``
            overrides come from the config classes): ``"*"`` for all of them, ``None`` for
            none (what ``recoverprune --help`` needs, without importing torch).

    Example:
        >>> build_parser(None).parse_args(["models"]).command
        'models'
    """
    from recoverprune.core.version import __version__

    def full(name: str) -> bool:
        return command in ("*", name)

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
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where archives are extracted (default ~/.cache/recoverprune)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)"
    )
    _add_output(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prune", help="magnitude-prune a checkpoint")
    _add_model(p)
    p.add_argument(
        "--amount", type=float, required=True, help="fraction of weights to remove, e.g. 0.75"
    )
    p.add_argument(
        "--scope",
        default="global",
        choices=["global", "layerwise"],
        help="one threshold for all layers, or the same fraction in each (default global)",
    )
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
    p.add_argument(
        "--batch-size", type=int, default=256, help="images optimised together (default 256)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help=f"steps per batch (default {_default(full('synthesize'), 0, 'iterations')})",
    )
    if full("synthesize"):
        _config_overrides(p, _configs()[0], "di-", skip=("iterations",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "recover", help="distil the teacher into a pruned student on synthetic images"
    )
    p.add_argument("--arch", required=True, help=_ARCH_HELP)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="pruned student checkpoint (from `prune`)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="default: read from the checkpoint"
    )
    p.add_argument("--synthetic", required=True, help="directory written by `synthesize`")
    p.add_argument(
        "--out", required=True, help="directory for checkpoints and student.pt (resumable)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"distillation epochs (default {_default(full('recover'), 1, 'epochs')})",
    )
    p.add_argument("--val-data", default=None, help="labelled data to track top-1 (default: none)")
    _add_input(p, resize=True)
    if full("recover"):
        _config_overrides(p, _configs()[1], "kd-", skip=("epochs",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser(
        "compress",
        help="prune -> synthesize -> recover in one resumable run",
        description=_COMPRESS_DESCRIPTION + (_presets_text() if full("compress") else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model(p, required=False, resize=True)
    p.add_argument(
        "--amount",
        type=float,
        default=0.75,
        help="fraction of the prunable weights to set to zero (default 0.75)",
    )
    p.add_argument(
        "--preset",
        default="quick",
        choices=["tiny", "quick", "paper", "seed"],
        help="compute budget, see above (default quick)",
    )
    p.add_argument(
        "--n",
        "--num-images",
        dest="n",
        type=int,
        default=None,
        help="synthetic images (default: the preset's; --num-images under torchrun)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="DeepInversion steps per batch (default: the preset's)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="distillation epochs (default: the preset's)"
    )
    p.add_argument(
        "--scope",
        default="global",
        choices=["global", "layerwise"],
        help="one magnitude threshold for all layers, or the same fraction in each "
        "(default global)",
    )
    p.add_argument("--exclude", nargs="*", help="layer-name globs to keep dense (default: none)")
    p.add_argument(
        "--eval-data",
        default=None,
        help="labelled ImageFolder directory or .tar.gz to measure top-1 of teacher, pruned "
        "and recovered (default: none; then only teacher-student agreement is reported)",
    )
    p.add_argument(
        "--out",
        default="recoverprune-out",
        help="output directory; rerun the same command to resume (default recoverprune-out)",
    )
    _add_structure(p)
    if full("compress"):
        _config_overrides(p, _configs()[0], "di-", skip=("iterations",))
        _config_overrides(p, _configs()[1], "kd-", skip=("epochs",))
    _add_runtime(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_compress)
    return parser


def _rank() -> int:
    from recoverprune.core.runtime import dist_info

    return dist_info()[0]


def _bars(args: argparse.Namespace) -> bool:
    return not (args.no_progress or args.quiet)


def _settle_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (else the automatic policy) and say what was chosen."""
    from recoverprune.core.progress import console
    from recoverprune.core.threads import set_threads, threads

    chosen = set_threads(args.threads) if args.threads is not None else threads()
    if not args.quiet and (args.command != "compress"):
        console.print(chosen.line(), markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recoverprune`` console script.

    Expected failures (bad input, a corrupt or unwritable file, a full disk, a directory
    made with other settings) print one paragraph and return 2; ``--debug`` shows their
    traceback too. Anything else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, also after the command
    argv = [a for a in argv if a != "--debug"]
    if "torch" not in sys.modules:  # read once, when torch loads
        # Idle OpenMP threads sleep instead of spinning, so that a job starting beside this
        # one slows it gently (benchmarks/threads.py).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    import recoverprune.core.runtime  # noqa: F401  (torch._dynamo before any process group)
    from recoverprune.core.errors import explain

    try:
        _init_distributed()
        if hasattr(args, "threads"):
            if _rank() > 0:  # one start-up summary and threads line, from rank 0
                args.quiet = True
            _settle_threads(args)
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
