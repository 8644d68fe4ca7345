"""INT8 calibrated on the teacher's own synthetic images: how much faster, at what cost.

Per teacher (``--models``), every row is an onnxruntime model measured on the JPEG CIFAR-10
test split, side by side with the fp32 teacher:

- ``fp32``: the teacher, exported to ONNX, in onnxruntime;
- ``int8, deepinversion``: :func:`recoverprune.quantize` calibrated on the first 256 of
  ``--n`` DeepInversion images (``--iterations`` per batch) — no real data;
- ``int8, noise``: calibrated on 256 Gaussian-noise images (what tools fall back to);
- ``int8, real``: calibrated on 256 real training images (the upper bound);
- ``int8, equalized``: cross-layer equalization and bias correction first (DeepInversion);
- ``int8, distilled``: quantization-aware distillation on all ``--n`` DeepInversion images
  for ``--qad-steps`` steps, from the fp32 teacher;
- MobileNetV2 only, ``int8 per-tensor, ...``: DeepInversion and equalized with one weight
  scale per layer, where depthwise layers are known to break plain calibration (DFQ's case);
- ``--runs DIR ...``: students made by ``recoverprune compress --quantize int8`` (their
  ``student.pt`` in fp32 and their ``student.int8.onnx``).

Top-1 cells are cached in ``results.json`` by configuration; ``--latency`` then measures
every file of a model interleaved with its fp32 teacher (batch 1 and 64, one thread and all
threads), recording the load average — run it with nothing else on the machine:

    OMP_NUM_THREADS=1 python benchmarks/int8.py --models resnet20 resnet32 mobilenet_v2 \\
        --runs resnet20:runs/int8/r20-75
    python benchmarks/int8.py --latency          # alone: the latency ratios
    python benchmarks/int8.py --render benchmarks/results/cpu/int8.json --update-docs
    python benchmarks/int8.py --tiny --out /tmp/i/r.json --work /tmp/i   # seconds (tests)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _common import DATA, ROOT, cell, config_key, machine, shared_teacher, update_block
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "cifar10"))

from run import noise_set, real_set

from recoverprune import InputSpec, QuantConfig, evaluate, quantize, synthesize
from recoverprune.core.io import read_json, write_json_atomic
from recoverprune.data import load_split
from recoverprune.evaluation.latency import cpu_features, ort_latency
from recoverprune.models import default_teacher, load_model

MODELS = ("resnet20", "resnet32", "mobilenet_v2")
PAGES = ("docs/quantization.md", "README.md")
CALIBRATION = 256


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20"], choices=MODELS)
    p.add_argument(
        "--runs", nargs="*", default=[], help="ARCH:DIR of compress --quantize int8 runs"
    )
    p.add_argument("--n", type=int, default=1024, help="DeepInversion images per teacher")
    p.add_argument("--iterations", type=int, default=50, help="DeepInversion steps per batch")
    p.add_argument("--qad-steps", type=int, default=300, help="distillation steps of 64")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "int8", help="sets and files")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu/int8.json")
    p.add_argument("--latency", action="store_true", help="measure the latency cells (alone)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--render", type=Path, default=None, help="print the docs block of a file")
    p.add_argument("--update-docs", action="store_true", help="with --render: write the pages")
    return p.parse_args(argv)


def teacher_of(arch: str) -> tuple[nn.Module, str]:
    """The teacher of a row: the embedded ResNet-20, ../shared's ResNet-32, or the
    MobileNetV2 that ``train_teacher.py`` writes to ``runs/teachers``."""
    if arch == "resnet20":
        return default_teacher().eval(), "embedded default teacher"
    path = shared_teacher(arch) if arch == "resnet32" else ROOT / f"runs/teachers/{arch}-jpeg.pt"
    if not path.is_file():
        raise SystemExit(f"no {arch} teacher at {path} (see benchmarks/train_teacher.py)")
    return load_model(arch, path).eval(), path.name


def _calibrations(arch: str, teacher: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """The calibration sets of a teacher: its DeepInversion images (made once, resumable),
    Gaussian noise and real training images."""
    spec = InputSpec.of(teacher)
    made = synthesize(
        teacher,
        args.n,
        iterations=args.iterations,
        out_dir=args.work / f"di-{arch}",
        seed=0,
        progress=False,
    )
    train = load_split(args.data, "train", mean=spec.mean, std=spec.std)
    return {
        "deepinversion": made,
        "noise": noise_set(CALIBRATION, spec, 0),
        "real": real_set(CALIBRATION, train, 0),
    }


def _variants(arch: str, args: argparse.Namespace) -> dict[str, tuple[str, QuantConfig]]:
    """Row name -> (calibration set, QuantConfig). MobileNetV2 adds per-tensor weights, the
    setting where depthwise layers are known to break plain calibration (DFQ's case)."""
    dfq = {"equalize": True, "bias_correction": True}
    rows = {
        "int8, deepinversion": ("deepinversion", QuantConfig()),
        "int8, noise": ("noise", QuantConfig()),
        "int8, real": ("real", QuantConfig()),
        "int8, equalized": ("deepinversion", QuantConfig(**dfq)),
        "int8, distilled": ("deepinversion", QuantConfig(distill_steps=args.qad_steps)),
    }
    if arch == "mobilenet_v2":
        tensor = {"per_channel": False}
        rows |= {
            "int8 per-tensor, deepinversion": ("deepinversion", QuantConfig(**tensor)),
            "int8 per-tensor, equalized": ("deepinversion", QuantConfig(**tensor, **dfq)),
        }
    return rows


def _test_split(args: argparse.Namespace, spec: InputSpec) -> Any:
    """The JPEG test split (its first 256 images with ``--tiny``)."""
    test = load_split(args.data, "test", mean=spec.mean, std=spec.std)
    if args.tiny:
        test = type(test)(test.images[:256], test.labels[:256], test.classes, test.mean, test.std)
    return test


def _int8_cell(
    teacher: nn.Module, data: Any, cfg: QuantConfig, path: Path, test: Any
) -> dict[str, Any]:
    q = quantize(teacher, data, config=cfg, teacher=teacher, path=path)
    return {"top1": evaluate(q, test, progress=False).top1, "bytes": q.bytes, "file": str(path)}


def measure_model(arch: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The top-1 cells of one teacher's rows (cached)."""
    teacher, name = teacher_of(arch)
    spec = InputSpec.of(teacher)
    test = _test_split(args, spec)
    sets = _calibrations(arch, teacher, args)

    def fp32() -> dict[str, Any]:
        return {"top1": evaluate(teacher, test, progress=False).top1}

    base = {"model": arch, "teacher": name, "n": args.n, "iterations": args.iterations}
    cell(results, args.out, f"{arch}:fp32", fp32, **base, row="fp32", test_images=len(test))
    for row, (source, cfg) in _variants(arch, args).items():
        record = {**base, "row": row, "calibration": source, "config": asdict(cfg)}
        path = args.work / "files" / f"{arch}-{config_key(record)}.int8.onnx"
        measure = lambda s=sets[source], c=cfg, p=path: _int8_cell(teacher, s, c, p, test)  # noqa: E731
        cell(results, args.out, f"{arch}:{config_key(record)}", measure, **record)


def measure_run(arch_run: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The fp32 and INT8 cells of a ``compress --quantize int8`` directory (``ARCH:DIR``),
    cached by the INT8 file's digest (a remade run is measured again)."""
    arch, run = arch_run.split(":", 1)[0], Path(arch_run.split(":", 1)[1])
    report = read_json(run / "report.json")
    teacher, _ = teacher_of(arch)
    student = load_model(teacher, run / "student.pt").eval()
    test = _test_split(args, InputSpec.of(teacher))
    label = _run_label(report)
    base = {"model": arch, "run": str(run), "int8_file": str(run / "student.int8.onnx")}

    def both() -> dict[str, Any]:
        from recoverprune.pipeline.quantize import QuantizedModel

        q = QuantizedModel(str(run / "student.int8.onnx"), InputSpec.of(teacher))
        return {
            "top1": evaluate(student, test, progress=False).top1,
            "int8_top1": evaluate(q, test, progress=False).top1,
            "bytes": q.bytes,
            "file": q.path,
        }

    digest = hashlib.sha256((run / "student.int8.onnx").read_bytes()).hexdigest()[:12]
    cell(results, args.out, f"{arch}:run:{digest}", both, **base, row=label)


def _run_label(report: dict[str, Any]) -> str:
    structure = report.get("structure", "unstructured")
    if structure == "block":
        return f"{len(report['dropped_blocks'])} blocks dropped + int8"
    if structure == "channel":
        return f"channels, {report['channel']['speedup']:g}x fewer MACs + int8"
    return f"{report['amount']:.0%} {structure} + int8"


def measure_latency(arch: str, results: dict[str, Any], out: Path) -> None:
    """Every file of ``arch`` interleaved with its fp32 teacher, batch 1 and 64, at one
    thread and at all threads (replaced on every run: latency is never cached)."""
    teacher, _ = teacher_of(arch)
    files = {
        c["row"]: c["file"] for c in results["cells"].values() if c["model"] == arch and "file" in c
    }
    shape = tuple(InputSpec.of(teacher).shape)
    loads = [os.getloadavg()[0]]
    per_threads = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        per_threads[str(threads)] = ort_latency(
            {"fp32": teacher, **files}, shape, batches=(1, 64), threads=threads, min_seconds=10
        )
        loads.append(os.getloadavg()[0])
    fp32_bytes, fp32_gzip = _fp32_bytes(teacher, shape)
    for c in results["cells"].values():
        if c["model"] == arch and "file" in c:
            c["gzip_bytes"] = _gzip_bytes(Path(c["file"]))
    results.setdefault("latency", {})[arch] = {
        **machine(),
        "threads": per_threads,
        "load_average": loads,
        "fp32_bytes": fp32_bytes,
        "fp32_gzip_bytes": fp32_gzip,
        "cpu_features": cpu_features(),
    }
    write_json_atomic(results, out)


def _fp32_bytes(teacher: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Bytes of the teacher's fp32 ONNX file, raw and gzip-compressed."""
    from recoverprune import export

    with tempfile.TemporaryDirectory() as tmp:
        path = export(teacher, str(Path(tmp) / "fp32.onnx"), example=torch.randn(1, *shape))
        return Path(path).stat().st_size, _gzip_bytes(Path(path))


def _gzip_bytes(path: Path) -> int:
    """Bytes of ``path`` gzip-compressed: what zeros of unstructured pruning save in transit."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


# -- rendering ------------------------------------------------------------------------------


def render(path: Path) -> str:
    """The docs block of a results file: one row per model and variant."""
    results = read_json(path)
    lines = [
        "| model | variant | top-1 | vs fp32 | b1, 1 thread | b64, 1 thread "
        "| b1, all threads | b64, all threads | bytes | gzip bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in MODELS:
        cells = [c for c in results["cells"].values() if c["model"] == arch]
        if not cells:
            continue
        lat = results.get("latency", {}).get(arch)
        if lat is None:
            raise SystemExit(f"{path}: no latency measured for {arch}; run --latency")
        ref = next(c for c in cells if c["row"] == "fp32")
        for c in sorted(cells, key=_order):
            lines += _rows(c, ref, lat)
    footer = "\n\n".join(x for x in (_remedies(results), _footer(results, path)) if x)
    return "\n".join(lines) + "\n\n" + footer + "\n"


def _order(c: dict[str, Any]) -> tuple[int, str]:
    """fp32 first, then the INT8 variants in the order they are defined, then the runs."""
    rows = ["fp32", "int8, deepinversion", "int8, noise", "int8, real", "int8, equalized"]
    rows += ["int8, distilled", "int8 per-tensor, deepinversion", "int8 per-tensor, equalized"]
    return (rows.index(c["row"]) if c["row"] in rows else len(rows), c["row"])


def _remedies(results: dict[str, Any]) -> str:
    """One generated sentence: what equalization and distillation changed against plain
    calibration on the same DeepInversion images, over every model measured."""
    deltas: dict[str, list[float]] = {"equalized": [], "distilled": []}
    cells = list(results["cells"].values())
    for c in cells:
        prefix, _, remedy = c["row"].rpartition(", ")
        plain = [
            p for p in cells if p["model"] == c["model"] and p["row"] == f"{prefix}, deepinversion"
        ]
        if remedy in deltas and plain:
            deltas[remedy].append(c["top1"] - plain[0]["top1"])
    parts = [f"{name} {min(d):+.2f} to {max(d):+.2f}" for name, d in deltas.items() if d]
    if not parts:
        return ""
    return (
        "Against plain calibration on the same DeepInversion images, top-1 changed by: "
        + "; ".join(parts)
        + " points."
    )


def _rows(c: dict[str, Any], ref: dict[str, Any], lat: dict[str, Any]) -> list[str]:
    arch, row = c["model"], c["row"]
    if "int8_top1" in c:  # a compress run: its fp32 student, then its INT8 file
        sizes = (c["bytes"], c["gzip_bytes"])
        return [
            _line(arch, row.replace(" + int8", ", fp32 student"), c["top1"], ref, lat, None, None),
            _line(arch, row, c["int8_top1"], ref, lat, row, sizes),
        ]
    fp32 = row == "fp32"
    sizes = (lat["fp32_bytes"], lat["fp32_gzip_bytes"]) if fp32 else (c["bytes"], c["gzip_bytes"])
    return [_line(arch, row, c["top1"], ref, lat, row, sizes)]


def _line(
    arch: str,
    row: str,
    top1: float,
    ref: dict[str, Any],
    lat: dict[str, Any],
    key: str | None,
    sizes: tuple[int, int] | None,
) -> str:
    ratios = []
    for threads in sorted(lat["threads"], key=int):
        for batch in ("1", "64"):
            ms = lat["threads"][threads]["batches"][batch]
            ratios.append("-" if key is None else f"{ms['fp32'] / ms[key]:.2f}x")
    size_text = "- | -" if sizes is None else f"{sizes[0]:,} | {sizes[1]:,}"
    return (
        f"| {arch} | {row} | {top1:.2f} | {top1 - ref['top1']:+.2f} | "
        + " | ".join(ratios)
        + f" | {size_text} |"
    )


def _footer(results: dict[str, Any], path: Path) -> str:
    lat = next(iter(results["latency"].values()))
    one = lat["threads"]["1"]
    loads = [x for v in results["latency"].values() for x in v["load_average"]]
    rel = os.path.relpath(path.resolve(), ROOT)
    return (
        "Latency: the fp32 teacher's time divided by the row's, both in "
        f"{one['runtime']} on the CPU, calls interleaved; all threads = {lat['cpus']}. CPU: "
        f"{lat['processor']} ({', '.join(lat['cpu_features'])}); 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} while measuring (its own threads included); "
        "onnxruntime's spin-waiting off at more than one thread. Top-1 on the "
        f"{_test_images(results):,} JPEG CIFAR-10 test "
        f"images; calibration on {CALIBRATION} images; torch {lat['torch']}. Generated by "
        f"`python benchmarks/int8.py --render {rel}`."
    )


def _test_images(results: dict[str, Any]) -> int:
    return next(c["test_images"] for c in results["cells"].values() if c["row"] == "fp32")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.render:
        md = render(args.render)
        print(md)
        for page in PAGES if args.update_docs else ():
            update_block(ROOT / page, "int8", md)
        return {"markdown": md}
    results = read_json(args.out) if args.out.is_file() else {"cells": {}}
    if args.latency:
        for arch in sorted({c["model"] for c in results["cells"].values()}):
            measure_latency(arch, results, args.out)
        return results
    if args.tiny:
        args.n, args.iterations, args.qad_steps = 32, 2, 2
    if not args.data.exists():
        raise SystemExit(f"the JPEG CIFAR-10 archive is not at {args.data}; pass --data")
    for arch in args.models:
        measure_model(arch, args, results)
    for run in args.runs:
        measure_run(run, args, results)
    results["settings"] = {"command": " ".join(sys.argv), **machine()}
    write_json_atomic(results, args.out)
    print(json.dumps({k: c["top1"] for k, c in results["cells"].items()}, indent=1))
    return results


if __name__ == "__main__":
    main()
