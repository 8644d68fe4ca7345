"""INT8 runtimes on this CPU, side by side: which one should ``quantize()`` use by default?

For the embedded ResNet-20 teacher (32x32 CIFAR-10) it builds, in one process:

- ``torch`` fp32: the eager module;
- ``onnxruntime`` fp32 (the exported ONNX file) and INT8 (``recoverprune.quantize``, default
  ``QuantConfig``: static QDQ, per-channel int8 weights, uint8 activations, MinMax);
- ``openvino`` fp32 (``openvino.convert_model`` of the same ONNX file, run in f32) and INT8
  (``nncf.quantize`` of that model, default preset), run as OpenVINO chooses (``int8``: what
  stays unquantized in bf16 where the CPU has it) and with that part in f32 (``int8 f32``),
  compiled per batch size (static shapes);
- ``pt2e-inductor`` INT8: ``torch.export`` + ``X86InductorQuantizer`` (torchao's
  ``torchao.quantization.pt2e``), ``prepare_pt2e`` / ``convert_pt2e``, then ``torch.compile``
  (inductor, freezing on), one compiled program per thread count; its file is the
  ``torch.export`` ``.pt2`` of the converted model.

Every INT8 model is calibrated on the same images: the first ``--calibration`` (256) of the
DeepInversion set ``--synthetic``. Top-1 is on the first ``--images`` JPEG CIFAR-10 test
images (batches of 64, the last one padded). Latency is the median ms of one call at batch 1
and 64 for each thread count of ``--threads``; the calls are interleaved round by round (the
order rotated each round) so that other work on the machine hits every runtime alike. The
speed-ups are ``ms(baseline) / ms(row)``: above 1 is faster than fp32 eager torch or fp32
onnxruntime. A runtime that is not installed or fails is recorded with its error verbatim
and left out of the timing. The 1-minute load average before and after is recorded too.

    python benchmarks/int8_runtimes.py                      # the committed results, alone
    python benchmarks/int8_runtimes.py --render benchmarks/results/cpu/int8-runtimes.json \
        --update-docs                                       # the table in docs/quantization.md
    python benchmarks/int8_runtimes.py --images 640 --repeats 5 --threads 1 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import DATA, ROOT, machine, update_block

from recoverprune import InputSpec, SyntheticImages, quantize
from recoverprune.core.io import read_json, write_json_atomic
from recoverprune.data import load_split
from recoverprune.evaluation.latency import ort_options
from recoverprune.models import default_teacher
from recoverprune.pruning.export import export

Runner = Callable[[np.ndarray], np.ndarray]
BATCHES = (1, 64)
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
PACKAGES = ("torch", "torchao", "onnx", "onnxruntime", "openvino", "nncf", "numpy")


@dataclass
class Candidate:
    """One runtime and precision: ``build(threads)`` gives a runner of float32 NCHW batches."""

    runtime: str
    precision: str
    build: Callable[[int], Runner]
    bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


# -- the candidates ----------------------------------------------------------------------------


def torch_fp32(model: torch.nn.Module, tmp: Path) -> Candidate:
    torch.save(model.state_dict(), tmp / "teacher.pt")

    def build(threads: int) -> Runner:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return run

    return Candidate("torch", "fp32", build, (tmp / "teacher.pt").stat().st_size)


def _ort_build(path: str) -> Callable[[int], Runner]:
    import onnxruntime as ort

    def build(threads: int) -> Runner:
        opts = ort_options(threads)  # no spin-waiting: interleaved sessions share the cores
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"input": x})[0]

    return build


def ort_fp32(model: torch.nn.Module, tmp: Path, calibration: torch.Tensor) -> Candidate:
    path = export(model, str(tmp / "teacher.onnx"), example=calibration[:1])
    return Candidate("onnxruntime", "fp32", _ort_build(path), os.path.getsize(path))


def ort_int8(model: torch.nn.Module, tmp: Path, calibration: torch.Tensor) -> Candidate:
    q = quantize(model, calibration, path=tmp / "teacher.int8.onnx")
    return Candidate("onnxruntime", "int8", _ort_build(q.path), q.bytes, {"format": "QDQ"})


def _ov_build(ov_model: Any, config: dict[str, Any]) -> Callable[[int], Runner]:
    """Compiled per batch size (a static shape, reshaped from the dynamic-batch model)."""
    import openvino as ov

    core = ov.Core()

    def build(threads: int) -> Runner:
        props = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, **config}
        compiled: dict[int, Any] = {}

        def run(x: np.ndarray) -> np.ndarray:
            if len(x) not in compiled:
                m = ov_model.clone()
                m.reshape([len(x), *x.shape[1:]])
                compiled[len(x)] = core.compile_model(m, "CPU", props).create_infer_request()
            request = compiled[len(x)]
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

        return run

    return build


def _ov_bytes(ov_model: Any, path: Path) -> int:
    import openvino as ov

    ov.save_model(ov_model, path, compress_to_fp16=False)
    return path.stat().st_size + path.with_suffix(".bin").stat().st_size


def _ov_info(ov_model: Any, config: dict[str, Any]) -> dict[str, str]:
    """What OpenVINO chose when compiling ``ov_model`` with ``config`` (one thread)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": 1, **config})
    keys = ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING")
    return {k: str(compiled.get_property(k)) for k in keys}


