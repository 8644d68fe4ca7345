"""CIFAR-10 (JPEG q75 copy) results table: data-free recovery against honest baselines.

For every row (architecture, global sparsity) it measures top-1 on the 10,000 JPEG test
images of:

- ``teacher``: the dense teacher (fine-tuned on the JPEG training split with
  ``benchmarks/train_teacher.py`` when not already present),
- ``pruned``: the pruned student before any recovery,
- ``deepinversion``: KD on DeepInversion images (this library),
- ``noise``: KD on Gaussian-noise images of the same count and budget,
- ``real``: KD on the same number of real training images (the upper bound),
- ``seed`` (optional): the original work's recipe (the ``seed`` preset: its own 1,024
  DeepInversion images at synthesis batch 32, 15 epochs of SGD, student BN frozen),
- ``adi`` (optional): KD on Adaptive DeepInversion images.

A row is ``ARCH:AMOUNT``; ``ARCH`` is a zoo name or ``torchvision:NAME`` (a torchvision
architecture with a 10-class head, trained from scratch on the JPEG training split at
``--image-size``, ``--scratch-epochs`` epochs, as the original work's teachers). Every image
is read in the teacher's own input description (size, mean, std).

Every cell stores its configuration, wall time, machine and torch version in
``results.json``; ``results.md`` is generated from it (and, with ``--update-readme``, the
README's results section). Finished cells are reused on a rerun, so an interrupted run
resumes. Plots need the ``bench`` extra (matplotlib).

    python benchmarks/cifar10/run.py                  # the CPU table of the README
    python benchmarks/cifar10/run.py --tiny           # seconds; what the tests run
    python benchmarks/cifar10/run.py --device cuda --columns deepinversion seed noise real \
        --rows torchvision:resnet18:0.5 torchvision:resnet18:0.75     # the torchvision rows
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common

from _common import (
    DATA,
    FP32,
    ROOT,
    SHARED_TEACHERS,
    TEACHERS,
    cell,
    config_key,
    jpeg_teacher,
    machine,
    set_seconds,
    shared_teacher,
    stem,
    synthesis_seconds,
    update_block,
)

from recoverprune import (
    PRESETS,
    Accel,
    DistillConfig,
    InputSpec,
    InversionConfig,
    SyntheticImages,
    evaluate,
    prune,
    recover,
    sparsity,
    synthesize,
)
from recoverprune.core.io import sha256_file, write_json_atomic
from recoverprune.core.runtime import generator
from recoverprune.data import load_split
from recoverprune.models import load_model

COLUMNS = ("teacher", "pruned", "deepinversion", "seed", "noise", "real", "adi")


def ensure_teacher(arch: str, args: argparse.Namespace) -> Path:
    """The JPEG-fine-tuned teacher of ``arch`` (trained once with train_teacher.py)."""
    path = jpeg_teacher(arch, args.teachers)
    if path.is_file():
        return path
    if arch == "resnet20" and not args.retrain_default:
        # the embedded default teacher was made by train_teacher.py with these settings
        from importlib import resources

        from recoverprune.models.default import DEFAULT_TEACHER_FILE

        return Path(str(resources.files("recoverprune") / "_assets" / DEFAULT_TEACHER_FILE))
    import train_teacher  # benchmarks/, on the path above

    cmd = [
        "--arch",
        arch,
        "--data",
        args.data,
        "--out",
        str(path),
        "--epochs",
        str(args.teacher_epochs),
        "--device",
        args.device,
    ]
    if arch in SHARED_TEACHERS:
        cmd += ["--init", str(shared_teacher(arch))]
    elif ":" in arch:  # a torchvision/timm architecture: from scratch, at --image-size
        cmd += ["--epochs", str(args.scratch_epochs), "--lr", str(args.scratch_lr)]
        cmd += ["--image-size", str(args.image_size), "--batch-size", "256"]
    if args.tiny:
        cmd += ["--limit", "256", "--epochs", "1"]
    train_teacher.main(cmd)
    return path


def noise_set(n: int, like: InputSpec | SyntheticImages, seed: int) -> SyntheticImages:
    """Gaussian noise in the teacher's normalised input space (the naive baseline), shaped
    like the teacher's input (an ``InputSpec``) or like a set of its images."""
    g = generator(seed, "noise")
    if isinstance(like, SyntheticImages):
        shape, (mean, std) = like.image_shape, (like.mean, like.std)
    else:
        shape, (mean, std) = like.shape, like.normalisation()
    images = torch.randn(n, *shape, generator=g)
    return SyntheticImages(images, torch.zeros(n, dtype=torch.long), mean=mean, std=std)


