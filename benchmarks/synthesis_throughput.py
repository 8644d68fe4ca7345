"""Throughput of DeepInversion synthesis per device and precision.

Times ``synthesize()`` at a fixed batch size and iteration count (one batch by default)
and reports images/s and image-iterations/s (images x Adam steps per second):

* CPU: float32 eager;
* CUDA (when available): eager fp32, bf16 autocast, + channels_last, + torch.compile,
  using the ``accel=Accel(...)`` switches of ``synthesize``.

Each variant first runs once untimed (warm-up: cuDNN autotuning, allocator, compilation);
its extra time over a timed run is reported as the compile/warm-up overhead. The timed
figure is the median of ``--repeats`` runs. The model is a zoo architecture with random
weights (BatchNorm statistics refreshed on noise; throughput does not depend on them) or
a checkpoint.

    python benchmarks/synthesis_throughput.py --arch resnet20 --batch-size 256 --iterations 20
    python benchmarks/synthesis_throughput.py --checkpoint ../shared/teachers/resnet20-12fca82f.th
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recoverprune import Accel, __version__, synthesize
from recoverprune.models import create_model, load_model

#: name -> (device type, Accel switches); CUDA variants add one fast path at a time.
VARIANTS: dict[str, tuple[str, Accel]] = {
    "cpu fp32 eager": ("cpu", Accel(amp="off", channels_last=False, compile=False)),
    "cuda fp32 eager": ("cuda", Accel(amp="off", channels_last=False, compile=False)),
    "cuda bf16 autocast": ("cuda", Accel(amp="bf16", channels_last=False, compile=False)),
    "cuda bf16 + channels_last": ("cuda", Accel(amp="bf16", channels_last=True, compile=False)),
    "cuda bf16 + channels_last + compile": (
        "cuda",
        Accel(amp="bf16", channels_last=True, compile=True),
    ),
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _model(args: argparse.Namespace) -> nn.Module:
    if args.checkpoint:
        return load_model(args.arch, args.checkpoint)
    torch.manual_seed(0)
    model = create_model(args.arch)
    with torch.no_grad():  # plausible BN statistics, so the run looks like a real one
        model.train()
        model(torch.randn(64, *model.pretrained_cfg["input_size"]))
    return model.eval()


def _timed(
    model: nn.Module, device: str, accel: Accel, args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ds = synthesize(
        model,
        args.n,
        batch_size=args.batch_size,
        iterations=args.iterations,
        device=device,
        accel=accel,
        seed=args.seed,
        progress=False,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stats = ds.meta["stats"][-1]
    return seconds, {k: stats[k] for k in ("bn_loss_first", "bn_loss_final", "accuracy")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch", default="resnet20", help="zoo architecture (random init unless --checkpoint)"
    )
    p.add_argument("--checkpoint", default=None, help="load --arch weights from this file")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="images per run (default: one batch)")
    p.add_argument("--iterations", type=int, default=20)
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
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.n = args.n or args.batch_size
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    names = args.variants or [k for k, (dev, _) in VARIANTS.items() if dev == "cpu" or cuda]
    skipped = [k for k in names if VARIANTS[k][0] == "cuda" and not cuda]
    names = [k for k in names if k not in skipped]
    config: dict[str, Any] = {
        "model": args.arch + (f" ({args.checkpoint})" if args.checkpoint else " (random init)"),
        "n": args.n,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "torch": str(torch.__version__),
        "recoverprune": __version__,
        "cpu": f"{_cpu_name()} ({os.cpu_count()} logical CPUs)",
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "tf32": {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        if cuda
        else None,
        "platform": platform.platform(),
    }
    print("configuration:")
    for key, value in config.items():
        print(f"  {key}: {value}")
    if skipped:
        print(f"  skipped (no CUDA device): {', '.join(skipped)}")

    model = _model(args)
    rows: list[dict[str, Any]] = []
    for name in names:
        device, accel = VARIANTS[name]
        warm, _ = _timed(model, device, accel, args)
        runs = [_timed(model, device, accel, args) for _ in range(args.repeats)]
        seconds = statistics.median(s for s, _ in runs)
        row = {
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
            "images_per_second": args.n / seconds,
            "image_iterations_per_second": args.n * args.iterations / seconds,
            **runs[-1][1],
        }
        rows.append(row)
        print(f"  done: {name} ({seconds:.2f} s)", flush=True)

    base = rows[0]["image_iterations_per_second"] if rows else 1.0
    header = (
        f"| {'variant':<37} | {'s/run':>7} | {'images/s':>9} | {'img-it/s':>9} | {'speed-up':>8} "
        f"| {'warm-up +s':>10} | {'bn final':>8} |"
    )
    print()
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['variant']:<37} | {r['seconds']:>7.2f} | {r['images_per_second']:>9.1f} "
            f"| {r['image_iterations_per_second']:>9.1f} "
            f"| {r['image_iterations_per_second'] / base:>7.2f}x "
            f"| {r['warmup_overhead_seconds']:>10.2f} | {r['bn_loss_final']:>8.2f} |"
        )
    print(
        "(s/run: median wall time of one synthesize() call, warm-up excluded; warm-up +s: extra "
        "time of the first call, compilation included; speed-up relative to the first row)"
    )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({"config": config, "results": rows}, indent=2, default=str) + "\n"
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
