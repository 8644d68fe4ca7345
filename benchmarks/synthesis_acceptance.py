"""Acceptance run of DeepInversion on the real ResNet-20 CIFAR-10 teacher.

Synthesises ``n`` images (default 256, one batch of 256, 200 iterations, CPU, seed 0) with
the library defaults and checks the acceptance criteria of the synthesis issue:

* the teacher classifies at least 95 % of the images as their target class, and
* the BatchNorm-statistics loss of the returned images is at most 0.1 x its value on the
  initial noise (``bn_loss_final / bn_loss_first <= 0.1``).

    python benchmarks/synthesis_acceptance.py                     # the full acceptance run
    python benchmarks/synthesis_acceptance.py --n 32 --iterations 10 --batch-size 32  # smoke
    python benchmarks/synthesis_acceptance.py --json runs/acceptance.json

Exit status: 0 on PASS, 1 on FAIL, 2 when the teacher checkpoint is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from _common import machine, shared_teacher

from recoverprune import InversionConfig, synthesize
from recoverprune.models import load_model

DEFAULT_TEACHER = shared_teacher("resnet20")
MIN_ACCURACY = 0.95
MAX_BN_RATIO = 0.1


def _weighted(stats: list[dict[str, float]], sizes: list[int], key: str) -> float:
    return sum(s[key] * n for s, n in zip(stats, sizes, strict=True)) / sum(sizes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--teacher", default=str(DEFAULT_TEACHER), help="teacher checkpoint (%(default)s)"
    )
    p.add_argument("--arch", default="resnet20", help="zoo architecture of --teacher")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--progress", action="store_true", help="show the progress bar")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)

    path = Path(args.teacher)
    if not path.is_file():
        print(
            f"teacher checkpoint not found: {path}\n"
            "This benchmark needs the shared ResNet-20 CIFAR-10 teacher (../shared/teachers/ next "
            "to the repository); pass another checkpoint with --teacher PATH [--arch NAME].",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    teacher = load_model(args.arch, path)
    cfg = replace(InversionConfig(), iterations=args.iterations)
    config: dict[str, Any] = {
        "inversion_config": asdict(cfg),
        "teacher": str(path),
        "arch": args.arch,
        "n": args.n,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "device": args.device,
        "seed": args.seed,
        **machine(),
    }
    if torch.device(args.device).type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print("configuration:")
    for key, value in config.items():
        print(f"  {key}: {value}")

    t0 = time.perf_counter()
    ds = synthesize(
        teacher,
        args.n,
        config=cfg,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        progress=args.progress,
    )
    wall = time.perf_counter() - t0

    stats, sizes = ds.meta["stats"], ds.meta["batch_sizes"]
    accuracy = _weighted(stats, sizes, "accuracy")
    bn_first = _weighted(stats, sizes, "bn_loss_first")
    bn_final = _weighted(stats, sizes, "bn_loss_final")
    ratio = bn_final / bn_first
    with torch.no_grad():  # re-measured independently of the synthesis loop, on the CPU
        predicted = torch.cat([teacher(x) for x in ds.images.split(256)]).argmax(1)
    accuracy_check = float((predicted == ds.labels).float().mean())
    passed = accuracy >= MIN_ACCURACY and ratio <= MAX_BN_RATIO
    results: dict[str, Any] = {
        "config": config,
        "batch_sizes": sizes,
        "wall_seconds": wall,
        "images_per_second": args.n / wall,
        "image_iterations_per_second": args.n * args.iterations / wall,
        "teacher_accuracy_on_targets": accuracy,
        "teacher_accuracy_on_targets_remeasured": accuracy_check,
        "bn_loss_first": bn_first,
        "bn_loss_final": bn_final,
        "bn_loss_ratio": ratio,
        "criteria": {"accuracy_min": MIN_ACCURACY, "bn_loss_ratio_max": MAX_BN_RATIO},
        "pass": passed,
        "per_batch": stats,
    }

    print("results:")
    print(f"  wall time: {wall:.1f} s")
    print(f"  images/s: {args.n / wall:.2f}")
    print(f"  image-iterations/s: {args.n * args.iterations / wall:.1f}")
    print(f"  teacher accuracy on targets: {accuracy:.4f} (re-measured: {accuracy_check:.4f})")
    print(f"  BN loss first: {bn_first:.3f}")
    print(f"  BN loss final: {bn_final:.3f}")
    print(f"  BN loss ratio final/first: {ratio:.4f}")
    acc_ok = "ok" if accuracy >= MIN_ACCURACY else "FAIL"
    ratio_ok = "ok" if ratio <= MAX_BN_RATIO else "FAIL"
    print(
        f"criteria: accuracy >= {MIN_ACCURACY}: {acc_ok}; BN loss ratio <= {MAX_BN_RATIO}: {ratio_ok}"
    )
    print("PASS" if passed else "FAIL")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