def real_set(n: int, train: Any, seed: int) -> SyntheticImages:
    """``n`` random real training images (the upper bound data-free methods chase)."""
    idx = torch.randperm(len(train), generator=generator(seed, "real"))[:n]
    x, y = train.batch(idx)
    return SyntheticImages(x, y, mean=train.mean, std=train.std)


def _synthesize(
    teacher: torch.nn.Module, n: int, args: argparse.Namespace, out_dir: Path, **options: Any
) -> SyntheticImages:
    """``n`` DeepInversion images of ``teacher`` in ``out_dir`` (resumed, or refused when
    made otherwise), at the run's batch size, seed, device and switches unless ``options``
    say otherwise."""
    options = {"batch_size": args.batch_size, "accel": args.accel, **options}
    return synthesize(
        teacher,
        n,
        out_dir=out_dir,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
        **options,
    )


def _recovered(
    teacher: torch.nn.Module,
    amount: float,
    data: SyntheticImages,
    config: DistillConfig,
    test: Any,
    args: argparse.Namespace,
) -> float:
    """Test top-1 of ``teacher`` pruned to ``amount`` and recovered on ``data``."""
    student = recover(
        teacher,
        prune(teacher, amount),
        data,
        config=config,
        seed=args.seed,
        device=args.device,
        accel=args.accel,
        progress=args.progress,
    )
    return evaluate(student, test, device=args.device, progress=False).top1


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"cells": {}}
    inv = replace(InversionConfig(), iterations=args.iterations)
    dcfg = replace(DistillConfig(), epochs=args.epochs)
    seed_preset = PRESETS["seed"]
    seed_dcfg = replace(seed_preset.distill, epochs=min(seed_preset.epochs, args.epochs))
    # the seed recipe's own iterations (the original work's 200), whatever the run's default
    seed_inv = replace(inv, iterations=args.iterations if args.tiny else seed_preset.iterations)
    seed_n = args.n if args.tiny else seed_preset.n
    splits: dict[str, Any] = {}

    def split(name: str, teacher: torch.nn.Module) -> Any:
        """``name`` split read in ``teacher``'s input description (cached per description)."""
        spec = InputSpec.of(teacher)
        key = f"{name}:{json.dumps(spec.to_dict())}"
        if key not in splits:
            size = None if spec.size == (32, 32) else spec.size  # CIFAR is stored at 32
            data = load_split(
                args.data,
                name,
                mean=spec.mean,
                std=spec.std,
                image_size=size,
                channels=spec.channels,
            )
            if args.tiny and name == "test":
                data = type(data)(
                    data.images[:500], data.labels[:500], data.classes, data.mean, data.std
                )
            splits[key] = data
        return splits[key]

    def measured(name: str, config: dict[str, Any], fn: Any) -> dict[str, Any] | None:
        key = f"{name}:{config_key(config)}"
        if args.only_cached and key not in results["cells"]:
            return None  # not measured (yet): a "-" in the table
        return cell(results, results_path, key, fn, name=name, config=config)

    def do_row(arch: str, amount: float) -> dict[str, Any]:
        tpath = ensure_teacher(arch, args)
        teacher = load_model(arch, tpath)
        test = split("test", teacher)
        base = {"arch": arch, "teacher_file": tpath.name, "teacher_sha": sha256_file(tpath)[:12]}
        line: dict[str, Any] = {"arch": arch, "amount": amount}
        line["teacher"] = measured(
            f"{arch}/teacher",
            base,
            lambda t=teacher: evaluate(t, test, device=args.device, progress=False).top1,
        )
        pruned = prune(teacher, amount)
        line["sparsity"] = sparsity(pruned).overall
        line["pruned"] = measured(
            f"{arch}@{amount}/pruned",
            {**base, "amount": amount},
            lambda p=pruned: evaluate(p, test, device=args.device, progress=False).top1,
        )
        synth_cfg = {
            **base,
            "n": args.n,
            "inversion": asdict(inv),
            "batch": args.batch_size,
            "seed": args.seed,
            **({"precision": args.precision} if args.precision != "auto" else {}),
        }
        seed_synth = {**synth_cfg, "n": seed_n, "inversion": asdict(seed_inv)}
        synth_dir = args.synthetic_from.get(
            arch, out / "synthetic" / f"{stem(arch)}-{config_key(synth_cfg)}"
        )
        made: dict[str, Any] = {}
        line["synthesis_seconds"] = set_seconds(synth_dir)

        def deepinversion() -> SyntheticImages:
            """The row's DeepInversion set, made (or resumed) only when a column needs it."""
            if "di" not in made:
                t_syn = time.perf_counter()
                made["di"] = _synthesize(teacher, args.n, args, synth_dir, config=inv)
                line["synthesis_seconds"] = synthesis_seconds(made["di"]) or (
                    time.perf_counter() - t_syn
                )
                grid = out / f"synthetic-grid-{stem(arch)}.png"
                if not grid.exists():
                    made["di"].save_grid(grid)
            return made["di"]

        sources = {
            "deepinversion": deepinversion,
            "noise": lambda: noise_set(args.n, InputSpec.of(teacher), args.seed),
            "real": lambda: real_set(args.n, split("train", teacher), args.seed),
            "seed": lambda: _synthesize(  # the seed recipe's own set: synthesis batch 32
                teacher,
                seed_n,
                args,
                out / "synthetic" / f"{stem(arch)}-seed-{config_key(seed_synth)}",
                config=seed_inv,
                batch_size=min(seed_preset.batch_size, args.batch_size),
            ),
        }
        if "adi" in args.columns:
            adi_cfg = replace(inv, competition_weight=args.adi_weight)
            sources["adi"] = lambda: _synthesize(
                teacher,
                args.n,
                args,
                out / "synthetic" / f"{stem(arch)}-adi-{amount}-{config_key(synth_cfg)}",
                config=adi_cfg,
                student=prune(teacher, amount),
                accel=None,
            )
        for col in ("deepinversion", "seed", "noise", "real", "adi"):
            if col not in args.columns:
                continue
            col_dcfg = seed_dcfg if col == "seed" else dcfg
            own = seed_synth if col == "seed" else synth_cfg
            cfg = {**own, "amount": amount, "source": col, "distill": asdict(col_dcfg)}
            if col == "seed":
                cfg["batch"] = min(seed_preset.batch_size, args.batch_size)

            def job(col: str = col, col_dcfg: DistillConfig = col_dcfg) -> float:
                return _recovered(teacher, amount, sources[col](), col_dcfg, test, args)

            rec = measured(f"{arch}@{amount}/{col}", cfg, job)
            line[col] = rec
        return line

    table: list[dict[str, Any]] = []
    for row in args.rows:
        arch, amount_s = row.rsplit(":", 1)
        table.append(do_row(arch, float(amount_s)))
    sweep = run_sweep(args, out, results, measured, inv, dcfg, split) if args.sweep_n else []
    results["sweep"] = sweep
    results["table"] = [
        {k: (v["top1"] if isinstance(v, dict) else v) for k, v in line.items()} for line in table
    ]
    results["settings"] = {
        "n": args.n,
        "iterations": args.iterations,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "inversion": asdict(inv),
        "distill": asdict(dcfg),
        "sweep_arch": args.sweep_arch,
        "sweep_amount": args.sweep_amount,
        "command": " ".join(a for a in sys.argv if a != "--only-cached"),
        **machine(),
    }
    write_json_atomic(results, results_path)
    md = to_markdown(results, table)
    (out / "results.md").write_text(md)
    print(md)
    if args.plots:
        plots(results, table, out)
    if args.update_readme:
        _update_readme(md, out)
    return results


