"""Channel pruning: parameters, MACs and measured CPU latency of teacher vs pruned student.

For each architecture and MAC budget (``--speedups``, or fixed ``--amounts``) it prunes the
teacher with ``prune(teacher, ChannelConfig(...))`` and measures, side by side in one process
(teacher and student interleaved, median of ``--repeats`` runs, fp32):

- parameters and MACs (counted with forward hooks),
- latency at every ``--batches`` x ``--threads``, in torch eager and (when onnxruntime is
  installed) onnxruntime, and the teacher/student latency ratio.

With ``--recover`` it adds JPEG CIFAR-10 test top-1 columns: teacher / pruned without
recovery / recovered by KD on DeepInversion images / on Gaussian noise / on the same
number of real training images (the budget of ``--preset``), and unstructured rows at the
same sparsity for the top-1-against-latency plot (``--plot``, needs matplotlib).

    python benchmarks/channel_pruning.py                          # latency table, ResNet-20/32
    python benchmarks/channel_pruning.py --recover --plot         # + top-1 (about 30 CPU-min/row)
    python benchmarks/channel_pruning.py --tiny                   # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
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
    machine,
    shared_teacher,
    table_teacher,
    update_block,
)
from torch import nn

from recoverprune import (
    PRESETS,
    Accel,
    BlockConfig,
    ChannelConfig,
    DistillConfig,
    evaluate,
    export,
    prune,
    recover,
)
from recoverprune.core.io import fingerprint, write_json_atomic
from recoverprune.experimental.latency import LatencyConfig
from recoverprune.models import create_model, load_model
from recoverprune.pruning.masks import copy_model
from recoverprune.pruning.measure import count_macs


def teacher_for(arch: str) -> tuple[nn.Module, str]:
    """The shared pretrained teacher of ``arch`` if present, else a random-init one."""
    path = shared_teacher(arch)
    if path.is_file():
        return load_model(arch, path), path.name
    return create_model(arch).eval(), "random init"


def _ort_session(model: nn.Module, path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(export(model, str(path))), opts)


def side_by_side(
    runners: dict[str, Any], x: Any, repeats: int, clock: Any = time.perf_counter
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of each runner, and the median over rounds of the first
    runner's time divided by each one's (calls interleaved, so load hits all alike).

    ``clock=time.process_time`` measures CPU time instead of wall time: on one thread, the
    latency the call would have on an idle core, unaffected by time spent descheduled."""
    for run in runners.values():
        run(x)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(repeats):
        order = list(runners) if i % 2 == 0 else list(reversed(runners))
        for name in order:
            t0 = clock()
            runners[name](x)
            times[name].append(clock() - t0)
    first = next(iter(runners))
    ratios = {
        k: statistics.median(a / b for a, b in zip(times[first], v, strict=True))
        for k, v in times.items()
    }
    return {k: statistics.median(v) for k, v in times.items()}, ratios


