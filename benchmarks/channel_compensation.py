"""Top-1 right after channel pruning: compensation and BatchNorm re-estimation, no training.

For each teacher, ``recoverprune.prune(teacher, ChannelConfig(speedup=...))`` is run five
ways, each timed as one call (the DeepInversion images included; each call makes its own,
with the same seed):

* ``today``: no repair (``recalibrate=False``), the old behaviour;
* ``bias``: analytic bias correction only (the experimental ``CompensatedChannelConfig``,
  ``recalibrate=False``);
* ``bn``: BatchNorm statistics re-estimated on DeepInversion images (the default);
* ``both``: bias correction, then re-estimation;
* ``bn-all``: re-estimation of *every* BatchNorm, not only those whose input pruning
  changed (what ``recoverprune.distill`` does before training), for comparison.

Then ``recoverprune.evaluate`` on the JPEG CIFAR-10 test split. Rows: the embedded
ResNet-20 (JPEG-trained, streams pruned and, ``--inner``, streams kept whole) and the
ResNet-32 of ``../shared/teachers`` (trained on lossless CIFAR-10). Results go to
``benchmarks/results/channel/compensation.json`` with the machine, threads and torch
version::

    OMP_NUM_THREADS=1 python benchmarks/channel_compensation.py --threads 1 --inner

``--tiny`` runs every path on an untrained ResNet-20 with tiny budgets (the test suite).
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
from _common import DATA, ROOT, machine, shared_teacher, update_block
from torch import nn

from recoverprune import Calibration, ChannelConfig, evaluate, prune
from recoverprune.core.io import write_json_atomic
from recoverprune.evaluation.evaluate import resolve_data
from recoverprune.experimental.compensate import CompensatedChannelConfig
from recoverprune.models import default_teacher, load_model, resnet20
from recoverprune.pipeline.prune import calibration_source, recalibration_budget
from recoverprune.pruning.batchnorm import recalibrate_bn
from recoverprune.pruning.measure import count_macs

R32 = shared_teacher("resnet32")
OUT = ROOT / "benchmarks" / "results" / "channel" / "compensation.json"

COLUMNS = {
    "today": {"compensate": False, "recalibrate": False},
    "bias": {"compensate": True, "recalibrate": False},
    "bn": {"compensate": False, "recalibrate": True},
    "both": {"compensate": True, "recalibrate": True},
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--speedup", type=float, default=2.0, help="MAC ratio (default 2.0)")
    p.add_argument(
        "--images", type=int, default=None, help="Calibration(images=) (default: the library's)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="Calibration(iterations=) (default: the library's)",
    )
    p.add_argument("--no-r32", action="store_true", help="skip the ResNet-32 row")
    p.add_argument("--inner", action="store_true", help="add ResNet-20 with residual=False")
    p.add_argument("--test-n", type=int, default=None, help="N random test images (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data", type=Path, default=DATA, help="the JPEG CIFAR-10 archive")
    p.add_argument("--out", type=Path, default=OUT, help="the results JSON")
    p.add_argument("--tiny", action="store_true", help="untrained ResNet-20, tiny budgets")
    p.add_argument("--render", type=Path, default=None, help="only print a results JSON's table")
    p.add_argument("--update-docs", action="store_true", help="with --render: into the docs")
    return p.parse_args(argv)


def _calibration(args: argparse.Namespace) -> Calibration:
    return Calibration(images=args.images, iterations=args.iterations)


def _how(cfg: ChannelConfig, compensate: bool, recalibrate: bool) -> Any:
    """A column's config: ``cfg``, re-estimating or not, compensated or not."""
    cfg = replace(cfg, recalibrate=recalibrate)
    return CompensatedChannelConfig(cfg) if compensate else cfg


def _test_set(model: nn.Module, args: argparse.Namespace) -> Any:
    ds = resolve_data(model, str(args.data))
    if args.test_n is None:
        return ds
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: args.test_n]
    return ds.batch(pick.sort().values)  # a fixed random subset: every class


def _all_bns(teacher: nn.Module, cfg: ChannelConfig, calibration: Calibration) -> nn.Module:
    """The ``bn-all`` column: prune without repair, re-estimate every BatchNorm."""
    student = prune(teacher, replace(cfg, recalibrate=False))
    make = calibration_source(teacher, [cfg], calibration)
    if make is not None:
        recalibrate_bn(student, make().images)
    return student