def run_sweep(
    args: argparse.Namespace,
    out: Path,
    results: dict[str, Any],
    measured: Any,
    inv: InversionConfig,
    dcfg: DistillConfig,
    split: Any,
) -> list[dict[str, Any]]:
    """Recovered top-1 against the number of synthetic images (subsets of one large set)."""
    arch, amount = args.sweep_arch, args.sweep_amount
    tpath = ensure_teacher(arch, args)
    teacher = load_model(arch, tpath)
    test = split("test", teacher)
    n_max = max(args.sweep_n)
    cfg = {
        "arch": arch,
        "teacher_sha": sha256_file(tpath)[:12],
        "n": n_max,
        "inversion": asdict(inv),
        "batch": args.batch_size,
        "seed": args.seed,
    }
    given = args.synthetic_from.get(arch)
    if given is not None and len(SyntheticImages.load(given)) >= n_max:
        big = SyntheticImages.load(given)  # subsets of the set the table rows used
        cfg["n"] = len(big)
    else:
        sweep_dir = out / "synthetic" / f"{stem(arch)}-sweep-{config_key(cfg)}"
        big = _synthesize(teacher, n_max, args, sweep_dir, config=inv)
    results["sweep_synthesis_seconds"] = synthesis_seconds(big)
    results["sweep_set_n"] = len(big)
    rows = []
    for n in sorted(args.sweep_n):

        def job(n: int = n) -> float:
            x, y = big.get_batch(torch.arange(n))
            subset = SyntheticImages(x, y, mean=big.mean, std=big.std)
            return _recovered(teacher, amount, subset, dcfg, test, args)

        rec = measured(
            f"{arch}@{amount}/sweep-n{n}",
            {**cfg, "subset": n, "amount": amount, "distill": asdict(dcfg)},
            job,
        )
        if rec is not None:
            rows.append({"n": n, "top1": rec["top1"], "seconds": rec["seconds"]})
    return rows


