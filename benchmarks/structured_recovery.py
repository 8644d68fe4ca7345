"""Structured students recovered at budgets that fit them: the speed-accuracy frontier.

Every cell prunes a teacher into a structured student (``--students``), recovers it with one
technique (``--techniques``) for a multiple of the quick preset's steps (``--budgets``) on
one transfer set (``--sources``), and measures JPEG CIFAR-10 test top-1:

- students: ``ARCH:channel:S`` (``ChannelConfig(speedup=S)``: S times fewer MACs, channels
  removed) or ``ARCH:block:S`` (``BlockConfig(speedup=S)``: whole residual blocks dropped);
- techniques: ``default`` (the library's recipe: logit + block-feature KD, CutMix),
  ``mir`` (block features weighted up with depth, so the last map before pooling counts
  most, and the classifier kept frozen: MiR / DFBF), ``local`` (the first quarter of the
  steps block-local: each student block fitted to its teacher block on the teacher's
  inputs, then end-to-end), ``mir+local``;
- sources: ``deepinversion`` (the quick preset's 2,048 x 50 set of the teacher, or ``--n``
  images x ``--iterations``), ``real`` (as many real training images: the data gap at the
  same steps), ``real50k`` (all 50,000 training images: the ceiling).

Each student's latency is measured once, teacher and student interleaved (median of
per-round ratios), in torch eager and onnxruntime, batch 1 and 64, one thread, CPU time
(a loaded machine does not inflate it). Cells are cached in ``--out``, so a rerun resumes.
``--render`` writes the frontier block of docs/channel-pruning.md from results files.

    python benchmarks/structured_recovery.py --students resnet20:channel:2 --budgets 1 4 \\
        --techniques default mir --sources deepinversion real --out runs/structured/a.json
    python benchmarks/structured_recovery.py --render benchmarks/results/cpu/structured-*.json \\
        --update-docs
    python benchmarks/structured_recovery.py --tiny --out /tmp/s.json    # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from _common import DATA, ROOT, cell, config_key, machine, stem, table_teacher, update_block
from channel_pruning import _load_run_module, latency
from torch import nn

from recoverprune import (
    PRESETS,
    BlockConfig,
    ChannelConfig,
    DistillConfig,
    InversionConfig,
    evaluate,
    prune,
    recover,
    synthesize,
)
from recoverprune.core.io import fingerprint, write_json_atomic
from recoverprune.data import load_split
from recoverprune.pruning.masks import copy_model
from recoverprune.pruning.measure import count_macs

#: technique -> the DistillConfig fields it changes
TECHNIQUES: dict[str, dict[str, Any]] = {
    "default": {},
    "mir": {"feature_depth_weighted": True, "freeze_classifier": True},
    "local": {"local_fraction": 0.25},
    "mir+local": {
        "feature_depth_weighted": True,
        "freeze_classifier": True,
        "local_fraction": 0.25,
    },
}
SOURCES = ("deepinversion", "real", "real50k")
MARKER = "structured-frontier"
PAGE = ROOT / "docs" / "channel-pruning.md"


def make_student(teacher: nn.Module, kind: str, speedup: float) -> nn.Module:
    """``teacher`` pruned to ``speedup`` times fewer MACs by channels or by blocks."""
    if kind == "channel":
        return prune(teacher, ChannelConfig(speedup=speedup))
    if kind == "block":
        return prune(teacher, BlockConfig(speedup=speedup))
    raise SystemExit(f"a student is ARCH:channel:S or ARCH:block:S, got kind {kind!r}")


def _latency(teacher: nn.Module, student: nn.Module, repeats: int) -> list[dict[str, Any]]:
    """Teacher/student latency: eager and onnxruntime, batch 1 and 64, one thread, CPU time."""
    threads = torch.get_num_threads()
    try:
        opts = argparse.Namespace(threads=[1], batches=[1, 64], repeats=repeats, clock="cpu")
        return latency(teacher.eval(), student.eval(), opts)
    finally:
        torch.set_num_threads(threads)


class Bench:
    """The cells of one results file: students, their latency, and recovered top-1."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.path = args, Path(args.out)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.preset = PRESETS["tiny" if args.tiny else "quick"]
        self.n = args.n or self.preset.n  # the transfer set's size and iterations
        self.iterations = args.iterations or self.preset.iterations
        self.test = load_split(args.data, "test")
        if args.tiny:
            t = self.test
            self.test = type(t)(t.images[::50], t.labels[::50], t.classes, t.mean, t.std)
        self._train: Any = None
        self.real_set = _load_run_module().real_set

    @property
    def train(self) -> Any:
        if self._train is None:
            self._train = load_split(self.args.data, "train")
        return self._train

    def top1(self, model: nn.Module) -> float:
        return evaluate(model, self.test, progress=False).top1

    def deepinversion(self, arch: str, teacher: nn.Module) -> Any:
        n, iterations, seed = self.n, self.iterations, self.args.seed
        out = ROOT / "runs" / "structured" / "synthetic" / f"{stem(arch)}-{n}x{iterations}-s{seed}"
        if self.args.tiny:
            out = self.path.parent / "synthetic"
        return synthesize(
            teacher,
            n,
            config=InversionConfig(iterations=iterations),
            batch_size=self.preset.batch_size,
            out_dir=out,
            seed=seed,
            progress=False,
        )

    def source(self, name: str, arch: str, teacher: nn.Module) -> Any:
        if name == "deepinversion":
            return self.deepinversion(arch, teacher)
        if name == "real":
            return self.real_set(self.n, self.train, self.args.seed)
        return self.real_set(len(self.train), self.train, self.args.seed)

    def student_row(self, spec: str) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
        arch, kind, s = spec.split(":")
        found = table_teacher(arch)
        if found is None:
            raise SystemExit(f"no JPEG teacher for {arch}: run benchmarks/train_teacher.py first")
        teacher, teacher_name = found
        teacher.eval()
        student = make_student(teacher, kind, float(s)).eval()
        x = torch.zeros(1, *teacher.pretrained_cfg["input_size"])
        key = f"{spec}/{fingerprint(teacher)[:12]}/{fingerprint(student)[:12]}"
        students = self.results.setdefault("students", {})
        if key not in students:  # measured once per student
            students[key] = {
                "spec": spec,
                "arch": arch,
                "kind": kind,
                "teacher_name": teacher_name,
                "teacher_top1": self.top1(teacher),
                "pruned_top1": self.top1(student),
                "macs": [count_macs(teacher, x), count_macs(student, x)],
                "latency": _latency(teacher, student, self.args.repeats)
                if self.args.latency
                else [],
                **machine(),
            }
            self._write()
        return teacher, student, {**students[key], "key": key}

    def _write(self) -> None:
        write_json_atomic(self.results, self.path)

    def recovered(
        self,
        spec: str,
        teacher: nn.Module,
        student: nn.Module,
        row: dict[str, Any],
        technique: str,
        budget: float,
        source: str,
    ) -> None:
        base = PRESETS["quick"].distill or DistillConfig()
        n = len(self.train) if source == "real50k" else self.n
        per_epoch = math.ceil(n / base.batch_size)
        quick_steps = self.preset.epochs * math.ceil(self.preset.n / base.batch_size)
        epochs = max(1, round(budget * quick_steps / per_epoch))  # budget x the preset's steps
        cfg = replace(base, epochs=epochs, **TECHNIQUES[technique])
        steps = epochs * per_epoch
        config = {
            "student": row["key"],
            "technique": technique,
            "source": source,
            "n": n,
            "iterations": self.iterations,
            "seed": self.args.seed,
            "distill": asdict(cfg),
        }
        key = f"{spec}/{technique}/{source}/x{budget:g}/{config_key(config)}"

        def job() -> float:
            data = self.source(source, row["arch"], teacher)
            rec = recover(
                teacher, copy_model(student), data, config=cfg, seed=self.args.seed, progress=False
            )
            return self.top1(rec)

        cell(
            self.results,
            self.path,
            key,
            job,
            spec=spec,
            technique=technique,
            source=source,
            budget=budget,
            steps=steps,
            config=config,
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    for spec in args.students:
        teacher, student, row = bench.student_row(spec)
        for budget in args.budgets:
            for technique in args.techniques:
                for source in args.sources:
                    bench.recovered(spec, teacher, student, row, technique, budget, source)
    bench.results["settings"] = {"command": " ".join(sys.argv), **machine()}
    bench._write()
    print(render([args.out]))
    return bench.results


# -- the frontier table ---------------------------------------------------------------------


def _ratio(row: dict[str, Any], backend: str) -> str:
    got = [r for r in row["latency"] if r["backend"] == backend and r["batch"] == 64]
    return f"{got[0]['ratio']:.2f}x" if got else "-"


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "\u2212")  # a minus sign, as the docs print it


