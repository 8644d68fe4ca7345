"""Option groups the commands share: model, input, runtime, output, structure, config overrides."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

__all__ = [
    "ARCH_HELP",
    "accel",
    "add_classes",
    "add_flags",
    "add_input",
    "add_model",
    "add_output",
    "add_runtime",
    "add_structure",
    "apply_overrides",
    "bars",
    "block_config",
    "calibration_config",
    "channel_budget",
    "channel_config",
    "config_default",
    "config_overrides",
    "configs",
    "number",
]


def number(
    lo: float = -math.inf, hi: float = math.inf, *, config: type | None = None, **rule: Any
) -> Callable[[str], Any]:
    """An argparse ``type=``: :func:`~recoverprune.core.validate.check_number` with ``lo``,
    ``hi`` and ``rule`` (also ``name``, and ``field``: the ``config`` field that must take it).

    Example:
        >>> number(1, lo_open=True)("1.5")
        1.5
        >>> number(1, lo_open=True)("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: the value must be > 1 and finite, got nan
    """
    field, name = rule.pop("field", None), rule.pop("name", "the value")

    def parse(text: str) -> Any:
        from recoverprune.core.validate import check_number

        try:
            value: Any = (int if rule.get("integer") else float)(text)
        except ValueError:
            value = text  # refused below, with the range
        try:
            if config is not None:  # first: the config's own message names its range
                config(**{field: value})
            check_number(value, name, lo, hi, **rule)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


#: the ``type=`` of counts (>= 1), speed-up ratios (> 1) and fractions (in [0, 1))
COUNT, RATIO = number(1, integer=True), number(1, lo_open=True)
FRACTION = number(0, 1, hi_open=True)


def threads_count(text: str) -> int:
    """``--threads``: 1 to 4x the CPUs this process may use (more thrash, then crash).

    Example:
        >>> threads_count("1")
        1
    """
    from recoverprune.core.threads import available_cpus

    n = available_cpus()
    what = f"the thread count (at most 4x the {n} CPUs available)"
    return int(number(1, 4 * n, integer=True, name=what)(text))


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast precision on CUDA (default auto: bf16 where supported)",
    )
    add_flags(p, "--no-compile", "--no-channels-last")
    seed = number(0, 2**63 - 1, integer=True)
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    add_output(p)


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=threads_count,
        metavar="N",
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the CPUs this "
        "process may use less those other jobs keep busy; printed at the start)",
    )
    add_flags(p, "--no-progress", "--quiet")


#: the on/off options and their help
FLAGS = {
    "--no-compile": "disable torch.compile on CUDA",
    "--no-channels-last": "disable channels_last on CUDA",
    "--no-progress": "no progress bars or lines (the start-up summary and results are still shown)",
    "--quiet": "print only errors and the final 'wrote' line",
    "--overwrite": "recompute what --out holds from other settings instead of refusing it",
    "--allow-outlier-weights": "use a teacher with weights hundreds of times its layer's "
    "typical size (refused by default: the mark of corrupted bytes)",
}


def add_flags(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        p.add_argument(name, action="store_true", help=FLAGS[name])


def add_model(p: argparse.ArgumentParser, required: bool = True, resize: bool = False) -> None:
    default = "" if required else " (default: none, the bundled ResNet-20 teacher)"
    p.add_argument("--arch", required=required, help=f"{ARCH_HELP}{default}")
    p.add_argument(
        "--checkpoint",
        required=required,
        help=f"checkpoint file (state_dict or dict holding one){default}",
    )
    p.add_argument("--num-classes", type=COUNT, help="default: read from the checkpoint")
    add_input(p, resize)


ARCH_HELP = (
    "model spec: a zoo name (see `recoverprune models`), torchvision:NAME, timm:NAME or "
    "module:pkg.mod:factory (weights come from the checkpoint, never downloaded)"
)


def add_input(p: argparse.ArgumentParser, resize: bool = False) -> None:
    """The model's input description; defaults come from the checkpoint or the model."""
    p.add_argument("--image-size", type=COUNT, help="input size (default: from the model)")
    p.add_argument("--channels", type=COUNT, help="input channels (default: first conv)")
    p.add_argument(
        "--mean",
        type=number(),
        nargs="+",
        help="normalisation mean, one value or one per channel (default: from the checkpoint "
        "or the model's hint; ImageNet values for RGB)",
    )
    p.add_argument(
        "--std",
        type=number(0, lo_open=True),
        nargs="+",
        help="normalisation std, one value or one per channel (default: as --mean)",
    )
    if resize:
        p.add_argument(
            "--resize",
            type=COUNT,
            help="resize labelled images to this size (default: the input size)",
        )


def accel(args: argparse.Namespace) -> Any:
    from recoverprune import Accel

    return Accel(
        amp=args.amp,
        compile=False if args.no_compile else None,
        channels_last=False if args.no_channels_last else None,
    )


def config_overrides(
    p: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str]
) -> None:
    """One ``--prefix-field`` option per scalar field (int, float, bool, str) of a config."""
    for f in fields(cls):
        kind = type(f.default)
        if f.name in skip or kind not in (int, float, bool, str):
            continue
        opt = f"--{prefix}{f.name.replace('_', '-')}"
        parse: Any = number(config=cls, field=f.name, integer=kind is int)
        if kind in (bool, str):
            parse = (lambda s: s.lower() in ("1", "true", "yes", "on")) if kind is bool else kind
        metavar = "BOOL" if kind is bool else None
        p.add_argument(opt, type=parse, metavar=metavar, help=f"(default {f.default})")


