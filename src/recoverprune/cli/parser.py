"""The argument parser: one function per command."""

from __future__ import annotations

import argparse
from typing import Any

from recoverprune.cli.commands import (
    cmd_compress,
    cmd_evaluate,
    cmd_models,
    cmd_prune,
    cmd_recover,
    cmd_synthesize,
)
from recoverprune.cli.options import (
    ARCH_HELP,
    add_classes,
    add_input,
    add_model,
    add_output,
    add_overwrite,
    add_runtime,
    add_structure,
    config_default,
    config_overrides,
    configs,
)

__all__ = ["build_parser"]


_COMPRESS_DESCRIPTION = """\
Prune a teacher, synthesise DeepInversion images from it and distil it back into the
pruned student, every stage saved in --out and resumed after an interruption.

Without --arch/--checkpoint the teacher is the bundled CIFAR-10 ResNet-20
(recoverprune.models.default_teacher).
"""


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

    parser = argparse.ArgumentParser(
        prog="recoverprune",
        description="Prune a trained image classifier and recover its accuracy without real data.",
    )
    parser.add_argument("--version", action="version", version=f"recoverprune {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="also show the traceback of an expected error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _models_parser(sub)
    _evaluate_parser(sub)
    _prune_parser(sub)
    _synthesize_parser(sub, command in ("*", "synthesize"))
    _recover_parser(sub, command in ("*", "recover"))
    _compress_parser(sub, command in ("*", "compress"))
    return parser


def _models_parser(sub: Any) -> None:
    """The ``models`` command's options."""
    p = sub.add_parser("models", help="list the zoo architectures")
    p.set_defaults(func=cmd_models)


def _evaluate_parser(sub: Any) -> None:
    """The ``evaluate`` command's options."""
    p = sub.add_parser("evaluate", help="top-1 of a (pruned) checkpoint on labelled images")
    add_model(p, resize=True)
    p.add_argument("--data", required=True, help="ImageFolder directory or .tar.gz of one")
    add_classes(p)
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
    add_output(p)
    p.set_defaults(func=cmd_evaluate)


def _prune_parser(sub: Any) -> None:
    """The ``prune`` command's options."""
    p = sub.add_parser(
        "prune", help="magnitude-prune a checkpoint, remove channels or drop residual blocks"
    )
    add_model(p)
    p.add_argument(
        "--amount",
        type=float,
        default=None,
        help="fraction of weights to remove, e.g. 0.75 (default: none; needed except with "
        "--structure block)",
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
    add_structure(p)
    p.set_defaults(func=cmd_prune)


def _synthesize_parser(sub: Any, full: bool) -> None:
    """The ``synthesize`` command's options."""
    p = sub.add_parser("synthesize", help="DeepInversion images from a teacher checkpoint")
    add_model(p)
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
        help=f"steps per batch (default {config_default(full, 0, 'iterations')})",
    )
    _finish(p, cmd_synthesize, full, "di-")


def _recover_parser(sub: Any, full: bool) -> None:
    """The ``recover`` command's options."""
    p = sub.add_parser(
        "recover", help="distil the teacher into a pruned student on synthetic images"
    )
    p.add_argument("--arch", required=True, help=ARCH_HELP)
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
        help=f"distillation epochs (default {config_default(full, 1, 'epochs')})",
    )
    p.add_argument("--val-data", default=None, help="labelled data to track top-1 (default: none)")
    add_classes(p)
    add_input(p, resize=True)
    _finish(p, cmd_recover, full, "kd-")


def _compress_parser(sub: Any, full: bool) -> None:
    """The ``compress`` command's options."""
    p = sub.add_parser(
        "compress",
        help="prune -> synthesize -> recover in one resumable run",
        description=_COMPRESS_DESCRIPTION + (_presets_text() if full else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p, required=False, resize=True)
    p.add_argument(
        "--amount",
        type=float,
        default=None,
        help="fraction of the prunable weights to set to zero (default 0.75; none with "
        "--structure block)",
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
        "--synthesis",
        default="deepinversion",
        choices=["deepinversion", "stream"],
        help="a fixed DeepInversion set made before recovery, or fresh generator batches "
        "streamed into it (an epoch is then 8 steps) (default deepinversion)",
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
    add_classes(p)
    p.add_argument(
        "--out",
        default="recoverprune-out",
        help="output directory; rerun the same command to resume (default recoverprune-out)",
    )
    add_structure(p)
    _finish(p, cmd_compress, full, "di-", "kd-")


def _finish(p: Any, func: Any, full: bool, *prefixes: str) -> None:
    """The config overrides of ``prefixes`` (when ``full``), runtime and ``--overwrite``."""
    budgets = {"di-": (0, "iterations"), "kd-": (1, "epochs")}  # set by their own options
    for prefix in prefixes if full else ():
        which, own = budgets[prefix]
        config_overrides(p, configs()[which], prefix, skip=(own,))
    add_runtime(p)
    add_overwrite(p)
    p.set_defaults(func=func)
