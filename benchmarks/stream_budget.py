"""Fixed-set DeepInversion against the amortised generator and the stream, at equal steps.

One row (a teacher pruned to one sparsity), one column per transfer source, every column
recovered with the library's default recipe for the same number of distillation steps
(``--epochs`` x 8 steps of 128 images: the default's 60 epochs over 1,024 images):

- ``deepinversion``: today's default, a fixed set of ``--n`` DeepInversion images
  (``--iterations`` per batch of 256), made before recovery;
- ``generator``: a fixed set of ``--n`` images from the amortised generator
  (``synthesize(method="generator")``), made before recovery;
- ``stream``: a ``SyntheticStream`` (default ``StreamConfig``), fresh generator batches
  between epochs;
- ``noise`` / ``real``: Gaussian noise / real training images, ``--n`` of them.

Each cell records JPEG CIFAR-10 test top-1, synthesis and recovery seconds, threads,
load average, machine and torch version in ``results.json`` (cached by configuration,
so a rerun computes only new cells):

    OMP_NUM_THREADS=1 python benchmarks/stream_budget.py --columns generator stream
    python benchmarks/stream_budget.py --tiny          # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "cifar10"))

from run import _key, _machine, noise_set, real_set

from recoverprune import (
    DistillConfig,
    InputSpec,
    StreamConfig,
    SyntheticStream,
    evaluate,
    prune,
    recover,
    synthesize,
)
from recoverprune.core.io import write_json_atomic
from recoverprune.data import load_split
from recoverprune.models import default_teacher

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
COLUMNS = ("deepinversion", "generator", "stream", "noise", "real")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=COLUMNS)
    p.add_argument("--n", type=int, default=1024, help="images of the fixed sets")
    p.add_argument("--iterations", type=int, default=200, help="DeepInversion steps per batch")
    p.add_argument("--epochs", type=int, default=60, help="epochs of 8 steps of 128 images")
    p.add_argument("--synthetic", type=Path, default=None, help="DeepInversion set dir (resumed)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "stream-budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true")
    return p.parse_args(argv)


def _sources(args: argparse.Namespace, teacher: torch.nn.Module) -> dict[str, Any]:
    """Column -> a function making its transfer source (timed by the cell)."""
    di_dir = args.synthetic or args.out / f"deepinversion-{args.n}x{args.iterations}"
    stream_cfg = StreamConfig()
    if args.tiny:
        stream_cfg = replace(stream_cfg, batch_size=16, initial_batches=2, steps_per_epoch=2)
    return {
        "deepinversion": lambda: synthesize(
            teacher,
            args.n,
            iterations=args.iterations,
            out_dir=di_dir,
            seed=args.seed,
            progress=False,
        ),
        "generator": lambda: synthesize(
            teacher, args.n, method="generator", batch_size=128, seed=args.seed, progress=False
        ),
        "stream": lambda: SyntheticStream(teacher, stream_cfg, seed=args.seed),
        "noise": lambda: noise_set(args.n, InputSpec.of(teacher), args.seed),
        "real": lambda: real_set(args.n, load_split(args.data, "train"), args.seed),
    }


def _cell(args: argparse.Namespace, column: str, teacher: Any, test: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    source = _sources(args, teacher)[column]()
    made = time.perf_counter() - t0
    # equal steps: 8 per epoch for the stream; a fixed set of n takes ceil(n / 128) per epoch
    epochs = args.epochs if column == "stream" else max(1, round(args.epochs * 8 * 128 / args.n))
    cfg = replace(DistillConfig(), epochs=epochs)
    if args.tiny:
        cfg = replace(cfg, batch_size=16)
    load = os.getloadavg()[0]
    t1 = time.perf_counter()
    student = recover(
        teacher, prune(teacher, args.amount), source, config=cfg, seed=args.seed, progress=False
    )
    recovered = time.perf_counter() - t1
    top1 = evaluate(student, test, progress=False).top1
    stats = getattr(source, "meta", {}).get("stats") or []
    synth = sum(s.get("seconds", 0.0) for s in stats) if column == "deepinversion" else made
    return {
        "column": column,
        "top1": top1,
        "epochs": epochs,
        "synthesis_s": synth if column != "stream" else None,
        "recovery_s": recovered,  # the stream's synthesis happens inside it
        "total_s": made + recovered if column != "deepinversion" else synth + recovered,
        "images_made": getattr(source, "made", None) or len(source),
        "load_average_at_start": load,
        **_machine(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.tiny:
        args.n, args.iterations, args.epochs = 32, 2, 1
    if not args.data.exists():
        raise SystemExit(f"the JPEG CIFAR-10 archive is not at {args.data}; pass --data")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    teacher = default_teacher().eval()
    test = load_split(args.data, "test")
    if args.tiny:
        test = type(test)(test.images[:200], test.labels[:200], test.classes, test.mean, test.std)
    settings = {k: str(v) for k, v in vars(args).items()}
    for column in args.columns:
        key = f"{column}:{_key({**settings, 'column': column, 'columns': None})}"
        if key not in results["cells"]:
            results["cells"][key] = _cell(args, column, teacher, test)
            write_json_atomic(results, path)
        print(json.dumps(results["cells"][key]), flush=True)
    results["settings"] = {**settings, "command": " ".join(sys.argv), **_machine()}
    write_json_atomic(results, path)
    return results


if __name__ == "__main__":
    main()