def to_markdown(results: dict[str, Any], table: list[dict[str, Any]]) -> str:
    s = results["settings"]
    cols = [c for c in COLUMNS if any(c in line for line in table)]
    head = "| model | sparsity | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for line in table:
        cells = []
        for c in cols:
            v = line.get(c)
            cells.append(f"{v['top1']:.2f}" if isinstance(v, dict) else "-")
        lines.append(f"| {line['arch']} | {line['sparsity']:.0%} | " + " | ".join(cells) + " |")
    times, threads = [], set()
    for line in table:
        for c in cols:
            v = line.get(c)
            if isinstance(v, dict):
                threads.add(v.get("threads", s["threads"]))
                if c not in ("teacher", "pruned"):
                    times.append(v["seconds"])
    thread_text = "/".join(str(t) for t in sorted(threads)) or str(s["threads"])
    note = (
        f"\nTop-1 (%) on the 10,000 test images of CIFAR-10 (JPEG q75 copy). Transfer sets: "
        f"{s['n']} images; DeepInversion {s['iterations']} iterations per batch of "
        f"{s['batch_size']}; distillation {s['epochs']} epochs (T = {s['distill']['temperature']}, "
        f"BN mode '{s['distill']['bn_mode']}'); seed {s['seed']}. Machine: {s['machine']}, "
        f"{thread_text} CPU thread(s) per cell, torch {s['torch']}"
        + (f", GPU {s['cuda']}" if s.get("cuda") else "")
        + f". Distillation cells took {min(times, default=0):.0f} to {max(times, default=0):.0f} s "
        f"each (cells may run side by side and come from earlier runs: they are cached in "
        f"results.json with their own machine, threads and time). Generated by "
        f"`{s['command']}`.\n"
    )
    if "seed" in cols:
        note += (
            "\n`seed`: the original work's recipe on its own DeepInversion set (1,024 images, "
            "synthesis batch 32, 200 iterations; 15 epochs of SGD lr 1e-3, momentum 0.9, T = 3, "
            "student BN frozen); `deepinversion` is this library's default recipe.\n"
        )
    sweep = results.get("sweep") or []
    if sweep:
        set_n = results.get("sweep_set_n") or max(r["n"] for r in sweep)
        note += (
            f"\nTransfer-set size ({s.get('sweep_arch')} at {s.get('sweep_amount'):.0%}, nested "
            f"subsets (its first images) of one {set_n}-image DeepInversion set, same "
            "distillation):\n\n| images | " + " | ".join(str(r["n"]) for r in sweep) + " |\n"
            "|---|" + "---|" * len(sweep) + "\n"
            "| top-1 | " + " | ".join(f"{r['top1']:.2f}" for r in sweep) + " |\n"
            "| distillation s | " + " | ".join(f"{r['seconds']:.0f}" for r in sweep) + " |\n"
        )
        synth_s = results.get("sweep_synthesis_seconds")
        if synth_s and set_n != s["n"]:  # the table's own set has its time below
            note += (
                f"\nSynthesising the {set_n}-image set took "
                f"{synth_s / 60:.0f} min (sum of its per-batch times, recorded in its shards "
                "when it was made).\n"
            )
        note += _gap_sentence(sweep, table, s)
    return "\n".join(lines) + "\n" + note


