"""The argument parser: one function per command."""

from __future__ import annotations

import argparse
from typing import Any

import recoverprune.cli.commands as commands
import recoverprune.cli.options as options
from recoverprune.cli.options import ARCH_HELP, COUNT, FRACTION, number

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
    _quantize_parser(sub)
    return parser


def _models_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list the zoo architectures")
    p.set_defaults(func=commands.cmd_models)


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="top-1 of a (pruned) checkpoint on labelled images")
    options.add_model(p, resize=True)
    p.add_argument("--data", required=True, help="ImageFolder directory or .tar.gz of one")
    options.add_classes(p)
    p.add_argument("--split", default="test", help="sub-folder to read (default: test)")
    p.add_argument("--batch-size", type=COUNT, default=512, help="images per batch (default 512)")
    p.add_argument(
        "--cache-dir",
        help="where archives are extracted (default ~/.cache/recoverprune)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    options.add_output(p)
    p.set_defaults(func=commands.cmd_evaluate)


def _prune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="magnitude-prune a checkpoint, remove channels or drop residual blocks"
    )
    options.add_model(p)
    p.add_argument(
        "--amount",
        type=FRACTION,
        help="fraction of weights to remove, e.g. 0.75 (default: none; needed except with "
        "--structure block)",
    )
    _scope(p, "one threshold for all layers, or the same fraction in each (default global)")
    p.add_argument("--exclude", nargs="*", help="layer-name globs to keep dense, e.g. conv1 linear")
    p.add_argument("--include", nargs="*", help="layer-name globs that take part")
    p.add_argument("--out", required=True, help="pruned checkpoint to write")
    options.add_structure(p)
    options.add_flags(p, "--allow-outlier-weights")
    p.set_defaults(func=commands.cmd_prune)


def _synthesize_parser(sub: Any, full: bool) -> None:
    p = sub.add_parser("synthesize", help="DeepInversion images from a teacher checkpoint")
    options.add_model(p)
    _num_images(
        p,
        "number of images (spell it --num-images under torchrun, whose own "
        "options would otherwise claim --n)",
        required=True,
    )
    p.add_argument("--out", required=True, help="directory for shards + manifest (resumable)")
    p.add_argument(
        "--batch-size", type=COUNT, default=256, help="images optimised together (default 256)"
    )
    p.add_argument(
        "--iterations",
        type=COUNT,
        help=f"steps per batch (default {options.config_default(full, 0, 'iterations')})",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="also write the images to DIR for other toolchains' calibration (TensorRT, "
        "OpenVINO, TFLite, ModelOpt), as --format says (default: none)",
    )
    p.add_argument(
        "--format",
        default="png",
        choices=["png", "npy"],
        help="png: an ImageFolder DIR/<class>/<index>.png of 0..255 pixels; npy: "
        "DIR/images.npy (N, C, H, W) float32 normalised as the model takes it and "
        "DIR/labels.npy (default png)",
    )
    _finish(p, commands.cmd_synthesize, full, "di-")


def _recover_parser(sub: Any, full: bool) -> None:
    p = sub.add_parser(
        "recover", help="distil the teacher into a pruned student on synthetic images"
    )
    p.add_argument("--arch", required=True, help=ARCH_HELP)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="pruned student checkpoint (from `prune`)")
    p.add_argument("--num-classes", type=COUNT, help="default: read from the checkpoint")
    p.add_argument("--synthetic", required=True, help="directory written by `synthesize`")
    p.add_argument(
        "--out", required=True, help="directory for checkpoints and student.pt (resumable)"
    )
    p.add_argument(
        "--epochs",
        type=COUNT,
        help=f"distillation epochs (default {options.config_default(full, 1, 'epochs')})",
    )
    p.add_argument("--val-data", help="labelled data to track top-1 (default: none)")
    options.add_classes(p)
    options.add_input(p, resize=True)
    _finish(p, commands.cmd_recover, full, "kd-")


