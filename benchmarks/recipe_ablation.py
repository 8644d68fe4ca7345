"""Recovery recipe ablation on CIFAR-10 (JPEG q75 copy): which technique buys what.

Every cell prunes a teacher, recovers it on a transfer set with one recipe and measures
JPEG test top-1, the recovery wall time, and the data-free quality signal: teacher–student
agreement and KL on an *independently seeded* synthetic check set the student never saw.
Cells are cached in ``results.json`` (keyed by everything that defines them, with the
machine, threads and torch version they ran with), so a rerun only computes new cells;
``ablation.md`` and the plots are generated from that file, never typed.

    python benchmarks/recipe_ablation.py --sets s1024=runs/abl/s1024x200 \\
        s4096=runs/abl/s4096x50 --check runs/abl/check256 --out runs/abl --cells all
    python benchmarks/recipe_ablation.py --tiny     # seconds; what the tests run

Transfer sets are made beforehand with ``synthesize`` (their synthesis time is read from
their shards and shown in the table); ``noise`` and ``real`` sources are built here.
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
from _common import (
    DATA,
    ROOT,
    cell,
    config_key,
    jpeg_teacher,
    machine,
    synthesis_seconds,
    table_teacher,
    update_block,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "cifar10"))

from run import noise_set, real_set

from recoverprune import DistillConfig, SyntheticImages, evaluate, prune, recover
from recoverprune.core.io import write_json_atomic
from recoverprune.data import load_split
from recoverprune.distill.loop import RECONSTRUCT_IMAGES
from recoverprune.distill.repair import recalibrate_bn, reconstruct
from recoverprune.pipeline.report import check_quality

#: the recipe before this ablation: logit KD only, 5 % of the images held out
OLD = DistillConfig(
    feature_weight=0.0, reconstruct=False, recalibrate=False, mix="none", holdout=0.05
)
BASE = replace(OLD, holdout=0.0)
#: name → (DistillConfig, transfer-set name, epochs multiplier)
RECIPES: dict[str, DistillConfig] = {
    "old": OLD,
    "kd": BASE,
    "recal": replace(BASE, recalibrate=True),
    "feat-blocks": replace(BASE, feature_weight=1.0, feature_layers="blocks"),
    "feat-bn": replace(BASE, feature_weight=1.0, feature_layers="bn"),
    "feat-blocks-w10": replace(BASE, feature_weight=10.0, feature_layers="blocks"),
    "reconstruct": replace(BASE, reconstruct=True),
    "recon-feat": replace(BASE, reconstruct=True, feature_weight=1.0),
    "recon-feat-w10": replace(BASE, reconstruct=True, feature_weight=10.0),
    "recon-feat-frozen": replace(
        BASE, reconstruct=True, feature_weight=1.0, bn_mode="frozen", lr=0.005
    ),
    "recon-feat-cutmix": replace(BASE, reconstruct=True, feature_weight=1.0, mix="cutmix"),
    "combo": replace(BASE, reconstruct=True, feature_weight=10.0, mix="cutmix"),
    "combo-t2": replace(BASE, reconstruct=True, feature_weight=10.0, mix="cutmix", temperature=2.0),
    "gradual": replace(BASE, gradual=0.3),
    "cutmix": replace(BASE, mix="cutmix"),
    "mixup": replace(BASE, mix="mixup"),
}


def teacher_for(arch: str) -> torch.nn.Module:
    found = table_teacher(arch)
    if found is None:
        raise SystemExit(
            f"{jpeg_teacher(arch)} is missing: make it with benchmarks/train_teacher.py "
            "(see benchmarks/cifar10/run.py)"
        )
    return found[0]


def quality(teacher: Any, student: Any, check: SyntheticImages) -> dict[str, float]:
    """Agreement (%) and KL(teacher ‖ student) on the independent synthetic check set."""
    q = check_quality(teacher, student, check)
    return {"check_agreement": q["agreement"], "check_kl": q["kl"]}


def parse_cell(spec: str) -> tuple[str, float, str, str, float]:
    """``arch@amount/recipe/source[xE]``, e.g. ``resnet20@0.75/feat-bn/s1024`` or
    ``resnet20@0.75/kd/s4096x0.25`` (a quarter of the epochs on four times the images)."""
    head, recipe, source = spec.split("/")
    arch, amount = head.split("@")
    mult = 1.0
    if "x" in source and source.rsplit("x", 1)[1].replace(".", "").isdigit():
        source, m = source.rsplit("x", 1)
        mult = float(m)
    return arch, float(amount), recipe, source, mult


def run_cell(
    spec: str,
    args: argparse.Namespace,
    sets: dict[str, SyntheticImages],
    test: Any,
    check: SyntheticImages | None,
    results: dict[str, Any],
    path: Path,
) -> dict[str, Any]:
    """The cell ``spec`` (measured unless ``results`` holds it already)."""
    arch, amount, recipe, source, mult = parse_cell(spec)
    cfg = RECIPES.get(recipe, BASE)  # prep:* cells train nothing
    cfg = replace(cfg, epochs=max(1, round(args.epochs * mult)))
    synth_name = source.split(":")[-1]
    base = sets[synth_name]
    key_cfg = {
        "arch": arch,
        "amount": amount,
        "distill": asdict(cfg),
        "source": source,
        "set": base.meta.get("manifest_key", synth_name),
        "n": len(base),
        "seed": args.seed,
    }

    def measure() -> dict[str, Any]:
        teacher = teacher_for(arch)
        if recipe.startswith("prep:"):
            return prep_cell(teacher, amount, base, recipe[5:], test)
        if source.startswith("noise:"):
            data = noise_set(len(base), base, args.seed)
        elif source.startswith("real:"):
            data = real_set(len(base), load_split(args.data, "train"), args.seed)
        else:
            data = base
        t0 = time.perf_counter()
        student = recover(
            teacher, prune(teacher, amount), data, config=cfg, seed=args.seed, progress=False
        )
        rec = {  # the recovery's seconds, without the measuring
            "seconds": time.perf_counter() - t0,
            "top1": evaluate(student, test, progress=False).top1,
        }
        if check is not None:
            rec.update(quality(teacher, student, check))
        students = Path(args.out) / "students"
        students.mkdir(exist_ok=True)
        torch.save(student.state_dict(), students / f"{config_key(key_cfg)}.pt")
        rec["student_file"] = f"students/{config_key(key_cfg)}.pt"
        hist = getattr(student, "recovery_history", [])
        rec["prep"] = {k: v for k, v in (hist[0] if hist else {}).items() if k.endswith("_s")}
        return rec

    key = f"{spec}:{config_key(key_cfg)}"
    return cell(results, path, key, measure, spec=spec, config=key_cfg)


def prep_cell(
    teacher: Any, amount: float, data: SyntheticImages, what: str, test: Any
) -> dict[str, Any]:
    """Top-1 of the pruned student after a repair alone (``none``, ``recal``, ``recon``)."""
    student = prune(teacher, amount)
    images = data.get_batch(torch.arange(len(data)))[0]
    t0 = time.perf_counter()
    if what == "recon":
        reconstruct(teacher, student, images[:RECONSTRUCT_IMAGES])
    elif what == "recal":
        recalibrate_bn(student, images)
    top1 = evaluate(student, test, progress=False).top1
    return {"top1": top1, "seconds": time.perf_counter() - t0}


def rescore(results: dict[str, Any], check: SyntheticImages, out: Path) -> None:
    """Check-set quality for cells measured before the check set existed."""
    for rec in results["cells"].values():
        if "check_agreement" in rec or "student_file" not in rec:
            continue
        arch, amount = rec["config"]["arch"], rec["config"]["amount"]
        teacher = teacher_for(arch)
        student = prune(teacher, amount)
        student.load_state_dict(torch.load(out / rec["student_file"], weights_only=True))
        rec.update(quality(teacher, student, check))


def _describe(recipe: str) -> str:
    if recipe.startswith("prep:"):
        return {
            "none": "pruned, nothing else",
            "recal": "BN recalibration only",
            "recon": "layer-wise reconstruction only",
        }[recipe[5:]]
    cfg, old = RECIPES[recipe], OLD
    if recipe == "old":
        return "logit KD, 5 % held out (the recipe before)"
    parts = [
        f"{f}={getattr(cfg, f)}"
        for f in (
            "reconstruct",
            "recalibrate",
            "feature_weight",
            "feature_layers",
            "mix",
            "gradual",
            "bn_mode",
            "lr",
            "temperature",
        )
        if getattr(cfg, f) != getattr(old, f)
        and not (f == "feature_layers" and cfg.feature_weight == 0)
    ]
    return ", ".join(parts) or "logit KD on every image"


def to_markdown(results: dict[str, Any], specs: list[str]) -> str:
    cells = {c["spec"]: c for c in results["cells"].values()}
    lines = [
        "| cell | recipe | top-1 | recovery s | check agreement % | check KL |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        c = cells.get(spec)
        if c is None:
            continue
        agree, kl = c.get("check_agreement"), c.get("check_kl")
        lines.append(
            f"| {spec} | {_describe(parse_cell(spec)[2])} | {c['top1']:.2f} | "
            f"{c['seconds']:.0f} | {'' if agree is None else f'{agree:.1f}'} | "
            f"{'' if kl is None else f'{kl:.3f}'} |"
        )
    m = next(iter(results["cells"].values()), {})
    synth = {k: round(v) for k, v in (results.get("synthesis_seconds") or {}).items() if v}
    lines += [
        "",
        "Cells are `arch@sparsity/recipe/source`: source `s1024` is 1,024 DeepInversion images "
        "(200 iterations per batch of 256), `s4096` 4,096 images at 50 iterations (the same "
        "synthesis cost), `noise:`/`real:` as many Gaussian-noise / real training images; "
        "`xF` scales the 60 distillation epochs by F. Top-1 (%) on the 10,000 test images of "
        "CIFAR-10 (JPEG q75 copy); check agreement/KL: on 256 synthetic images seeded "
        "independently of every transfer set (the data-free quality signal). "
        f"Machine: {m.get('machine')}, {m.get('threads')} thread per cell, torch "
        f"{m.get('torch')}; cells ran two or three side by side on the 2-core machine while "
        "other jobs ran, so their seconds compare with each other only roughly. Synthesis "
        f"seconds of the sets, measured the same way: {synth}. Generated by "
        "`benchmarks/recipe_ablation.py` from its results files.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=[], help="NAME=DIR synthetic sets")
    p.add_argument("--check", default=None, help="independent synthetic check set (DIR)")
    p.add_argument("--cells", nargs="*", default=[], help="arch@amount/recipe/source[xE]")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/abl")
    p.add_argument("--worker", default="0", help="results-WORKER.json: parallel runs each own one")
    p.add_argument("--report", action="store_true", help="only tabulate measured cells")
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/results.md's block")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {k: SyntheticImages.load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    check = SyntheticImages.load(args.check) if args.check else None
    test = load_split(args.data, "test")
    if args.tiny:
        test = type(test)(test.images[:200], test.labels[:200], test.classes, test.mean, test.std)
    print(json.dumps({"settings": vars(args), **machine()}), flush=True)
    path = out / f"results-{args.worker}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    results["synthesis_seconds"] = {k: synthesis_seconds(v) for k, v in sets.items()}
    for spec in [] if args.report else args.cells:
        run_cell(spec, args, sets, test, check, results, path)
    for other in sorted(out.glob("results-*.json")):  # cells other workers measured
        theirs = json.loads(other.read_text())
        results["cells"] = {**theirs["cells"], **results["cells"]}
        for name, sec in (theirs.get("synthesis_seconds") or {}).items():
            results["synthesis_seconds"].setdefault(name, sec)
    if check is not None:  # cells measured before the check set existed, by any worker
        rescore(results, check, out)
        write_json_atomic(results, path)
    md = to_markdown(results, args.cells)
    (out / "ablation.md").write_text(md)
    if args.update_docs:
        update_block(ROOT / "docs" / "results.md", "ablation", md)
    print(md)
    return results


if __name__ == "__main__":
    main()
