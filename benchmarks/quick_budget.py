"""Time to accuracy: where the quick preset's minutes go, synthesis against distillation.

Two measurements, kept apart because they need different conditions:

* ``--time`` (run it **alone**: nothing else on the machine) measures what the budget's
  units cost here, per architecture and precision: one DeepInversion image-iteration (at
  synthesis batch 256), one distillation step (batch 128: teacher forward, student forward
  and backward) and the fixed cost of a recovery (reconstruction, set-up). Each is the
  slope or intercept of two runs of different length, so start-up does not leak into the
  rate. It writes a timing file with the machine, threads, CPU features and load average.
* The top-1 cells come from ``benchmarks/cifar10/run.py`` results files (any load, one
  thread each: top-1 does not depend on it). ``--render`` converts every cell's budget,
  counted in image-iterations (its images and the quick preset's check set) and steps, to
  minutes with the timing file, and prints the splits and the time-to-accuracy table.

    python benchmarks/quick_budget.py --time --units resnet20/auto resnet32/auto --out t.json
    python benchmarks/quick_budget.py --render RUN.json ... --timing t.json [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import FP32, ROOT, machine, update_block

sys.path.insert(0, str(Path(__file__).resolve().parent / "cifar10"))

from run import noise_set

from recoverprune import PRESETS, DistillConfig, InputSpec, prune, recover, synthesize
from recoverprune.core.io import write_json_atomic
from recoverprune.core.runtime import cpu_has_native_bf16
from recoverprune.models import create_model

#: the precisions a cell may run in: the library's automatic choice, or plain float32
PRECISIONS = {"auto": None, "fp32": FP32}
#: the budgets of the time-to-accuracy table, in minutes of synthesis + recovery
BUDGETS_MIN = (5, 10, 20)
SOURCES = ("deepinversion", "noise", "real")
DECIDING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--time", action="store_true", help="measure the unit costs (run alone)")
    p.add_argument(
        "--units",
        nargs="+",
        default=["resnet20/auto", "resnet20/fp32"],
        metavar="ARCH/PRECISION",
        help=f"with --time: what to time (precision: {' or '.join(PRECISIONS)})",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="with --time")
    p.add_argument("--out", type=Path, default=None, help="with --time: the timing file")
    p.add_argument("--tiny", action="store_true", help="with --time: seconds (tests)")
    p.add_argument("--render", nargs="+", type=Path, metavar="RESULTS_JSON")
    p.add_argument("--timing", type=Path, default=None, help="with --render: the timing file")
    p.add_argument("--update-docs", action="store_true", help="with --render: docs/results.md")
    return p.parse_args(argv)


# -- unit costs (alone) ---------------------------------------------------------------------


def cpu_flags() -> list[str]:
    """Which of the extensions that decide CPU precision (AVX2, AVX-512, its bf16 and VNNI,
    AMX) Linux reports for this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return sorted(set(line.split()[2:]) & set(DECIDING_FLAGS))


def _line(lengths: tuple[int, int], run: Any) -> tuple[float, float]:
    """Slope (seconds per unit) and intercept (fixed seconds) of ``run(length)``'s wall time,
    after one untimed run (kernel selection and allocation would otherwise land in the
    first timed run and bend the line)."""
    run(lengths[0])
    times = []
    for length in lengths:
        t0 = time.perf_counter()
        run(length)
        times.append(time.perf_counter() - t0)
    slope = (times[1] - times[0]) / (lengths[1] - lengths[0])
    return slope, max(times[0] - slope * lengths[0], 0.0)