def _gap_sentence(
    sweep: list[dict[str, Any]], table: list[dict[str, Any]], s: dict[str, Any]
) -> str:
    """How many synthetic images bring the sweep within 1.5 and 1 point of the teacher."""
    row = next(
        (
            line
            for line in table
            if line["arch"] == s.get("sweep_arch")
            and abs(line["sparsity"] - s.get("sweep_amount", -1)) < 1e-9
            and isinstance(line.get("teacher"), dict)
        ),
        None,
    )
    if row is None:
        return ""
    teacher = row["teacher"]["top1"]
    best = max(sweep, key=lambda r: r["top1"])
    parts = []
    for gap in (1.5, 1.0):
        hit = next((r for r in sweep if r["top1"] >= teacher - gap), None)
        points = f"{gap:g} point{'' if gap == 1 else 's'}"
        if hit is not None:
            parts.append(f"within {points} of the teacher from {hit['n']} images")
        else:
            parts.append(f"not within {points} up to {max(r['n'] for r in sweep)} images")
    parts.append(f"best {best['top1']:.2f} with {best['n']} images")
    real = row.get("real")
    real_text = (
        f" For scale: {s['n']} *real* training images give {real['top1']:.2f}."
        if isinstance(real, dict)
        else ""
    )
    return f"\nTeacher {teacher:.2f}: " + "; ".join(parts) + "." + real_text + "\n"