# no runtime pins its threads here (torch and onnxruntime do not), so all share cores alike;
# fp32 runs in f32 (OpenVINO's CPU default may be bf16 where the CPU has it: recorded)
OV_FP32 = {"ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "f32"}
OV_INT8 = {"ENABLE_CPU_PINNING": False}
# the same INT8 model with what stays unquantized in f32: OpenVINO on a CPU without bf16
OV_INT8_F32 = {**OV_INT8, "INFERENCE_PRECISION_HINT": "f32"}


def ov_fp32(onnx_path: Path, tmp: Path) -> Candidate:
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    default = _ov_info(ov_model, {})["INFERENCE_PRECISION_HINT"]
    info = {**_ov_info(ov_model, OV_FP32), "default_inference_precision": default}
    build = _ov_build(ov_model, OV_FP32)
    return Candidate("openvino", "fp32", build, _ov_bytes(ov_model, tmp / "ov-fp32.xml"), info)


def ov_int8(
    onnx_path: Path, tmp: Path, calibration: torch.Tensor, config: dict[str, Any], precision: str
) -> Candidate:
    import nncf
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    items = [x[None].numpy() for x in calibration]  # one image an item: subset_size counts images
    q = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items))
    info = {**_ov_info(q, config), "nncf": "default preset (PERFORMANCE)"}
    path = tmp / f"ov-{precision.replace(' ', '-')}.xml"
    return Candidate("openvino", precision, _ov_build(q, config), _ov_bytes(q, path), info)