def unit_costs(arch: str, precision: str, tiny: bool = False) -> dict[str, float]:
    """Seconds per image-iteration and per step, and a recovery's fixed seconds, for ``arch``
    (random weights: the cost does not depend on them) in ``precision``."""
    model = create_model(arch).eval()
    accel, batch = PRECISIONS[precision], 16 if tiny else 256
    iters = (1, 3) if tiny else (5, 25)
    per_it, _ = _line(
        iters,
        lambda k: synthesize(
            model, batch, iterations=k, batch_size=batch, accel=accel, progress=False
        ),
    )
    data = noise_set(64 if tiny else 1024, InputSpec.of(model), seed=0)  # cost only: any images
    epochs = (1, 2) if tiny else (2, 8)
    bs = 16 if tiny else DistillConfig().batch_size
    steps_per_epoch = -(-len(data) // bs)
    per_epoch, fixed = _line(
        epochs,
        lambda e: recover(
            model,
            prune(model, 0.75),
            data,
            config=DistillConfig(epochs=e, batch_size=bs),
            accel=accel,
            progress=False,
        ),
    )
    return {
        "image_iteration_s": per_it / batch,
        "step_s": per_epoch / steps_per_epoch,
        "recovery_fixed_s": fixed,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The timing file: unit costs of every ``--units`` (``ARCH/PRECISION``), alone."""
    bad = [u for u in args.units if u.partition("/")[2] not in PRECISIONS]
    if bad:
        raise SystemExit(f"--units takes ARCH/PRECISION, PRECISION one of {list(PRECISIONS)}: {bad}")
    torch.set_num_threads(args.threads)  # a benchmark script: its own process
    load = os.getloadavg()[0]
    costs = {unit: unit_costs(*unit.split("/"), tiny=args.tiny) for unit in args.units}
    record = {
        "costs": costs,
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg()[0],
        "cpu_flags": cpu_flags(),
        "native_bf16": cpu_has_native_bf16(),
        "command": " ".join(sys.argv),
        **machine(),
    }
    if args.out is not None:
        write_json_atomic(record, args.out)
    print(json.dumps(record, indent=1))
    return record


# -- rendering ------------------------------------------------------------------------------


def _cells(paths: list[Path]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Teacher top-1 per architecture, and every recovered cell of the run.py files with its
    budget: architecture, sparsity, source, images, iterations, steps and precision."""
    teachers, cells, seen = {}, [], set()
    for path in paths:
        for key, rec in json.loads(path.read_text())["cells"].items():
            if key in seen:  # the same measurement in two files (a table and a sweep)
                continue
            seen.add(key)
            name = key.split(":")[0]
            arch, _, column = name.partition("/")
            if column == "teacher":
                teachers[arch] = rec["top1"]
                continue
            arch, _, amount = arch.partition("@")
            if column not in SOURCES:
                continue
            cfg = rec["config"]
            steps_per_epoch = -(-cfg["n"] // cfg["distill"]["batch_size"])
            cells.append(
                {
                    "arch": arch,
                    "amount": float(amount),
                    "source": column,
                    "n": cfg["n"],
                    "iterations": cfg["inversion"]["iterations"] if column == SOURCES[0] else 0,
                    "steps": cfg["distill"]["epochs"] * steps_per_epoch,
                    "precision": cfg.get("precision", "auto"),
                    "top1": rec["top1"],
                }
            )
    return teachers, cells


def minutes(c: dict[str, Any], costs: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Modelled synthesis and recovery minutes of cell ``c``: its image-iterations (its
    images plus the quick preset's check set, DeepInversion only) and its steps, at the
    unit costs measured alone."""
    unit = costs[f"{c['arch']}/{c['precision']}"]
    images = c["n"] + PRESETS["quick"].check_n if c["iterations"] else 0
    synth = images * c["iterations"] * unit["image_iteration_s"]
    recover_s = unit["recovery_fixed_s"] + c["steps"] * unit["step_s"]
    return synth / 60, recover_s / 60


def _split(c: dict[str, Any]) -> str:
    source = c["source"] + (f" {c['n']:,}x{c['iterations']}" if c["iterations"] else "")
    return source + (f" ({c['precision']})" if c["precision"] != "auto" else "")


def _best(c: dict[str, Any]) -> str:
    """A time-to-accuracy cell: top-1 and the split that reached it."""
    images = f"{c['n']:,}x{c['iterations']}, " if c["iterations"] else ""
    return f"{c['top1']:.2f} ({images}{c['steps']:,} steps)"


def time_to_accuracy(cells: list[dict[str, Any]], budgets: tuple[int, ...] = BUDGETS_MIN) -> str:
    """Per row and source, the best top-1 (its split) among cells that fit each budget."""
    lines = ["| model | sparsity | within | " + " | ".join(SOURCES) + " |"]
    lines.append("|---|---|---|" + "---:|" * len(SOURCES))
    for row in sorted({(c["arch"], c["amount"]) for c in cells}):
        for budget in budgets:
            shown = []
            for source in SOURCES:
                fit = [
                    c
                    for c in cells
                    if (c["arch"], c["amount"]) == row
                    and c["source"] == source
                    and c["precision"] == "auto"
                    and c["total_min"] <= budget
                ]
                best = max(fit, key=lambda c: c["top1"], default=None)
                shown.append("none measured" if best is None else _best(best))
            lines.append(f"| {row[0]} | {row[1]:.0%} | {budget} min | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def render(paths: list[Path], timing: Path) -> str:
    """The docs block: every cell's split with its modelled minutes, then time to accuracy."""
    t = json.loads(timing.read_text())
    teachers, cells = _cells(paths)
    for c in cells:
        c["synth_min"], c["recover_min"] = minutes(c, t["costs"])
        c["total_min"] = c["synth_min"] + c["recover_min"]
    cells.sort(key=lambda c: (c["arch"], c["amount"], SOURCES.index(c["source"]), c["total_min"]))
    lines = [
        "| model | sparsity | source | steps | synthesis min | recovery min | total min "
        "| top-1 | vs teacher |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c['arch']} | {c['amount']:.0%} | {_split(c)} | {c['steps']:,} "
            f"| {c['synth_min']:.1f} | {c['recover_min']:.1f} | {c['total_min']:.1f} "
            f"| {c['top1']:.2f} | {c['top1'] - teachers[c['arch']]:+.2f} |"
        )
    rates = "; ".join(
        f"{name}: {u['image_iteration_s'] * 1e3:.2f} ms per image-iteration, "
        f"{u['step_s']:.3f} s per step, {u['recovery_fixed_s']:.1f} s fixed"
        for name, u in t["costs"].items()
    )
    rels = " ".join(os.path.relpath(p.resolve(), ROOT) for p in paths)
    return "\n".join(lines) + (
        "\n\nMinutes are modelled, not the cells' own wall times (those ran side by side at "
        "one thread each): image-iterations (a DeepInversion set's images plus the quick "
        f"preset's {PRESETS['quick'].check_n}-image check set, times its iterations) and "
        "distillation steps (batch 128), at unit costs measured with nothing else running "
        f"by `benchmarks/quick_budget.py --time` on {t['machine']} ({t['processor']}, "
        f"{', '.join(t['cpu_flags'])}), {t['threads']} threads, torch {t['torch']} (1-minute "
        f"load average {t['load_average_at_start']:.1f} at its start, which still counts the "
        f"minute before it, and {t['load_average_at_end']:.1f} at its end, its own threads "
        f"included): {rates}. `auto` is the library's "
        "automatic precision (bf16 autocast and channels_last on a CPU with native bf16); "
        "rows marked (fp32) ran in float32. `noise` and `real` make no images (`real` is "
        "data this library never reads: the upper bound). Top-1 on the 10,000 JPEG CIFAR-10 "
        f"test images. Generated by `python benchmarks/quick_budget.py --render {rels} "
        f"--timing {os.path.relpath(timing.resolve(), ROOT)}`.\n\n"
        "Time to accuracy: per row and source, the best top-1 among the measured splits "
        "whose modelled minutes fit the budget (`auto` precision).\n\n"
        + time_to_accuracy(cells)
        + "\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.time:
        return measure(args)
    if not args.render or args.timing is None:
        raise SystemExit("pass --time, or --render RESULTS_JSON... --timing TIMING_JSON")
    md = render(args.render, args.timing)
    print(md)
    if args.update_docs:
        update_block(ROOT / "docs" / "results.md", "time-to-accuracy", md)
    return {"markdown": md}


if __name__ == "__main__":
    main()
