"""The benchmark scripts run end to end with tiny budgets, so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recoverprune.core.runtime import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, marker: str) -> str:
    """What a docs page holds between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``."""
    return text.split(f"<!-- {marker}:begin -->")[1].split(f"<!-- {marker}:end -->")[0]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _render(script: str, *files: str) -> str:
    """What ``benchmarks/SCRIPT --render FILES...`` prints (it must succeed)."""
    proc = _run([f"benchmarks/{script}", "--render", *files], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _docs_hold(table: str, marker: str, pages: tuple[str, ...], hint: str) -> None:
    """Each page's ``marker`` block is ``table``, to the letter (else: ``hint``)."""
    for page in pages:
        block = _block((ROOT / page).read_text(), marker)
        assert block.strip() == table, f"{page}: {hint}"


@pytest.mark.slow
def test_cifar10_table_tiny(shared_dir, tmp_path):
    proc = _run(
        [
            "benchmarks/cifar10/run.py",
            "--tiny",
            "--out",
            str(tmp_path),
            "--teachers",
            str(tmp_path / "teachers"),
            "--sweep-n",
            "16",
            "32",
            "--columns",
            "deepinversion",
            "seed",
            "noise",
            "real",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["table"][0]
    for col in ("teacher", "pruned", "deepinversion", "seed", "noise", "real"):
        assert 0.0 <= row[col] <= 100.0, (col, row)
    seed_cell = next(c for c in results["cells"].values() if c["name"].endswith("/seed"))
    assert seed_cell["config"]["distill"]["bn_mode"] == "frozen"  # the seed preset's recipe
    assert seed_cell["config"]["batch"] == 16  # min(seed batch 32, tiny batch 16)
    assert row["teacher"] > 80.0  # the embedded teacher, measured on 500 real test images
    assert "| resnet20 |" in (tmp_path / "results.md").read_text()
    assert all("seconds" in c and "torch" in c for c in results["cells"].values())
    assert [r["n"] for r in results["sweep"]] == [16, 32]


def test_torchvision_rows_in_docs_are_generated_from_committed_results():
    files = sorted(str(p) for p in (ROOT / "benchmarks/results/h100").glob("tv-*.json"))
    assert len(files) == 3
    table = _render("cifar10/run.py", *files)
    hint = "rerun run.py --render ... --update-readme"
    _docs_hold(table, "torchvision", ("README.md", "docs/results.md"), hint)
    for arch in ("resnet18", "mobilenet_v2", "shufflenet_v2_x1_0"):
        for sparsity in ("50%", "75%"):
            assert f"| torchvision:{arch} | {sparsity} |" in table
    assert "| teacher | pruned | deepinversion | seed | noise | real |" in table


@pytest.mark.slow
def test_channel_recovery_tables_in_docs_are_generated_from_committed_results():
    blocks = {  # docs block -> the committed results it is rendered from
        "channel-recovery": ("resnet32", "resnet32-inner"),
        "channel-r20": ("resnet20",),
        "channel-blocks": ("resnet32-blocks",),
        "channel-frontier": ("resnet32-combo", "resnet32-latency", "resnet32-uniform"),
    }
    tables = {}
    for marker, names in blocks.items():
        files = [str(ROOT / f"benchmarks/results/channel/{n}.json") for n in names]
        tables[marker] = _render("channel_pruning.py", *files)
        hint = f"rerun channel_pruning.py --render ... --update-docs {marker}"
        _docs_hold(tables[marker], marker, ("docs/channel-pruning.md",), hint)
    recovery = tables["channel-recovery"]
    assert "| resnet32 | 3x MACs | 88.61 |" in recovery and "streams whole" in recovery
    assert "| resnet20 | 2x MACs | 87.72 |" in tables["channel-r20"]
    assert "| resnet32 | 2x MACs, blocks | 88.22 |" in tables["channel-blocks"]
    for label in ("2.4x MACs, blocks (asked 1.8x) + channels", "2x latency", "3x MACs"):
        assert f"| resnet32 | {label} | 88.22 |" in tables["channel-frontier"]


def _throughput(script: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    proc = _run([f"benchmarks/{script}.py", "--threads", "1", "--json", str(out), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| variant" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_throughput_benchmarks_count_flops_and_measure(tmp_path):
    synth = _throughput("synthesis_throughput", tmp_path, "--batch-size", "8", "--iterations", "2")
    distil = _throughput(
        "recovery_throughput", tmp_path, "--n", "32", "--epochs", "1", "--batch-size", "16"
    )
    # one synthesis step is forward + backward to the pixels (about 2 forwards); one
    # distillation step is teacher forward + student forward + full backward (about 4)
    ratio = distil["config"]["gflops_per_image"] / synth["config"]["gflops_per_image_iteration"]
    assert 1.9 < ratio < 2.1, ratio
    assert 0.1 < synth["config"]["gflops_per_image_iteration"] < 0.25  # ResNet-20: 2 x 41 MMAC
    cpu_rows = ["cpu fp32 eager"]  # no CUDA here: only the CPU rows run, bf16 where native
    if cpu_has_native_bf16():
        cpu_rows += ["cpu bf16 + channels_last", "cpu default (automatic)"]
    for result in (synth, distil):
        assert [row["variant"] for row in result["results"]] == cpu_rows
        for row in result["results"]:
            assert row["seconds"] > 0 and row["tflops"] > 0
            assert row["fraction_of_datasheet_bf16_tflops"] is None
    assert 0.0 <= distil["results"][0]["agreement"] <= 1.0


@pytest.mark.parametrize("native_bf16", [False, True])
def test_throughput_benchmarks_add_cpu_bf16_rows_only_where_native(monkeypatch, native_bf16):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _throughput

    monkeypatch.setattr(_throughput, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    names, skipped = _throughput.chosen_variants(_throughput.parser("").parse_args([]))
    bf16 = ["cpu bf16 + channels_last", "cpu default (automatic)"] if native_bf16 else []
    assert (names, skipped) == (["cpu fp32 eager", *bf16], [])
    asked = _throughput.parser("").parse_args(["--variants", "cpu fp32 eager", "cuda fp32 eager"])
    assert _throughput.chosen_variants(asked) == (["cpu fp32 eager"], ["cuda fp32 eager"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_throughput_benchmarks_on_cuda_keep_quality(tmp_path):
    synth = _throughput(
        "synthesis_throughput", tmp_path, "--batch-size", "64", "--iterations", "20"
    )
    rows = {r["variant"]: r for r in synth["results"]}
    fp32, default = rows["cuda fp32 eager"], rows["cuda default (automatic)"]
    assert default["fraction_of_measured_bf16_matmul_tflops"] is not None
    assert default["bn_loss_final"] < 1.5 * fp32["bn_loss_final"]
    distil = _throughput(
        "recovery_throughput", tmp_path, "--n", "512", "--epochs", "1", "--batch-size", "128"
    )
    assert {r["variant"] for r in distil["results"]} >= {"cuda default (automatic)"}


def test_channel_compensation_table_in_docs_is_generated_from_committed_results():
    table = _render("channel_compensation.py", "benchmarks/results/channel/compensation.json")
    hint = "rerun channel_compensation.py --render ... --update-docs"
    _docs_hold(table, "channel-compensation", ("docs/channel-pruning.md",), hint)
    assert "| resnet20 (embedded) | 40.6 M → 19.8 M | 87.72 |" in table


def test_cpu_results_table_in_docs_is_generated_from_committed_results():
    files = [
        str(ROOT / f"benchmarks/results/cpu/{n}.json")
        for n in ("r20", "r32")
    ]
    table = _render("cifar10/run.py", *files)
    pages = ("README.md", "docs/results.md")
    hint = f"rerun run.py --render {' '.join(files)} --update-readme --marker results"
    _docs_hold(table, "results", pages, hint)
    for page in pages:
        text = (ROOT / page).read_text()
        assert "older recipe" not in text and "before the ablation" not in text
    head = "| model | sparsity | teacher | pruned | deepinversion | seed | noise | real |"
    assert head in table
    for row in ("| resnet20 | 50% |", "| resnet20 | 75% |", "| resnet20 | 90% |"):
        assert row in table
    assert "| resnet32 | 75% |" in table
    names = head.strip("|").split("|")
    for line in table.splitlines()[2:6]:  # the four rows: every recipe and baseline measured
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip((n.strip() for n in names), cells, strict=True))
        assert all(row[c] != "-" for c in ("deepinversion", "noise", "real")), line


@pytest.mark.slow
def test_stream_budget_tiny_measures_and_renders(shared_dir, tmp_path):
    proc = _run(
        ["benchmarks/stream_budget.py", "--tiny", "--out", str(tmp_path), "--columns", "stream"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cell,) = json.loads((tmp_path / "results.json").read_text())["cells"].values()
    assert cell["images_made"] > 0 and cell["steps"] == 2 and cell["synthesis_s"] > 0
    shown = _run(["benchmarks/stream_budget.py", "--render", str(tmp_path / "results.json")])
    assert f"| stream | 2 | {cell['images_made']} |" in shown.stdout, shown.stdout


def test_stream_budget_table_in_docs_is_generated_from_committed_results():
    files = sorted(str(p) for p in (ROOT / "benchmarks/results/stream").glob("*.json"))
    assert files, "no committed results in benchmarks/results/stream"
    table = str(ROOT / "benchmarks/results/cpu/r20-480-steps.json")
    block = _render("stream_budget.py", *files, "--table", table)
    hint = f"rerun stream_budget.py --render {' '.join(files)} --table {table} --update-docs"
    _docs_hold(block, "stream-budget", ("docs/results.md",), hint)
    sources = ("deepinversion 1,024x200 (table)", "generator", "stream", "noise (table)")
    for source in (*sources, "real (table)"):
        assert f"| {source} |" in block


def test_time_to_accuracy_takes_the_best_cell_within_each_budget():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quick_budget import time_to_accuracy

    row = {"arch": "resnet20", "amount": 0.75, "precision": "auto", "n": 1024}
    cells = [
        {**row, "source": "deepinversion", "iterations": 50, "top1": 80.0, "steps": 10,
         "total_min": 4},
        {**row, "source": "deepinversion", "iterations": 50, "top1": 85.0, "steps": 20,
         "total_min": 9},
        {**row, "source": "deepinversion", "iterations": 50, "top1": 84.0, "steps": 40,
         "total_min": 9.5},  # later, not better
        {**row, "source": "deepinversion", "iterations": 50, "top1": 99.0, "steps": 20,
         "total_min": 9, "precision": "fp32"},  # another precision: not a row of this table
        {**row, "source": "real", "iterations": 0, "top1": 86.0, "steps": 20, "total_min": 12},
    ]  # fmt: skip
    table = time_to_accuracy(cells, budgets=(5, 10, 20))
    assert "| 5 min | 80.00 (1,024x50, 10 steps) | none measured | none measured |" in table
    assert "| 10 min | 85.00 (1,024x50, 20 steps) | none measured | none measured |" in table
    assert "| 20 min | 85.00 (1,024x50, 20 steps) | none measured | 86.00 (20 steps) |" in table


def test_modelled_minutes_count_the_check_set_and_the_fixed_cost():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quick_budget import minutes

    from recoverprune import PRESETS

    costs = {"r/auto": {"image_iteration_s": 0.01, "step_s": 0.5, "recovery_fixed_s": 6.0}}
    di = {"arch": "r", "precision": "auto", "n": 1024, "iterations": 50, "steps": 120}
    synth, rec = minutes(di, costs)
    assert synth == pytest.approx((1024 + PRESETS["quick"].check_n) * 50 * 0.01 / 60)
    assert rec == pytest.approx((6.0 + 120 * 0.5) / 60)
    assert minutes({**di, "iterations": 0}, costs)[0] == 0  # noise and real make no images


@pytest.mark.slow
def test_quick_budget_times_its_units(tmp_path):
    out = tmp_path / "timing.json"
    proc = _run(["benchmarks/quick_budget.py", "--time", "--tiny", "--threads", "1",
                 "--out", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    costs = json.loads(out.read_text())["costs"]
    assert set(costs) == {"resnet20/auto", "resnet20/fp32"}
    for unit in costs.values():
        assert unit["image_iteration_s"] > 0 and unit["step_s"] > 0


def test_time_to_accuracy_in_docs_is_generated_from_committed_results():
    results = ROOT / "benchmarks/results/cpu"
    splits = sorted(str(p) for p in results.glob("quick-*.json") if p.name != "quick-timing.json")
    assert splits, "no committed quick-budget results in benchmarks/results/cpu"
    files = [*splits, str(results / "r20.json"), str(results / "r32.json")]  # the table's cells
    timing = str(results / "quick-timing.json")
    block = _render("quick_budget.py", *files, "--timing", timing)
    hint = f"rerun quick_budget.py --render {' '.join(files)} --timing {timing} --update-docs"
    _docs_hold(block, "time-to-accuracy", ("docs/results.md",), hint)
    assert "| 10 min |" in block and "none measured" not in block.split("| 10 min |")[1][:60]


@pytest.mark.slow
def test_int8_tiny_measures_and_renders(shared_dir, tmp_path):
    out = tmp_path / "int8.json"
    args = ["benchmarks/int8.py", "--tiny", "--out", str(out), "--work", str(tmp_path)]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {c["row"] for c in json.loads(out.read_text())["cells"].values()}
    assert {"fp32", "int8, deepinversion", "int8, noise", "int8, real"} <= rows
    assert {"int8, equalized", "int8, distilled"} <= rows
    proc = _run(["benchmarks/int8.py", "--render", str(out)])
    assert proc.returncode != 0 and "--latency" in proc.stderr  # not rendered unmeasured
    assert _run(["benchmarks/int8.py", "--latency", "--out", str(out)]).returncode == 0
    shown = _render("int8.py", str(out))
    assert "| resnet20 | int8, noise |" in shown and "x |" in shown


def test_int8_tables_in_docs_are_generated_from_committed_results():
    results = "benchmarks/results/cpu/int8.json"
    table = _render("int8.py", results)
    hint = f"rerun int8.py --render {results} --update-docs"
    _docs_hold(table, "int8", ("docs/quantization.md", "README.md"), hint)
    for model in ("resnet20", "resnet32", "mobilenet_v2"):
        for row in ("fp32", "int8, deepinversion", "int8, noise", "int8, real"):
            assert f"| {model} | {row} |" in table
    runtimes = "benchmarks/results/cpu/int8-runtimes.json"
    table = _render("int8_runtimes.py", runtimes)
    hint = f"rerun int8_runtimes.py --render {runtimes} --update-docs"
    _docs_hold(table, "int8-runtimes", ("docs/quantization.md",), hint)
    for runtime in ("| onnxruntime | int8 |", "| openvino | int8 |", "| pt2e-inductor | int8 |"):
        assert runtime in table


@pytest.mark.slow
def test_structured_recovery_tiny_measures_and_renders(shared_dir, tmp_path):
    out = tmp_path / "structured.json"
    args = ["benchmarks/structured_recovery.py", "--tiny", "--out", str(out), "--repeats", "2",
            "--techniques", "default", "mir+local", "--sources", "deepinversion", "real"]  # fmt: skip
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(out.read_text())["cells"].values()
    assert {(c["technique"], c["source"]) for c in cells} == {
        (t, s) for t in ("default", "mir+local") for s in ("deepinversion", "real")
    }
    shown = _render("structured_recovery.py", str(out))
    assert "| resnet20 | channels, 2.04x MACs, MiR + block-local first, 32 x 4 | 2 (1x) |" in shown


def test_structured_frontier_in_docs_is_generated_from_committed_results():
    found = sorted((ROOT / "benchmarks/results/cpu").glob("structured-*.json"))
    assert found, "no committed structured-recovery results in benchmarks/results/cpu"
    files = [p.relative_to(ROOT).as_posix() for p in found]  # as the docs name them
    block = _render("structured_recovery.py", *files)
    hint = f"rerun structured_recovery.py --render {' '.join(files)} --update-docs"
    _docs_hold(block, "structured-frontier", ("docs/channel-pruning.md",), hint)
