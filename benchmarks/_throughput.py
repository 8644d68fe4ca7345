"""What the two throughput benchmarks share: variants, FLOPs, peaks, the measuring loop.

Not a benchmark itself; ``synthesis_throughput.py`` and ``recovery_throughput.py`` import it
(run them from the repository root, ``python benchmarks/<name>.py``).

FLOPs are *counted*, never assumed: :func:`counted_flops` runs the real job under
``torch.utils.flop_counter.FlopCounterMode`` on the CPU at two sizes and takes the
difference, so set-up work (probes, evaluation passes) cancels and what is left is the
work of one more unit (one image-iteration of synthesis, one image-epoch of recovery).
Only matrix products and convolutions are counted, the usual convention for a model-FLOP
utilisation figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import FP32, machine
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recoverprune import Accel
from recoverprune.core.io import write_json_atomic
from recoverprune.core.runtime import cpu_has_native_bf16
from recoverprune.models import create_model, load_model

#: name -> (device type, Accel switches); CUDA variants add one fast path at a time.
VARIANTS: dict[str, tuple[str, Accel]] = {
    "cpu fp32 eager": ("cpu", FP32),
    "cpu bf16 + channels_last": ("cpu", Accel(amp="bf16", channels_last=True, compile=False)),
    "cpu default (automatic)": ("cpu", Accel()),
    "cuda fp32 eager": ("cuda", FP32),
    "cuda bf16 autocast": ("cuda", Accel(amp="bf16", channels_last=False, compile=False)),
    "cuda bf16 + channels_last": ("cuda", Accel(amp="bf16", channels_last=True, compile=False)),
    "cuda bf16 + channels_last + compile": (
        "cuda",
        Accel(amp="bf16", channels_last=True, compile=True),
    ),
    "cuda default (automatic)": ("cuda", Accel()),
}

#: dense bf16 tensor-core peak from the vendor datasheets, TFLOP/s (a ceiling, not a promise)
DATASHEET_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
]


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a benchmark described by ``doc``, with the arguments both take."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch", default="resnet20", help="zoo architecture (random init unless --checkpoint)"
    )
    p.add_argument("--checkpoint", default=None, help="load --arch weights from this file")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per variant (median)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=sorted(VARIANTS),
        metavar="NAME",
        help=f"subset of: {', '.join(VARIANTS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="bf16 peak to report utilisation against (default: the GPU's datasheet figure)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads``."""
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def model_description(args: argparse.Namespace) -> str:
    """The model as the configuration block names it."""
    return args.arch + (f" ({args.checkpoint})" if args.checkpoint else " (random init)")