_NAMES = {
    "default": "default recipe",
    "mir": "MiR",
    "local": "block-local first",
    "mir+local": "MiR + block-local first",
}


def render(paths: list[str]) -> str:
    """The frontier block: one row per student, technique and budget (DeepInversion), with
    the real-image control of the same technique and steps beside it."""
    students: dict[str, Any] = {}
    cells: dict[str, Any] = {}
    settings = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        students.update(data.get("students", {}))
        cells.update(data.get("cells", {}))
        settings.append(data.get("settings", {}))
    lines = [
        "| model | student | steps | eager b64 | onnxruntime b64 | top-1 | vs teacher "
        "| real images, same steps |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_spec = {s["spec"]: s for s in students.values()}

    def find(di: dict[str, Any], source: str) -> dict[str, Any] | None:
        """The cell of ``source`` with ``di``'s student, technique, budget and image count."""
        same = ("spec", "technique", "budget")
        got = [
            c
            for c in cells.values()
            if c["source"] == source
            and all(c[k] == di[k] for k in same)
            and c["config"]["n"] == di["config"]["n"]
        ]
        return got[0] if got else None

    def images(c: dict[str, Any]) -> str:  # the transfer set, where not the quick preset's
        n, iterations = c["config"]["n"], c["config"]["iterations"]
        quick = PRESETS["quick"]
        return "" if (n, iterations) == (quick.n, quick.iterations) else f", {n:,} x {iterations}"

    di = sorted(
        (c for c in cells.values() if c["source"] == "deepinversion"),
        key=lambda c: (
            c["spec"], c["budget"], c["config"]["n"], list(TECHNIQUES).index(c["technique"])
        ),
    )
    for c in di:
        row = by_spec[c["spec"]]
        macs = row["macs"][0] / row["macs"][1]
        kind = "channels" if row["kind"] == "channel" else "blocks dropped"
        real = find(c, "real")
        real_top1 = f"{real['top1']:.2f}" if real else "-"
        lines.append(
            f"| {row['arch']} | {kind}, {macs:.2f}x MACs, {_NAMES[c['technique']]}{images(c)} "
            f"| {c['steps']:,} ({c['budget']:g}x) | {_ratio(row, 'eager')} "
            f"| {_ratio(row, 'onnxruntime')} | {c['top1']:.2f} "
            f"| {_signed(c['top1'] - row['teacher_top1'])} "
            f"| {real_top1} |"
        )
    for c in sorted(
        (c for c in cells.values() if c["source"] == "real50k"),
        key=lambda c: (c["spec"], c["budget"]),
    ):
        row = by_spec[c["spec"]]
        lines.append(
            f"| {row['arch']} | ceiling: all 50,000 real images, {_NAMES[c['technique']]} "
            f"| {c['steps']:,} ({c['budget']:g}x) | {_ratio(row, 'eager')} "
            f"| {_ratio(row, 'onnxruntime')} | {c['top1']:.2f} "
            f"| {_signed(c['top1'] - row['teacher_top1'])} | |"
        )
    teachers = sorted(
        {f"{s['arch']} {s['teacher_top1']:.2f} ({s['teacher_name']})" for s in students.values()}
    )
    before = sorted({f"{s['spec']} {s['pruned_top1']:.2f}" for s in students.values()})
    m = next((s for s in settings if s), {})
    lines += [
        "",
        f"Teachers: {'; '.join(teachers)}. Students before recovery: {'; '.join(before)}. "
        "Top-1 (%) on all 10,000 JPEG CIFAR-10 test images. "
        "Steps of 128 images; 1x is the quick preset's 896 steps on its 2,048 DeepInversion "
        "images (50 iterations). Latency: teacher time / student time, batch 64, one thread, "
        "CPU time, calls interleaved (median of per-round ratios). Machine: "
        f"{m.get('machine', '?')} ({m.get('processor', '?')}), recovery at {m.get('threads', '?')} "
        f"thread(s), torch {m.get('torch', '?')}. Generated from "
        f"{', '.join(f'`{Path(p).as_posix()}`' for p in paths)} by `python "
        "benchmarks/structured_recovery.py --render ... --update-docs`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--students", nargs="+", default=["resnet20:channel:2"])
    p.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        default=[1.0],
        help="multiples of the quick preset's distillation steps",
    )
    p.add_argument("--techniques", nargs="+", default=["default"], choices=list(TECHNIQUES))
    p.add_argument("--sources", nargs="+", default=["deepinversion", "real"], choices=SOURCES)
    p.add_argument("--n", type=int, default=None,
                   help="images of the transfer set (default: the quick preset's 2,048)")
    p.add_argument("--iterations", type=int, default=None,
                   help="DeepInversion iterations (default: the quick preset's 50)")
    p.add_argument("--repeats", type=int, default=30, help="latency rounds (median)")
    p.add_argument("--no-latency", dest="latency", action="store_false")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "structured" / "results.json"))
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--render", nargs="+", metavar="RESULTS_JSON")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help=f"with --render: write the {MARKER} block of docs/channel-pruning.md",
    )
    args = p.parse_args(argv)
    if args.render:
        md = render(args.render)
        print(md)
        if args.update_docs:
            update_block(PAGE, MARKER, md)
        return {"markdown": md}
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data} is absent: the real test images are needed to evaluate")
    return run(args)


if __name__ == "__main__":
    main()