def render(paths: list[str]) -> str:
    """The table of one or more finished ``results.json`` files (e.g. brought back from a
    GPU machine, or written by runs side by side), from their cells alone: nothing is
    recomputed. A row measured in several files (different columns) is one row."""
    merged: list[dict[str, Any]] = [json.loads(Path(p).read_text()) for p in paths]
    cells = {c["name"]: c for r in merged for c in r["cells"].values()}
    table: list[dict[str, Any]] = []
    synth: dict[str, float] = {}
    for r in merged:
        for row in r["table"]:
            arch, amount = row["arch"], row["amount"]
            seconds = row.get("synthesis_seconds", row.get("synthesis_seconds_this_run"))
            if seconds is not None:  # (the older files' name of the field)
                synth.setdefault(arch, seconds)
            if any(line["arch"] == arch and line["amount"] == amount for line in table):
                continue
            line: dict[str, Any] = {"arch": arch, "amount": amount, "sparsity": row["sparsity"]}
            line["teacher"] = cells[f"{arch}/teacher"]
            for col in COLUMNS[1:]:
                if f"{arch}@{amount}/{col}" in cells:
                    line[col] = cells[f"{arch}@{amount}/{col}"]
            table.append(line)
    settings = dict(merged[0]["settings"])
    settings["command"] = "`; `".join(r["settings"]["command"] for r in merged)
    settings["threads"] = merged[0]["cells"][next(iter(merged[0]["cells"]))]["threads"]
    with_sweep = next((r for r in merged if r.get("sweep")), {})
    for key in ("sweep_arch", "sweep_amount"):
        settings[key] = with_sweep.get("settings", settings).get(key)
    md = to_markdown(
        {
            "settings": settings,
            "sweep": with_sweep.get("sweep", []),
            "sweep_synthesis_seconds": with_sweep.get("sweep_synthesis_seconds"),
            "sweep_set_n": with_sweep.get("sweep_set_n"),
        },
        table,
    )
    if not synth:
        return md
    times = ", ".join(f"{arch} {sec:.0f} s" for arch, sec in synth.items())
    return md + (
        f"\nSynthesising each {settings['n']}-image DeepInversion set took: {times} (the "
        "`seed` column's own set, at batch 32, is inside its first cell's time).\n"
    )


def _update_readme(md: str, out: Path | None = None, marker: str = "results") -> None:
    """Put the table between the ``marker`` markers of README.md and docs/results.md (the
    docs page also shows the plots of ``out``)."""
    update_block(ROOT / "README.md", marker, md)
    body = md
    for png in sorted(out.glob("accuracy-vs-*.png")) if out is not None else []:
        shutil.copyfile(png, ROOT / "docs" / "assets" / png.name)
        body += f"\n![{png.stem}](assets/{png.name})\n"
    update_block(ROOT / "docs" / "results.md", marker, body)