def apply_overrides(cfg: Any, args: argparse.Namespace, prefix: str) -> Any:
    dest = prefix.replace("-", "_")
    changes = {
        f.name: getattr(args, dest + f.name)
        for f in fields(cfg)
        if getattr(args, dest + f.name, None) is not None
    }
    return replace(cfg, **changes)


def add_structure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--structure",
        default="unstructured",
        choices=["unstructured", "channel", "block"],
        help="unstructured masks, or remove whole channels (a smaller, faster dense model; "
        'needs pip install "recoverprune[channel]"), or drop whole residual blocks (a '
        "shorter, faster model; no --amount) (default unstructured)",
    )
    p.add_argument(
        "--speedup",
        type=RATIO,
        help="channel: prune to this many times fewer MACs instead of --amount; block: then "
        "also prune the remaining channels to this many times fewer MACs (default: none)",
    )
    p.add_argument(
        "--latency-speedup",
        type=RATIO,
        metavar="X",
        help="channel: prune until the model runs X times faster on this machine, widths "
        "chosen from a latency table measured here, the result measured (default: none)",
    )
    p.add_argument(
        "--importance",
        default="magnitude",
        choices=["magnitude", "taylor"],
        help="channel: how channels are ranked; taylor scores them on DeepInversion images "
        "(default magnitude)",
    )
    p.add_argument(
        "--recalibrate-images",
        type=number(0, integer=True),
        metavar="N",
        help="channel, block: re-estimate the BatchNorm statistics pruning shifted on N "
        "DeepInversion images of the teacher (block: also score the blocks on them); 0 keeps "
        "the teacher's statistics (default: 64, fewer for heavy models)",
    )
    p.add_argument(
        "--drop-blocks",
        type=COUNT,
        metavar="N",
        help="block: drop the N residual blocks whose removal changes the teacher's outputs "
        "least on DeepInversion images (default: 1 unless --block-speedup)",
    )
    p.add_argument(
        "--block-speedup",
        type=RATIO,
        metavar="X",
        help="block: drop blocks, least damaging first, until the model has X times fewer "
        "MACs (default: none)",
    )


def channel_budget(args: argparse.Namespace) -> bool:
    """Whether ``--speedup`` or ``--latency-speedup`` (not ``--amount``) budgets channels."""
    return args.speedup is not None or args.latency_speedup is not None


def channel_config(args: argparse.Namespace) -> Any:
    """The :class:`~recoverprune.ChannelConfig` of ``--structure channel`` or ``block --speedup
    X`` (in an experimental ``LatencyConfig`` by ``--latency-speedup``), else ``None``."""
    from recoverprune import ChannelConfig
    from recoverprune.experimental.latency import LatencyConfig

    if args.structure != "channel" and (args.structure != "block" or not channel_budget(args)):
        if args.latency_speedup is not None:
            raise ValueError("--latency-speedup needs --structure channel (or block)")
        return None
    cfg = ChannelConfig(
        importance=args.importance,
        amount=None if channel_budget(args) else args.amount,
        speedup=args.speedup,
        recalibrate=args.recalibrate_images != 0,
    )
    if args.latency_speedup is None:
        return cfg
    if args.speedup is not None:
        raise ValueError("give one of --speedup and --latency-speedup")
    return LatencyConfig(args.latency_speedup, channel=cfg)


def calibration_config(args: argparse.Namespace) -> Any:
    """The :class:`~recoverprune.Calibration` of ``--recalibrate-images N`` (N > 0), else ``None``."""
    from recoverprune import Calibration

    n = args.recalibrate_images
    return Calibration(images=n) if n else None


def block_config(args: argparse.Namespace) -> Any:
    """The :class:`~recoverprune.BlockConfig` of ``--structure block``, else ``None``; refuses
    the block options without it, and ``--amount`` with it, by name."""
    from recoverprune import BlockConfig

    drop, speedup = args.drop_blocks, args.block_speedup
    if args.structure != "block":
        if drop is not None or speedup is not None:
            raise ValueError("--drop-blocks and --block-speedup need --structure block")
        return None
    if args.amount is not None:
        raise ValueError(
            "--structure block drops whole blocks and takes no --amount: give --drop-blocks N "
            "or --block-speedup X"
        )
    # --recalibrate-images 0: the automatic budget scores the blocks, statistics are kept
    return BlockConfig(drop=drop, speedup=speedup, recalibrate=args.recalibrate_images != 0)


def configs() -> tuple[type, type]:
    from recoverprune import DistillConfig, InversionConfig

    return InversionConfig, DistillConfig


def config_default(known: bool, which: int, name: str) -> str:
    """A config field's default for a help text (only needed when that help is shown)."""
    return str(getattr(configs()[which], name)) if known else "from the config"


def bars(args: argparse.Namespace) -> bool:
    return not (args.no_progress or args.quiet)


def add_classes(p: argparse.ArgumentParser) -> None:
    """``--classes`` / ``--subset``: how labelled folders map onto the model's outputs."""
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="the model's class names in output order; class folders are then matched by "
        "name (default: the names the checkpoint records, else folders in sorted order)",
    )
    p.add_argument(
        "--subset",
        action="store_true",
        help="the labelled data holds only some of the classes: folders are labelled by "
        "name (needs --classes or names recorded in the checkpoint)",
    )