def latency(
    teacher: nn.Module, student: nn.Module, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Teacher and student latency at every batch size x threads x backend."""
    rows = []
    tmp = Path(tempfile.mkdtemp())
    shape = teacher.pretrained_cfg["input_size"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        backends = {"eager": {k: m for k, m in (("teacher", teacher), ("student", student))}}
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            backends["onnxruntime"] = {
                k: _ort_session(m, tmp / f"{k}.onnx", threads)
                for k, m in (("teacher", teacher), ("student", student))
            }
        for batch in args.batches:
            x = torch.randn(batch, *shape)
            for backend, models in backends.items():
                if backend == "eager":
                    runners = {k: m for k, m in models.items()}
                    arg: Any = x
                else:
                    runners = {
                        k: (lambda a, s=s: s.run(None, {"input": a})) for k, s in models.items()
                    }
                    arg = x.numpy()
                with torch.inference_mode():
                    clock = time.process_time if args.clock == "cpu" else time.perf_counter
                    med, ratio = side_by_side(runners, arg, args.repeats, clock)
                rows.append(
                    {
                        "batch": batch,
                        "threads": threads,
                        "backend": backend,
                        "clock": args.clock,
                        "teacher_ms": med["teacher"] * 1e3,
                        "student_ms": med["student"] * 1e3,
                        "ratio": ratio["student"],  # median of per-round ratios
                    }
                )
    return rows


def _load_run_module() -> Any:
    """``benchmarks/cifar10/run.py`` for its noise / real transfer sets."""
    spec = importlib.util.spec_from_file_location("cifar10_run", ROOT / "benchmarks/cifar10/run.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def recovery_teacher(arch: str) -> tuple[nn.Module, str]:
    """The JPEG-fine-tuned teacher where one exists (what the CIFAR-10 table uses)."""
    return table_teacher(arch) or teacher_for(arch)


class Recovery:
    """Top-1 columns: pruned / recovered on DeepInversion, noise, real images (cached)."""

    def __init__(self, args: argparse.Namespace, results: dict[str, Any], path: Path) -> None:
        from recoverprune import InversionConfig
        from recoverprune.data import load_split

        self.args, self.results, self.path = args, results, path
        self.device = args.device
        self.accel = Accel(compile=False) if args.no_compile else None
        self.preset = PRESETS[args.preset]
        self.test = load_split(args.data, "test")
        self.train = load_split(args.data, "train")
        if args.tiny:
            t = self.test
            self.test = type(t)(t.images[::50], t.labels[::50], t.classes, t.mean, t.std)
        self.inv = InversionConfig(iterations=self.preset.iterations)
        self.dcfg = DistillConfig(epochs=self.preset.epochs)
        self.run_module = _load_run_module()
        self.synthetic: dict[str, Any] = {}

    def _cell(self, key: str, fn: Any) -> float:
        return cell(self.results, self.path, key, fn, device=self.device)["top1"]

    def _top1(self, model: nn.Module) -> float:
        return evaluate(model, self.test, device=self.device, progress=False).top1

    def deepinversion(self, arch: str, teacher: nn.Module) -> Any:
        from recoverprune import synthesize

        if arch not in self.synthetic:
            out = Path(self.args.out) / "synthetic" / f"{arch}-{self.args.preset}"
            self.synthetic[arch] = synthesize(
                teacher,
                self.preset.n,
                config=self.inv,
                batch_size=self.preset.batch_size,
                out_dir=out,
                seed=self.args.seed,
                device=self.device,
                accel=self.accel,
                progress=False,
            )
        return self.synthetic[arch]

    def columns(
        self, arch: str, label: str, teacher: nn.Module, student: nn.Module
    ) -> dict[str, float]:
        n, seed = self.preset.n, self.args.seed
        tag = config_key(asdict(students_config(self.args)))[:8]  # pruning settings
        if label.endswith("x latency"):  # widths timed on this machine: key on the student
            tag += "-" + fingerprint(student)[:8]
        prefix = f"{arch}/{label}/{tag}/{self.args.preset}/seed{seed}"
        out = {"teacher": self._cell(f"{arch}/teacher", lambda: self._top1(teacher))}
        out["pruned"] = self._cell(f"{prefix}/pruned", lambda: self._top1(student))
        sources = {
            "deepinversion": lambda: self.deepinversion(arch, teacher),
            "noise": lambda: self.run_module.noise_set(n, self.deepinversion(arch, teacher), seed),
            "real": lambda: self.run_module.real_set(n, self.train, seed),
        }
        sources["logit-only"] = sources["deepinversion"]  # no feature KD: what indices add
        for name in self.args.columns:

            def job(name: str = name) -> float:
                cfg = self.dcfg
                if name == "logit-only":
                    cfg = replace(cfg, feature_weight=0.0)
                rec = recover(
                    teacher,
                    copy_model(student),
                    sources[name](),
                    config=cfg,
                    accel=self.accel,
                    seed=seed,
                    device=self.device,
                    progress=False,
                )
                return self._top1(rec)

            out[name] = self._cell(f"{prefix}/{name}", job)
        return out


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def students_config(args: argparse.Namespace) -> ChannelConfig:
    """The ChannelConfig the command line asks for (without a budget)."""
    return ChannelConfig(
        importance=args.importance,
        protect_first=not args.no_protect_first,
        residual=not args.no_residual,
        round_to=args.round_to,
    )


def _row_config(args: argparse.Namespace) -> dict[str, Any]:
    """The channel settings of a row: its ChannelConfig, for blocks only when channels go too."""
    if args.structure == "block" and args.channel_speedup is None:
        return {}
    extra = {"channel_speedup": args.channel_speedup} if args.structure == "block" else {}
    return {**asdict(students_config(args)), **extra}


def _block_label(speedup: float, channel: float | None) -> str:
    return f"{speedup:g}x MACs, blocks" + (
        f" (asked {speedup / channel:.3g}x) + channels" if channel else ""
    )


def _block_student(teacher: nn.Module, speedup: float, args: argparse.Namespace) -> nn.Module:
    """Blocks dropped to ``speedup`` MACs, or (``--channel-speedup C``) to ``speedup / C``
    and the remaining channels then pruned until the whole is at ``speedup`` (blocks come
    in coarse steps: the channels make up the rest, about ``C``)."""
    c = args.channel_speedup
    if c is None:
        return prune(teacher, BlockConfig(speedup=speedup))
    if not 1 < c < speedup:
        raise SystemExit(f"--channel-speedup must be in (1, {speedup:g}), got {c:g}")
    x = torch.zeros(1, *teacher.pretrained_cfg["input_size"])
    goal = int(count_macs(teacher, x) / speedup)
    channel = replace(students_config(args), target_macs=goal)
    block = BlockConfig(speedup=speedup / c)
    return prune(teacher, [block, channel])


def students(teacher: nn.Module, args: argparse.Namespace) -> dict[str, nn.Module]:
    """label -> pruned student, one per ``--speedups`` (MACs) or ``--amounts``: channels
    removed, or (``--structure block``) whole residual blocks dropped."""
    if args.structure == "block":
        return {
            _block_label(s, args.channel_speedup): _block_student(teacher, s, args)
            for s in args.speedups
        }
    cfg = students_config(args)
    out = {}
    for s in args.speedups:
        if args.latency_budget:  # widths from a latency table measured here, at batch 64
            budget = LatencyConfig(s, batch=64, channel=cfg)
            out[f"{s:g}x latency"] = prune(teacher, budget)
            continue
        out[f"{s:g}x MACs"] = prune(teacher, replace(cfg, speedup=s))
    for a in args.amounts:
        out[f"amount {a:g}"] = prune(teacher, replace(cfg, amount=a))
    return out


def measure_arch(
    arch: str, args: argparse.Namespace, recovery: Recovery | None
) -> list[dict[str, Any]]:
    teacher, source = recovery_teacher(arch) if recovery else teacher_for(arch)
    teacher.eval()
    x = torch.zeros(1, *teacher.pretrained_cfg["input_size"])
    rows = []
    for label, student in students(teacher, args).items():
        student.eval()
        row: dict[str, Any] = {
            "arch": arch,
            "teacher": source,
            "config": _row_config(args),
            "structure": args.structure,
            "label": label,
            "params": [_params(teacher), _params(student)],
            "macs": [count_macs(teacher, x), count_macs(student, x)],
            "latency": latency(teacher, student, args) if args.latency else [],
        }
        if recovery:
            row["top1"] = recovery.columns(arch, label, teacher, student)
        if recovery and args.unstructured:
            amount = 1 - row["params"][1] / row["params"][0]
            dense = prune(teacher, amount)  # unstructured at the same parameter count
            row["unstructured"] = {
                "amount": amount,
                "top1": recovery.columns(arch, f"unstructured {amount:.3f}", teacher, dense),
                "latency": latency(teacher, dense, args) if args.latency else [],
            }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("arch", "label", "params", "macs")}), flush=True)
    return rows


def _budget(row: dict[str, Any]) -> str:
    """The row's budget label, saying when residual streams were kept whole."""
    whole = row.get("config", {}).get("residual") is False
    return row["label"] + (", streams whole" if whole else "")


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | budget | params | MACs | batch | threads | backend | teacher ms | student ms | speed-up |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        p, m = r["params"], r["macs"]
        for lat in r["latency"]:
            lines.append(
                f"| {r['arch']} | {_budget(r)} | {p[0] / 1e3:.0f} k → {p[1] / 1e3:.0f} k "
                f"| {m[0] / 1e6:.1f} M → {m[1] / 1e6:.1f} M ({m[0] / m[1]:.2f}x) "
                f"| {lat['batch']} | {lat['threads']} | {lat['backend']}{' (CPU time)' if lat.get('clock') == 'cpu' else ''} "
                f"| {lat['teacher_ms']:.2f} | {lat['student_ms']:.2f} | {lat['ratio']:.2f}x |"
            )
    if any("top1" in r for r in rows):
        cols = [
            c
            for c in ("teacher", "pruned", "deepinversion", "logit-only", "noise", "real")
            if c in rows[0]["top1"]
        ]
        unstructured = any("unstructured" in r for r in rows)
        tail = " unstructured (same params), DI |" if unstructured else ""
        lines += [
            "",
            "| model | budget | " + " | ".join(cols) + " |" + tail,
            "|---|---|" + "---:|" * (len(cols) + unstructured),
        ]
        for r in rows:
            un = r.get("unstructured", {}).get("top1", {}).get("deepinversion", float("nan"))
            lines.append(
                f"| {r['arch']} | {_budget(r)} | "
                + " | ".join(f"{r['top1'][c]:.2f}" for c in cols)
                + (f" | {un:.2f} |" if unstructured else " |")
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Recovered (DeepInversion) top-1 against eager latency at batch 64, 1 thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def at64(lats: list[dict[str, Any]]) -> dict[str, Any]:
        return min(
            lats, key=lambda r: (r["backend"] != "eager", abs(r["batch"] - 64), r["threads"])
        )

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch and "top1" in r]
        ch = [(at64(r["latency"])["student_ms"], r["top1"]["deepinversion"]) for r in mine]
        un = [
            (
                at64(r["unstructured"]["latency"])["student_ms"],
                r["unstructured"]["top1"]["deepinversion"],
            )
            for r in mine
        ]
        t = (at64(mine[0]["latency"])["teacher_ms"], mine[0]["top1"]["teacher"])
        ax.plot(*zip(*ch, strict=True), "o-", label=f"{arch} channel")
        ax.plot(*zip(*un, strict=True), "s--", label=f"{arch} unstructured")
        ax.plot(*t, "k*", markersize=10)
    ax.set_xlabel("CPU latency, batch 64, eager fp32 (ms)")
    ax.set_ylabel("top-1 after data-free recovery (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "channel-top1-latency.png", dpi=120)


def compare_importance(args: argparse.Namespace) -> str:
    """Top-1 right after pruning (no recovery) for each importance criterion and image source."""
    from recoverprune import synthesize
    from recoverprune.data import load_split

    test = load_split(args.data, "test")
    step = max(1, len(test) // args.compare_n)
    x, y = test.batch(torch.arange(0, len(test), step))
    train = load_split(args.data, "train")
    k = args.calibration_images
    lines = [
        f"| model | budget | criterion | top-1 after pruning ({len(y)} test images) |",
        "|---|---|---|---:|",
    ]
    for arch in args.archs:
        teacher = recovery_teacher(arch)[0].eval()
        g = torch.Generator().manual_seed(args.seed)
        sources: dict[str, Any] = {
            "magnitude (data-free)": None,
            "taylor, DeepInversion images": synthesize(
                teacher,
                k,
                iterations=args.calibration_iterations,
                batch_size=k,
                seed=args.seed,
                device="cpu",
                progress=False,
            ),
            "taylor, Gaussian noise": torch.randn(k, *x.shape[1:], generator=g),
            "taylor, real images": train.batch(torch.randperm(len(train), generator=g)[:k]),
        }
        with torch.no_grad():
            top1 = (teacher(x).argmax(1) == y).float().mean().item() * 100
        lines.append(f"| {arch} | teacher | | {top1:.2f} |")
        for speedup in args.speedups:
            for name, data in sources.items():
                cfg = ChannelConfig(
                    importance="magnitude" if data is None else "taylor", speedup=speedup
                )
                student = prune(teacher, cfg, data=data).eval()
                with torch.no_grad():
                    top1 = (student(x).argmax(1) == y).float().mean().item() * 100
                lines.append(f"| {arch} | {speedup:g}x MACs | {name} | {top1:.2f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archs", nargs="+", default=["resnet20", "resnet32"])
    p.add_argument(
        "--structure",
        default="channel",
        choices=["channel", "block"],
        help="remove channels, or drop whole residual blocks (BlockConfig(speedup=...))",
    )
    p.add_argument(
        "--latency-budget",
        action="store_true",
        help="channel: each --speedups S is the experimental LatencyConfig(S): widths from a "
        "latency table measured here (batch 64), not one fraction for a MAC count",
    )
    p.add_argument(
        "--channel-speedup",
        type=float,
        default=None,
        metavar="C",
        help="with --structure block: drop blocks to S/C of each --speedups S, then prune the "
        "remaining channels until the whole has S times fewer MACs (blocks come in coarse "
        "steps, so the channels' share is about C: blocks + mild channel pruning)",
    )
    p.add_argument(
        "--no-unstructured",
        dest="unstructured",
        action="store_false",
        help="with --recover: skip the unstructured row at the same parameter count",
    )
    p.add_argument("--speedups", nargs="*", type=float, default=[2.0, 3.0], help="MAC budgets")
    p.add_argument("--amounts", nargs="*", type=float, default=[], help="fixed channel amounts")
    p.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor"])
    p.add_argument(
        "--no-protect-first", action="store_true", help="prune the first conv's channels too"
    )
    p.add_argument(
        "--no-residual", action="store_true", help="keep option-A residual streams whole"
    )
    p.add_argument("--round-to", type=int, default=None, help="keep multiples of this")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (median)")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time, the idle-core latency on a loaded machine (1 thread only)",
    )
    p.add_argument("--recover", action="store_true", help="add the top-1 columns (slow)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the top-1 columns are computed (cells are cached in results.json with it; "
        "rerun on the CPU with the same --out to add the latency columns)",
    )
    p.add_argument("--no-compile", action="store_true", help="GPU: no torch.compile")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="top-1 columns only")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--columns", nargs="+", default=["deepinversion", "noise", "real"])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "channel"))
    p.add_argument("--plot", action="store_true", help="top-1 against latency (needs --recover)")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument(
        "--render", nargs="+", metavar="RESULTS_JSON", help="only print these finished results"
    )
    p.add_argument(
        "--update-docs",
        metavar="MARKER",
        help="with --render: put the tables between <!-- MARKER:begin/end --> of "
        "docs/channel-pruning.md",
    )
    p.add_argument(
        "--compare-importance",
        action="store_true",
        help="only: top-1 right after pruning for magnitude / Taylor on DeepInversion, noise, real",
    )
    p.add_argument("--compare-n", type=int, default=2000, help="test images for that")
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--calibration-iterations", type=int, default=100)
    args = p.parse_args(argv)
    if args.render:
        md = "\n".join(to_markdown(json.loads(Path(f).read_text())["rows"]) for f in args.render)
        print(md)
        if args.update_docs:
            update_block(ROOT / "docs" / "channel-pruning.md", args.update_docs, md)
        return {"markdown": md}
    if args.compare_importance:
        if args.tiny:
            args.archs, args.speedups, args.compare_n = ["resnet20"], [2.0], 50
            args.calibration_images, args.calibration_iterations = 8, 2
        md = compare_importance(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "importance.md").write_text(md)
        print(md)
        return {"importance": md}
    if args.tiny:
        args.archs, args.speedups, args.batches, args.threads, args.repeats = (
            ["resnet20"],
            [2.0],
            [2],
            [1],
            2,
        )
        args.preset, args.columns = "tiny", ["deepinversion", "noise"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    recovery = Recovery(args, results, path) if args.recover else None
    rows = [row for arch in args.archs for row in measure_arch(arch, args, recovery)]
    results.update(
        rows=rows,
        settings={
            **machine(),  # its "threads" is torch's; --threads (the latency runs) wins
            **vars(args),
            "distill": asdict(recovery.dcfg) if recovery else None,
            "command": " ".join(sys.argv),
        },
    )
    write_json_atomic(results, path)
    md = to_markdown(rows)
    (out / "results.md").write_text(md)
    print(md)
    if args.plot and recovery:
        plot(rows, out)
    return results


if __name__ == "__main__":
    main()