def _pt2e_convert(model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """``model`` quantized by PT2E for x86 (torchao): exported, observed, converted."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config()
    )
    batch = torch.export.Dim("batch", min=1)
    example = (calibration[:2],)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
    prepared = prepare_pt2e(program, quantizer)
    with torch.no_grad():
        for x in calibration.split(32):
            prepared(x)
    return convert_pt2e(prepared)


def _drop_unused(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm`` without the parameters and buffers its graph no longer reads (``convert_pt2e``
    keeps the fp32 weights beside their int8 copies: they would triple the saved file)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner), attr)
    return gm


def pt2e_int8(model: torch.nn.Module, tmp: Path, calibration: torch.Tensor) -> Candidate:
    converted = _drop_unused(_pt2e_convert(copy.deepcopy(model), calibration))
    path = tmp / "teacher.int8.pt2"
    batch = torch.export.Dim("batch", min=1)
    example = (calibration[:2].clone(),)  # a view would save the whole calibration storage
    torch.export.save(torch.export.export(converted, example, dynamic_shapes=({0: batch},)), path)

    def build(threads: int) -> Runner:
        """Compiled (and warmed at each batch size) with inductor's C++ threads = ``threads``."""
        compiled = torch.compile(copy.deepcopy(converted), dynamic=False)  # one per shape

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return compiled(torch.from_numpy(x)).numpy()

        with torch._inductor.config.patch({"freezing": True, "cpp.threads": threads}):
            for b in BATCHES:
                run(np.zeros((b, *calibration.shape[1:]), np.float32))
        return run

    info = {"freezing": True, "file": "torch.export .pt2, unused fp32 weights dropped"}
    return Candidate("pt2e-inductor", "int8", build, path.stat().st_size, info)


# -- measuring ---------------------------------------------------------------------------------


def top1(run: Runner, images: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> float:
    """Top-1 (%) at a fixed batch size: the last batch is padded (one shape per runtime)."""
    correct = 0
    for x, y in zip(images.split(batch), labels.split(batch), strict=True):
        padded = torch.cat([x, x.new_zeros(batch - len(x), *x.shape[1:])]) if len(x) < batch else x
        correct += int((torch.from_numpy(run(padded.numpy()))[: len(x)].argmax(1) == y).sum())
    return 100.0 * correct / len(labels)


def latency(runners: dict[str, Runner], inputs: dict[int, np.ndarray], repeats: int) -> dict:
    """Median ms per call of each runner at each batch size, interleaved round by round."""
    names = list(runners)
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in names}
    for name in names:  # warm-up
        for x in inputs.values():
            for _ in range(3):
                runners[name](x)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b, x in inputs.items():
            for name in order:
                t0 = time.perf_counter()
                runners[name](x)
                times[name][b].append(1e3 * (time.perf_counter() - t0))
    return {n: {f"b{b}": float(np.median(t)) for b, t in per.items()} for n, per in times.items()}


# -- the run -----------------------------------------------------------------------------------


def prepare(teacher: torch.nn.Module, calibration: torch.Tensor, tmp: Path) -> tuple[list, list]:
    """Every candidate that could be built, and the ones that could not (error verbatim)."""
    onnx = tmp / "teacher.onnx"  # written by the onnxruntime fp32 step
    steps: list[tuple[str, Callable[[], Candidate]]] = [
        ("torch fp32", lambda: torch_fp32(teacher, tmp)),
        ("onnxruntime fp32", lambda: ort_fp32(teacher, tmp, calibration)),
        ("onnxruntime int8", lambda: ort_int8(teacher, tmp, calibration)),
        ("openvino fp32", lambda: ov_fp32(onnx, tmp)),
        ("openvino int8", lambda: ov_int8(onnx, tmp, calibration, OV_INT8, "int8")),
        ("openvino int8 f32", lambda: ov_int8(onnx, tmp, calibration, OV_INT8_F32, "int8 f32")),
        ("pt2e-inductor int8", lambda: pt2e_int8(teacher, tmp, calibration)),
    ]
    built, failed = [], []
    for name, make in steps:
        t0 = time.perf_counter()
        try:
            cand = make()
        except Exception as exc:
            failed.append(failure(name, "prepare", exc))
            continue
        cand.info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        built.append(cand)
        print(f"prepared {name} in {cand.info['prepare_seconds']} s", flush=True)
    return built, failed


def failure(name: str, stage: str, exc: BaseException) -> dict[str, str]:
    skip = " (not installed: skipped)" if isinstance(exc, ImportError) else ""
    print(f"{name}: {stage} failed{skip}: {type(exc).__name__}: {exc}", flush=True)
    tail = traceback.format_exception(exc)[-3:]
    return {"name": name, "stage": stage, "error": f"{type(exc).__name__}: {exc}", "tail": tail}


def build_all(cands: list[Candidate], threads: int, failed: list) -> dict[str, Runner]:
    torch.set_num_threads(threads)
    runners = {}
    for cand in cands:
        try:
            runners[cand.name] = cand.build(threads)
        except Exception as exc:
            failed.append(failure(cand.name, f"build at {threads} threads", exc))
    return runners


def measure(
    cands: list[Candidate],
    threads: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    repeats: int,
    failed: list,
) -> tuple[dict[str, float], dict[int, dict]]:
    """Top-1 of each candidate (at the first thread count) and its latency at each count."""
    accuracy: dict[str, float] = {}
    ms: dict[int, dict] = {}
    inputs = {b: images[:b].numpy().copy() for b in BATCHES}
    for t in threads:
        runners = build_all(cands, t, failed)
        if t == threads[0]:
            accuracy = {name: top1(run, images, labels) for name, run in runners.items()}
            print(f"top-1: {accuracy}", flush=True)
        ms[t] = latency(runners, inputs, repeats)
        print(f"threads {t}: {ms[t]}", flush=True)
    return accuracy, ms


def environment() -> dict[str, Any]:
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split())
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    env = {"machine": machine(), "versions": versions, "cpu_flags": {f: f in flags for f in FLAGS}}
    try:
        import openvino as ov

        core = ov.Core()
        env["openvino_cpu"] = {
            k: str(core.get_property("CPU", k))
            for k in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES")
        }
    except Exception as exc:
        env["openvino_cpu"] = f"{type(exc).__name__}: {exc}"
    return env