def _compress_parser(sub: Any, full: bool) -> None:
    p = sub.add_parser(
        "compress",
        help="prune -> synthesize -> recover in one resumable run",
        description=_COMPRESS_DESCRIPTION + (_presets_text() if full else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_model(p, required=False, resize=True)
    p.add_argument(
        "--amount",
        type=FRACTION,
        help="fraction of the prunable weights to set to zero (default 0.75; none with "
        "--structure block)",
    )
    p.add_argument(
        "--preset",
        default="quick",
        choices=["tiny", "quick", "paper", "seed"],
        help="compute budget, see above (default quick)",
    )
    _num_images(p, "synthetic images (default: the preset's; --num-images under torchrun)")
    p.add_argument(
        "--iterations",
        type=COUNT,
        help="DeepInversion steps per batch (default: the preset's)",
    )
    p.add_argument("--epochs", type=COUNT, help="distillation epochs (default: the preset's)")
    p.add_argument(
        "--synthesis",
        default="deepinversion",
        choices=["deepinversion", "stream"],
        help="a fixed DeepInversion set made before recovery, or fresh generator batches "
        "streamed into it (an epoch is then 8 steps) (default deepinversion)",
    )
    _scope(
        p, "one magnitude threshold for all layers, or the same fraction in each (default global)"
    )
    p.add_argument("--exclude", nargs="*", help="layer-name globs to keep dense (default: none)")
    p.add_argument(
        "--eval-data",
        help="labelled ImageFolder directory or .tar.gz to measure top-1 of teacher, pruned "
        "and recovered (default: none; then only teacher-student agreement is reported)",
    )
    options.add_classes(p)
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="after recovery, an INT8 student calibrated on the synthetic images "
        "(student.int8.onnx), with its top-1 and measured latency in the report (default: none)",
    )
    p.add_argument(
        "--out",
        default="recoverprune-out",
        help="output directory; rerun the same command to resume (default recoverprune-out)",
    )
    options.add_structure(p)
    _finish(p, commands.cmd_compress, full, "di-", "kd-")


def _quantize_parser(sub: Any) -> None:
    p = sub.add_parser("quantize", help="INT8 ONNX file of a checkpoint, calibrated on images")
    options.add_model(p)
    p.add_argument("--synthetic", required=True, help="calibration images (from `synthesize`)")
    p.add_argument("--out", required=True, help="INT8 ONNX file to write, e.g. student.int8.onnx")
    p.add_argument(
        "--calibration-images", type=COUNT, default=256, help="images calibrated on (default 256)"
    )
    p.add_argument(
        "--method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="how activation ranges are calibrated (default minmax)",
    )
    p.add_argument(
        "--eval-data",
        help="labelled ImageFolder directory or .tar.gz: print the top-1 of the fp32 and the "
        "INT8 model on it (default: none)",
    )
    p.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer equalization (DFQ) before calibration",
    )
    p.add_argument(
        "--bias-correction",
        action="store_true",
        help="correct the biases for the weights' quantization error, on the calibration images",
    )
    p.add_argument(
        "--distill-steps",
        type=number(0, integer=True),
        default=0,
        metavar="N",
        help="quantization-aware distillation from the fp32 model on the calibration images "
        "for N steps (default 0: calibration only)",
    )
    p.set_defaults(func=commands.cmd_quantize)


def _finish(p: Any, func: Any, full: bool, *prefixes: str) -> None:
    """The config overrides of ``prefixes`` (when ``full``), runtime and ``--overwrite``."""
    budgets = {"di-": (0, "iterations"), "kd-": (1, "epochs")}  # set by their own options
    for prefix in prefixes if full else ():
        which, own = budgets[prefix]
        options.config_overrides(p, options.configs()[which], prefix, skip=(own,))
    options.add_runtime(p)
    options.add_flags(p, "--overwrite", "--allow-outlier-weights")
    p.set_defaults(func=func)


def _scope(p: Any, text: str) -> None:
    p.add_argument("--scope", default="global", choices=["global", "layerwise"], help=text)


def _num_images(p: Any, text: str, required: bool = False) -> None:
    p.add_argument("--n", "--num-images", dest="n", type=COUNT, required=required, help=text)