def plots(results: dict[str, Any], table: list[dict[str, Any]], out: Path) -> None:
    """accuracy-vs-sparsity and accuracy-vs-images PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots")
        return
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for line in table:
        by_arch.setdefault(line["arch"], []).append(line)
    for arch, lines in by_arch.items():
        if len(lines) < 2:
            continue
        lines.sort(key=lambda r: r["amount"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [r["amount"] * 100 for r in lines]
        for col in ("deepinversion", "real", "noise", "pruned"):
            ys = [r[col]["top1"] for r in lines if isinstance(r.get(col), dict)]
            if len(ys) == len(xs):
                ax.plot(xs, ys, marker="o", label=col)
        ax.axhline(lines[0]["teacher"]["top1"], color="k", ls="--", label="teacher")
        ax.set_xlabel("global sparsity (%)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{arch}: accuracy vs sparsity")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"accuracy-vs-sparsity-{arch}.png", dpi=120)
        plt.close(fig)
    sweep = results.get("sweep") or []
    if sweep:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(
            [r["n"] for r in sweep],
            [r["top1"] for r in sweep],
            marker="o",
            label="KD on DeepInversion images",
        )
        ax.set_xscale("log", base=2)
        ref = next(
            (
                line
                for line in table
                if line["amount"] == results["settings"].get("sweep_amount")
                and line["arch"] == results["settings"].get("sweep_arch")
            ),
            None,
        )
        if ref is not None:
            ax.axhline(ref["teacher"]["top1"], color="k", ls="--", label="teacher")
            ax.axhline(ref["pruned"]["top1"], color="gray", ls=":", label="pruned, no recovery")
            for col, style in (("real", "-."), ("noise", ":")):
                if isinstance(ref.get(col), dict):
                    ax.axhline(
                        ref[col]["top1"],
                        ls=style,
                        color="tab:green" if col == "real" else "tab:red",
                        label=f"KD on {results['settings']['n']} {col} images",
                    )
        ax.set_xlabel("synthetic images")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("recovered accuracy vs transfer-set size")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy-vs-images.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=["resnet20:0.5", "resnet20:0.75", "resnet20:0.9", "resnet32:0.75"],
    )
    p.add_argument(
        "--columns",
        nargs="+",
        default=["deepinversion", "noise", "real"],
        choices=["deepinversion", "seed", "noise", "real", "adi"],
    )
    quick = PRESETS["quick"]  # the defaults: the quick preset's budget
    p.add_argument("--n", type=int, default=quick.n)
    p.add_argument("--iterations", type=int, default=quick.iterations)
    p.add_argument("--batch-size", type=int, default=quick.batch_size)
    p.add_argument("--epochs", type=int, default=quick.epochs)
    p.add_argument("--adi-weight", type=float, default=1.0)
    p.add_argument("--teacher-epochs", type=int, default=2, help="fine-tuning a zoo teacher")
    p.add_argument("--scratch-epochs", type=int, default=30, help="training a torchvision teacher")
    p.add_argument("--scratch-lr", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=32, help="input size of torchvision teachers")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--teachers", default=str(TEACHERS))
    p.add_argument("--out", default=str(ROOT / "runs" / "cifar10"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument(
        "--synthetic-from",
        nargs="*",
        default=[],
        metavar="ARCH=DIR",
        help="use (or resume) this synthesis directory for ARCH, e.g. one written by "
        "`recoverprune compress`; a directory made with other settings is refused",
    )
    p.add_argument(
        "--sweep-n",
        nargs="*",
        type=int,
        default=[],
        help="also measure recovered top-1 with these many synthetic images",
    )
    p.add_argument("--sweep-arch", default="resnet20")
    p.add_argument("--sweep-amount", type=float, default=0.75)
    p.add_argument(
        "--retrain-default",
        action="store_true",
        help="train ResNet-20 again instead of using the embedded teacher",
    )
    p.add_argument("--update-readme", action="store_true")
    p.add_argument(
        "--render",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only print the table of these finished results.json files (with --update-readme: "
        "into the --marker block of README.md and docs/results.md)",
    )
    p.add_argument(
        "--only-cached",
        action="store_true",
        help="compute nothing: write the table of the cells results.json already holds "
        "(after an interrupted run; the cells not measured show as -)",
    )
    p.add_argument("--plots", action="store_true")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="GPU: no torch.compile")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32"],
        default="auto",
        help="auto: the library's automatic choice (bf16 on a CPU with native bf16); "
        "fp32: plain float32 for synthesis and distillation (cells keyed apart)",
    )
    p.add_argument(
        "--marker",
        default="torchvision",
        help="with --render --update-readme: the block to replace (torchvision, results)",
    )
    args = p.parse_args(argv)
    if args.render:
        md = render(args.render)
        print(md)
        if args.update_readme:
            _update_readme(md, marker=args.marker)
        return {"markdown": md}
    args.accel = Accel(compile=False) if args.no_compile else None
    if args.precision == "fp32":
        args.accel = FP32
    args.synthetic_from = dict(item.split("=", 1) for item in args.synthetic_from)
    if args.tiny:
        args.n, args.iterations, args.epochs, args.batch_size = 32, 2, 1, 16
        args.rows = args.rows[:1]
        args.sweep_n = [16, 32] if args.sweep_n else []
    if not Path(args.data).exists():
        raise SystemExit(f"data not found: {args.data} (the shared CIFAR-10 archive; pass --data)")
    return run(args)


if __name__ == "__main__":
    main()
