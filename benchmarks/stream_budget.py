"""Fixed-set DeepInversion against the amortised generator and the stream, at equal steps.

One row (a teacher pruned to one sparsity), one column per transfer source, every column
recovered with the library's default recipe for the same number of distillation steps
(``--epochs`` x 8 steps of 128 images: the default's 60 epochs over 1,024 images):

- ``deepinversion``: today's default, a fixed set of ``--n`` DeepInversion images
  (``--iterations`` per batch of 256), made before recovery;
- ``generator``: a fixed set of ``--n`` images from the amortised generator
  (``synthesize_with_generator``), made before recovery;
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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from _common import DATA, ROOT, cell, config_key, machine, synthesis_seconds, update_block

sys.path.insert(0, str(Path(__file__).resolve().parent / "cifar10"))

from run import noise_set, real_set

from recoverprune import DistillConfig, InputSpec, evaluate, prune, recover, synthesize
from recoverprune.core.io import write_json_atomic
from recoverprune.data import load_split
from recoverprune.experimental.amortised import synthesize_with_generator
from recoverprune.experimental.generator import GeneratorConfig
from recoverprune.experimental.stream import StreamConfig, SyntheticStream
from recoverprune.models import default_teacher

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
    p.add_argument(
        "--render",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="print the table of finished results files (merged), computing nothing",
    )
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="with --render: add the fixed-set cells of this CIFAR-10 table results file",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="with --render: write it into docs/results.md's stream-budget block",
    )
    return p.parse_args(argv)


def _sources(args: argparse.Namespace, teacher: torch.nn.Module) -> dict[str, Any]:
    """Column -> a function making its transfer source (timed by the cell)."""
    di_dir = args.synthetic or args.out / f"deepinversion-{args.n}x{args.iterations}"
    stream_cfg, gen_cfg = StreamConfig(), GeneratorConfig()
    if args.tiny:
        gen_cfg = GeneratorConfig(warmup_batches=1, warmup_steps=2, inner_steps=1)
        stream_cfg = StreamConfig(
            batch_size=16, initial_batches=2, steps_per_epoch=2, generator=gen_cfg
        )
    return {
        "deepinversion": lambda: synthesize(
            teacher,
            args.n,
            iterations=args.iterations,
            out_dir=di_dir,
            seed=args.seed,
            progress=False,
        ),
        "generator": lambda: synthesize_with_generator(
            teacher,
            args.n,
            config=gen_cfg,
            batch_size=16 if args.tiny else 128,
            seed=args.seed,
            progress=False,
        ),
        "stream": lambda: SyntheticStream(teacher, stream_cfg, seed=args.seed),
        "noise": lambda: noise_set(args.n, InputSpec.of(teacher), args.seed),
        "real": lambda: real_set(args.n, load_split(args.data, "train"), args.seed),
    }


def _cell(args: argparse.Namespace, column: str, teacher: Any, test: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    source = _sources(args, teacher)[column]()
    made = time.perf_counter() - t0
    # equal steps: the stream takes steps_per_epoch per epoch; a fixed set ceil(n / batch)
    bs, spe = (16, 2) if args.tiny else (DistillConfig().batch_size, StreamConfig().steps_per_epoch)
    per_epoch = spe if column == "stream" else -(-args.n // bs)
    epochs = args.epochs if column == "stream" else max(1, round(args.epochs * spe / per_epoch))
    cfg = replace(DistillConfig(), epochs=epochs, batch_size=bs)
    load = os.getloadavg()[0]
    t1 = time.perf_counter()
    student = recover(
        teacher, prune(teacher, args.amount), source, config=cfg, seed=args.seed, progress=False
    )
    recovered = time.perf_counter() - t1
    top1 = evaluate(student, test, progress=False).top1
    synth = made
    if column == "deepinversion":
        synth = synthesis_seconds(source)  # its batches' own times (it may be resumed)
    elif column == "stream":
        synth = source.seconds  # made inside recovery: part of recovery_s
    steps = epochs * per_epoch
    return {
        "column": column,
        "top1": top1,
        "iterations": args.iterations if column == "deepinversion" else None,
        "epochs": epochs,
        "n": args.n,
        "steps": steps,
        "batch_size": bs,
        "synthesis_s": synth,
        "recovery_s": recovered,
        "total_s": recovered if column == "stream" else synth + recovered,
        "images_made": getattr(source, "made", None) or len(source),
        "load_average_at_start": load,
    }


def _teacher_cells(args: argparse.Namespace, teacher: Any, test: Any) -> dict[str, Any]:
    """Top-1 of the teacher and of the pruned student before recovery."""
    return {
        "teacher": evaluate(teacher, test, progress=False).top1,
        "pruned": evaluate(prune(teacher, args.amount), test, progress=False).top1,
        "amount": args.amount,
        "test_images": len(test),
    }


def table_cells(path: Path, amount: float) -> list[dict[str, Any]]:
    """The embedded ResNet-20's ``deepinversion``/``noise``/``real`` cells at ``amount`` of a
    CIFAR-10 table results file (``benchmarks/cifar10/run.py``), as rows of this table.

    They are used only when their recipe is this benchmark's (the default DistillConfig
    with 60 epochs of 8 steps: 480 steps of 128); anything else is refused.
    """
    results = json.loads(path.read_text())
    want = json.loads(json.dumps(asdict(replace(DistillConfig(), epochs=60))))
    row = next(r for r in results["table"] if r["arch"] == "resnet20" and r["amount"] == amount)
    out = []
    for key, rec in results["cells"].items():
        name = key.split(":")[0]
        column = name.split("/")[-1]
        if name != f"resnet20@{amount}/{column}" or column not in COLUMNS:
            continue
        stored = rec["config"]["distill"]  # a switch added since, absent here, is at its default
        same = set(stored) <= set(want) and all(stored.get(k, v) == v for k, v in want.items())
        if not same or rec["config"]["n"] != 1024:
            raise SystemExit(f"{path}: {key} has another recipe; rerun its column here")
        synth = row.get("synthesis_seconds") if column == "deepinversion" else 0.0
        out.append(
            {
                **rec,
                "column": column,
                "steps": 480,
                "batch_size": 128,
                "images_made": 1024,
                "iterations": rec["config"]["inversion"]["iterations"],
                "synthesis_s": synth,
                "recovery_s": rec["seconds"],
                "total_s": rec["seconds"] + (synth or 0.0),
                "from": path.name,
                "load_average_at_start": None,
            }
        )
    return out


def _merged_cells(paths: list[Path], table: Path | None) -> tuple[dict[str, Any], list[dict]]:
    """The reference (teacher, pruned) all files share and every cell, each DeepInversion
    cell with its iterations (from its file's settings when the cell predates the field)."""
    merged = [json.loads(p.read_text()) for p in paths]
    base = merged[0]["reference"]
    cells = []
    for path, results in zip(paths, merged, strict=True):
        if results["reference"]["key"] != base["key"]:
            raise SystemExit(f"{path} measured another row than {paths[0]}; render them apart")
        its = int(results.get("settings", {}).get("iterations", 200))
        for c in results["cells"].values():
            deep = c["column"] == "deepinversion"
            cells.append({**c, "iterations": c.get("iterations") or (its if deep else None)})
    if table is not None:
        cells += table_cells(table, base["amount"])
    cells.sort(key=lambda c: (c["steps"], COLUMNS.index(c["column"]), c["total_s"]))
    return base, cells


def _source(c: dict[str, Any]) -> str:
    """A cell's source as the tables name it: DeepInversion with its images x iterations."""
    name = c["column"]
    if name == "deepinversion":
        name += f" {c['images_made']:,}x{c['iterations']}"
    return name + (" (table)" if c.get("from") else "")


def render(paths: list[Path], table: Path | None = None) -> str:
    """The docs block of one or more results files (their cells merged, one table), with
    the fixed-set columns of the CIFAR-10 table file ``table`` when given."""
    base, cells = _merged_cells(paths, table)
    lines = [
        "| source | distillation steps | images made | synthesis s | recovery s | total s "
        "| top-1 | vs teacher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        synth = "-" if c["synthesis_s"] is None else f"{c['synthesis_s']:.0f}"
        lines.append(
            f"| {_source(c)} | {c['steps']:,} | {c['images_made']:,} | {synth} "
            f"| {c['recovery_s']:.0f} | {c['total_s']:.0f} | {c['top1']:.2f} "
            f"| {c['top1'] - base['teacher']:+.2f} |"
        )
    loads = sorted(c["load_average_at_start"] for c in cells if c["load_average_at_start"])
    rels = " ".join(os.path.relpath(p.resolve(), ROOT) for p in paths)
    if table is not None:
        rels += f" --table {os.path.relpath(table.resolve(), ROOT)}"
    c0 = next(c for c in cells if not c.get("from"))
    return "\n".join(lines) + (
        f"\n\nEmbedded ResNet-20 (teacher {base['teacher']:.2f} %), pruned to "
        f"{base['amount']:.0%} ({base['pruned']:.2f} % before recovery), recovered with the "
        f"default distillation recipe; top-1 on {base['test_images']:,} JPEG CIFAR-10 test "
        f"images. One distillation step is a batch of {c0['batch_size']}. `stream` makes its "
        "images inside recovery (its synthesis seconds are part of its recovery seconds). "
        "Machine: "
        f"{c0['machine']}, {c0['threads']} thread per cell, torch {c0['torch']}; 1-minute "
        f"load average at a cell's start {loads[0]:.1f} to {loads[-1]:.1f} (cells ran side by "
        "side: read seconds as upper bounds, top-1 is unaffected). Rows marked (table) are "
        "the results table's own cells of this row, whose recipe, steps and seed are this "
        "benchmark's (checked when rendering), measured in that run. Generated by "
        f"`python benchmarks/stream_budget.py --render {rels}`. These seconds are not a "
        "time table: minutes measured alone are in the time-to-accuracy table below.\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.render:
        md = render(args.render, args.table)
        print(md)
        if args.update_docs:
            update_block(ROOT / "docs" / "results.md", "stream-budget", md)
        return {"markdown": md}
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
    skip = ("render", "update_docs", "table")
    settings = {k: str(v) for k, v in vars(args).items() if k not in skip}
    ref_key = config_key({"amount": args.amount, "tiny": args.tiny})
    if results.get("reference", {}).get("key") != ref_key:
        results["reference"] = {"key": ref_key, **_teacher_cells(args, teacher, test)}
    for column in args.columns:
        key = f"{column}:{config_key({**settings, 'column': column, 'columns': None})}"
        cell(results, path, key, lambda column=column: _cell(args, column, teacher, test))
    results["settings"] = {**settings, "command": " ".join(sys.argv), **machine()}
    write_json_atomic(results, path)
    return results


if __name__ == "__main__":
    main()