def _row(name: str, teacher: nn.Module, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    test = _test_set(teacher, args)
    base, cal = ChannelConfig(speedup=args.speedup, **extra), _calibration(args)
    row: dict[str, Any] = {"model": name, "config": asdict(base), "top1": {}, "seconds": {}}
    row["recalibration_budget"] = list(recalibration_budget(teacher, cal))
    row["top1"]["teacher"] = evaluate(teacher, test, progress=False).top1
    builds = {
        k: (lambda v=v: prune(teacher, _how(base, **v), calibration=cal))
        for k, v in COLUMNS.items()
    }
    builds["bn-all"] = lambda: _all_bns(teacher, base, cal)
    for column, build in builds.items():
        t0 = time.perf_counter()
        student = build()
        row["seconds"][column] = round(time.perf_counter() - t0, 2)
        row["top1"][column] = evaluate(student, test, progress=False).top1
        print(
            f"  {name} {column}: {row['top1'][column]:.2f} % in {row['seconds'][column]:.1f} s",
            flush=True,
        )
    example = torch.zeros(1, 3, 32, 32)
    row["macs"] = [count_macs(teacher, example), count_macs(student, example)]
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["today", "bias", "bn", "both", "bn-all"]
    head = "| model | MACs | teacher | " + " | ".join(f"{c} (s)" for c in cols) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(cols)]
    for r in rows:
        macs = f"{r['macs'][0] / 1e6:.1f} M → {r['macs'][1] / 1e6:.1f} M"
        cells = [f"{r['top1'][c]:.2f} ({r['seconds'][c]:.1f})" for c in cols]
        lines.append(
            f"| {r['model']} | {macs} | {r['top1']['teacher']:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def render(path: Path) -> str:
    """The docs block of a finished results JSON: its table and the settings it ran with."""
    results = json.loads(path.read_text())
    s, rel = results["settings"], path.resolve().relative_to(ROOT)
    load = ", ".join(f"{x:.1f}" for x in s["load_average_at_start"])
    return (
        _table(results["rows"])
        + f"\n\nTop-1 (%) on {s['test_images']} JPEG CIFAR-10 test images right after `prune` to "
        f"{s['speedup']:g}x fewer MACs, no distillation (seconds of the `prune` call in "
        f"brackets, DeepInversion included). Machine: {s['machine']}, {s['threads']} thread, "
        f"torch {s['torch']}, load average {load} at the start (other processes were running: "
        f"read the seconds as upper bounds). Generated from `{rel}` by "
        f"`python benchmarks/channel_compensation.py --render {rel}`.\n"
    )


def _teachers(args: argparse.Namespace) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    if args.tiny:
        torch.manual_seed(0)
        return [("resnet20 (untrained, tiny)", resnet20().eval(), {})]
    out = [("resnet20 (embedded)", default_teacher().eval(), {})]
    if args.inner:
        out.append(
            ("resnet20 (embedded), residual=False", default_teacher().eval(), {"residual": False})
        )
    if not args.no_r32:
        if R32.is_file():
            out.append(("resnet32 (../shared)", load_model("resnet32", R32).eval(), {}))
        else:
            print(f"skipping ResNet-32: {R32} not found", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.render is not None:
        md = render(args.render)
        print(md)
        if args.update_docs:
            update_block(ROOT / "docs" / "channel-pruning.md", "channel-compensation", md)
        return {"markdown": md}
    if args.tiny:
        args.images, args.iterations = args.images or 4, args.iterations or 2
        args.test_n = args.test_n or 64
    if not args.data.exists():
        raise SystemExit(f"the JPEG CIFAR-10 archive is not at {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    settings = {
        "speedup": args.speedup,
        "recalibrate_images": args.images or "automatic (64 for these models)",
        "recalibrate_iterations": args.iterations or "automatic (50 for these models)",
        "test_images": args.test_n or "all (10,000)",
        **machine(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()),
    }
    print("settings: " + json.dumps(settings), flush=True)
    rows = [_row(name, teacher, args, **extra) for name, teacher, extra in _teachers(args)]
    settings["load_average_at_end"] = list(os.getloadavg())
    table = _table(rows)
    print(table)
    results = {
        "settings": settings,
        "columns": {**COLUMNS, "bn-all": "prune, then recalibrate_bn on every BN"},
        "rows": rows,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results, args.out)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