def rows(cands: list[Candidate], accuracy: dict, ms: dict, n: int) -> list[dict[str, Any]]:
    def speedup(name: str, base: str) -> dict[str, dict[str, float]]:
        return {
            str(t): {b: per[base][b] / per[name][b] for b in per[name]}
            for t, per in ms.items()
            if name in per and base in per
        }

    return [
        {
            "runtime": c.runtime,
            "precision": c.precision,
            "top1": accuracy.get(c.name),
            "n_images": n,
            "bytes": c.bytes,
            "info": c.info,
            "ms": {str(t): per[c.name] for t, per in ms.items() if c.name in per},
            "speedup_vs_torch_fp32": speedup(c.name, "torch fp32"),
            "speedup_vs_onnxruntime_fp32": speedup(c.name, "onnxruntime fp32"),
        }
        for c in cands
    ]


def render(path: Path) -> str:
    """The docs block of a results file: every runtime's top-1, speed-up over onnxruntime
    fp32 at each thread count and batch, and file size."""
    r = read_json(path)
    threads = r["settings"]["threads"]
    cols = [(str(t), f"b{b}") for t in threads for b in BATCHES]
    lines = [
        "| runtime | precision | top-1 | "
        + " | ".join(f"{b}, {t} thread{'s' * (t != '1')}" for t, b in cols)
        + " | bytes |",
        "|---|---|---:|" + "---:|" * len(cols) + "---:|",
    ]
    for row in r["rows"]:
        ratio = row["speedup_vs_onnxruntime_fp32"]
        cells = [f"{ratio[t][b]:.2f}x" if b in ratio.get(t, {}) else "-" for t, b in cols]
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        size = "-" if row["bytes"] is None else f"{row['bytes']:,}"
        lines.append(
            f"| {row['runtime']} | {row['precision']} | {top1} | " + " | ".join(cells) + f" | {size} |"
        )
    flags = [f for f, on in r["cpu_flags"].items() if on]
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)
    load = r["loadavg_1min"]
    failed = "; ".join(f"{f['name']}: {f['error']}" for f in r["failures"]) or "none"
    lines += [
        "",
        f"Speed-up over onnxruntime fp32 (its ms divided by the row's; median of "
        f"{r['settings']['repeats']} interleaved rounds). ResNet-20 (embedded), top-1 on "
        f"{r['rows'][0]['n_images']:,} JPEG CIFAR-10 test images, every INT8 model calibrated on "
        f"the same {r['settings']['calibration']} DeepInversion images. CPU: "
        f"{r['machine']['processor']}, {r['machine']['cpus']} cores ({', '.join(flags)}); "
        f"1-minute load average {load['before']:.1f} before, {load['after']:.1f} after; "
        f"{versions}. Failures: {failed}. Generated by "
        f"`python benchmarks/int8_runtimes.py --render {os.path.relpath(path.resolve(), ROOT)}`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--render", type=Path, default=None, help="print the docs table of a file")
    p.add_argument("--update-docs", action="store_true", help="with --render: write the page")
    p.add_argument("--images", type=int, default=10_000, help="test images for top-1")
    p.add_argument("--repeats", type=int, default=300, help="timed rounds per thread count")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--calibration", type=int, default=256, help="calibration images")
    p.add_argument("--synthetic", default=str(ROOT / "runs" / "int8" / "di-resnet20"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu/int8-runtimes.json"))
    args = p.parse_args()
    if args.render:
        md = render(args.render)
        print(md)
        if args.update_docs:
            update_block(ROOT / "docs/quantization.md", "int8-runtimes", md)
        return
    threads = [int(t) for t in args.threads.split(",")]
    print(f"settings: {vars(args)}", flush=True)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)

    teacher = default_teacher().eval()
    spec = InputSpec.of(teacher)
    calibration = SyntheticImages.load(args.synthetic).images[: args.calibration].float().clone()
    test = load_split(DATA, "test", mean=spec.mean, std=spec.std)
    images, labels = test.batch(torch.arange(min(args.images, len(test))))

    with tempfile.TemporaryDirectory() as tmp:
        cands, failed = prepare(teacher, calibration, Path(tmp))
        accuracy, ms = measure(cands, threads, images, labels, args.repeats, failed)
    shown = {
        k: v.replace(f"{ROOT}/", "") if isinstance(v, str) else v for k, v in vars(args).items()
    }
    result = {
        "settings": {**shown, "threads": threads, "batches": list(BATCHES), "env": env},
        **environment(),
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "rows": rows(cands, accuracy, ms, len(labels)),
        "failures": failed,
    }
    write_json_atomic(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