def chosen_variants(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(variants to run, CUDA variants skipped because there is no CUDA device).

    By default the CPU bf16 rows run only on a CPU with native bf16 (elsewhere bf16 is
    emulated and the automatic choice is fp32 itself); ``--variants`` names them anyway.
    """
    cuda = torch.cuda.is_available()
    cpu_rows = ["cpu fp32 eager"]
    if cpu_has_native_bf16():
        cpu_rows += ["cpu bf16 + channels_last", "cpu default (automatic)"]
    names = args.variants or [
        k for k, (dev, _) in VARIANTS.items() if k in cpu_rows or (cuda and dev == "cuda")
    ]
    skipped = [k for k in names if VARIANTS[k][0] == "cuda" and not cuda]
    return [k for k in names if k not in skipped], skipped


def tf32() -> dict[str, bool] | None:
    """Whether CUDA float32 work may run in TF32 (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return {
        "cudnn": torch.backends.cudnn.allow_tf32,
        "matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def model_from(args: argparse.Namespace) -> nn.Module:
    """The zoo model (random init, BN statistics refreshed on noise) or a checkpoint."""
    if args.checkpoint:
        return load_model(args.arch, args.checkpoint)
    torch.manual_seed(args.seed)
    model = create_model(args.arch)
    with torch.no_grad():  # plausible BN statistics, so the run looks like a real one
        model.train()
        model(torch.randn(64, *model.pretrained_cfg["input_size"]))
    return model.eval()


def counted_flops(run: Callable[[int], object], small: int, large: int) -> float:
    """FLOPs of ``run(large) - run(small)`` per unit, counted on the CPU."""
    counts = []
    for size in (small, large):
        with FlopCounterMode(display=False) as counter:
            run(size)
        counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / (large - small)


def datasheet_bf16_tflops() -> float | None:
    """The datasheet dense bf16 peak of the current CUDA device, if known."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if all(part in name for part in key.split()):
            return tflops
    return None


def measured_bf16_matmul_tflops(size: int = 8192, repeats: int = 10) -> float | None:
    """The bf16 matrix-product rate this GPU reaches on random data (a practical ceiling)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e12


def synchronize(device: str) -> None:
    """Wait for queued GPU work so wall-clock times are honest."""
    if device == "cuda":
        torch.cuda.synchronize()


def measure_variants(
    names: list[str],
    timed: Callable[[str, Accel], tuple[float, dict[str, float]]],
    repeats: int,
    units_per_run: dict[str, float],
) -> list[dict[str, Any]]:
    """Time every variant: one untimed warm-up call, then the median of ``repeats`` calls.

    ``timed(device, accel)`` runs the job once and returns (seconds, quality figures of
    that run); ``units_per_run`` maps a rate name (e.g. ``"images_per_second"``) to the
    units one run processes, turned into a rate per row.
    """
    rows: list[dict[str, Any]] = []
    for name in names:
        device, accel = VARIANTS[name]
        warm, _ = timed(device, accel)
        runs = [timed(device, accel) for _ in range(repeats)]
        seconds = statistics.median(s for s, _ in runs)
        rows.append(
            {
                "variant": name,
                "device": device,
                "accel": {
                    "amp": accel.amp,
                    "channels_last": accel.channels_last,
                    "compile": accel.compile,
                },
                "seconds": seconds,
                "runs_seconds": [s for s, _ in runs],
                "warmup_seconds": warm,
                "warmup_overhead_seconds": max(warm - seconds, 0.0),
                **{rate: units / seconds for rate, units in units_per_run.items()},
                **runs[-1][1],
            }
        )
        print(f"  done: {name} ({seconds:.2f} s)", flush=True)
    return rows


def add_utilisation(
    rows: list[dict[str, Any]], flops_per_unit: float, units_key: str, config: dict[str, Any]
) -> None:
    """Add speed-up (against the first row), TFLOP/s and fractions of the bf16 peaks.

    ``units_key`` names the units processed per second in each row; ``config`` holds the
    peaks from :func:`peaks`. Fractions are given for CUDA rows only.
    """
    base = rows[0][units_key] if rows else 1.0
    for r in rows:
        r["speedup"] = r[units_key] / base
        r["tflops"] = r[units_key] * flops_per_unit / 1e12
        for key in ("datasheet_bf16_tflops", "measured_bf16_matmul_tflops"):
            peak = config[key]
            r[f"fraction_of_{key}"] = r["tflops"] / peak if peak and r["device"] == "cuda" else None


#: the columns both tables share after their own throughput column
UTILISATION_COLUMNS: list[tuple[str, str, str]] = [
    ("speed-up", "speedup", ".2f"),
    ("TFLOP/s", "tflops", ".3f"),
    ("of datasheet", "fraction_of_datasheet_bf16_tflops", ".1%"),
    ("of matmul", "fraction_of_measured_bf16_matmul_tflops", ".1%"),
    ("warm-up +s", "warmup_overhead_seconds", ".2f"),
]

#: what those columns mean
UTILISATION_NOTE = (
    "speed-up relative to the first row; TFLOP/s from counted FLOPs; 'of datasheet'/'of "
    "matmul': fraction of the GPU's bf16 datasheet peak / of the bf16 matrix-product rate "
    "measured here; warm-up +s: extra time of the first, untimed call (compilation included)"
)


def peaks(args: argparse.Namespace) -> dict[str, float | None]:
    """The bf16 peaks utilisation is reported against (None where unknown)."""
    return {
        "datasheet_bf16_tflops": args.peak_tflops or datasheet_bf16_tflops(),
        "measured_bf16_matmul_tflops": measured_bf16_matmul_tflops(),
    }


def print_header(config: dict[str, Any], skipped: list[str]) -> None:
    """Print the configuration block every run starts with."""
    print("configuration:")
    for key, value in config.items():
        print(f"  {key}: {value}")
    if skipped:
        print(f"  skipped (no CUDA device): {', '.join(skipped)}")


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], note: str) -> None:
    """Markdown table of ``rows``; ``columns`` are (title, key, format spec)."""
    widths = [max(len(title), 9) for title, _, _ in columns]
    widths[0] = max([widths[0], *(len(str(r[columns[0][1]])) for r in rows)])
    print()
    print(
        "| " + " | ".join(t.ljust(w) for (t, _, _), w in zip(columns, widths, strict=True)) + " |"
    )
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = []
        for (_, key, spec), w in zip(columns, widths, strict=True):
            value = r.get(key)
            text = "n/a" if value is None else format(value, spec)
            cells.append(text.ljust(w) if spec == "" else text.rjust(w))
        print("| " + " | ".join(cells) + " |")
    print(note)


def run(
    args: argparse.Namespace,
    config: dict[str, Any],
    timed: Callable[[str, Accel], tuple[float, dict[str, float]]],
    units_per_run: dict[str, float],
    flops_per_unit: float,
    rate: tuple[str, str, str],
    quality: list[tuple[str, str, str]],
    note: str,
) -> int:
    """What both benchmarks do once their job is set up: time every chosen variant, print
    the configuration and the table, and write both to ``--json``.

    ``config`` describes the job (the machine and peaks are added); ``timed``,
    ``units_per_run``: as :func:`measure_variants`; ``rate``: the (title, key, format)
    column of units per second the FLOPs are counted against; ``quality``: the columns of
    the quality figures ``timed`` returns; ``note``: what the columns mean.
    """
    names, skipped = chosen_variants(args)
    config = {**config, "repeats": args.repeats, **machine(), "tf32": tf32(), **peaks(args)}
    print_header(config, skipped)
    rows = measure_variants(names, timed, args.repeats, units_per_run)
    add_utilisation(rows, flops_per_unit, rate[1], config)
    columns = [("variant", "variant", ""), ("s/run", "seconds", ".2f"), rate]
    print_table(rows, [*columns, *UTILISATION_COLUMNS, *quality], f"({note}; {UTILISATION_NOTE})")
    if args.json:
        path = write_json_atomic({"config": config, "results": rows}, args.json)
        print(f"wrote {path}")
    return 0
