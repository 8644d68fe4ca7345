"""The benchmark scripts run end to end with tiny budgets, so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, marker: str) -> str:
    """What a docs page holds between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``."""
    return text.split(f"<!-- {marker}:begin -->")[1].split(f"<!-- {marker}:end -->")[0]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


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
    proc = _run(["benchmarks/cifar10/run.py", "--render", *files], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.strip()
    for page in ("README.md", "docs/results.md"):
        text = (ROOT / page).read_text()
        block = _block(text, "torchvision")
        assert block.strip() == table, f"{page}: rerun run.py --render ... --update-readme"
    for arch in ("resnet18", "mobilenet_v2", "shufflenet_v2_x1_0"):
        for sparsity in ("50%", "75%"):
            assert f"| torchvision:{arch} | {sparsity} |" in table
    assert "| teacher | pruned | deepinversion | seed | noise | real |" in table


def test_channel_recovery_tables_in_docs_are_generated_from_committed_results():
    files = [
        str(ROOT / f"benchmarks/results/channel/{n}.json") for n in ("resnet32", "resnet32-inner")
    ]
    proc = _run(["benchmarks/channel_pruning.py", "--render", *files], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (ROOT / "docs/channel-pruning.md").read_text()
    block = _block(text, "channel-recovery")
    assert block.strip() == proc.stdout.strip(), (
        "rerun channel_pruning.py --render ... --update-docs"
    )
    assert "| resnet32 | 3x MACs | 88.61 |" in block and "streams whole" in block
    r20 = [str(ROOT / "benchmarks/results/channel/resnet20.json")]
    proc = _run(["benchmarks/channel_pruning.py", "--render", *r20], timeout=120)
    block = _block(text, "channel-r20")
    assert block.strip() == proc.stdout.strip() and "| resnet20 | 2x MACs | 87.72 |" in block
    blocks = [str(ROOT / "benchmarks/results/channel/resnet32-blocks.json")]
    proc = _run(["benchmarks/channel_pruning.py", "--render", *blocks], timeout=120)
    block = _block(text, "channel-blocks")
    assert (
        block.strip() == proc.stdout.strip() and "| resnet32 | 2x MACs, blocks | 88.22 |" in block
    )
    names = ("combo", "latency", "uniform")
    frontier = [str(ROOT / f"benchmarks/results/channel/resnet32-{n}.json") for n in names]
    proc = _run(["benchmarks/channel_pruning.py", "--render", *frontier], timeout=120)
    block = _block(text, "channel-frontier")
    assert block.strip() == proc.stdout.strip(), "rerun --render ... --update-docs channel-frontier"
    for label in ("2.4x MACs, blocks (asked 1.8x) + channels", "2x latency", "3x MACs"):
        assert f"| resnet32 | {label} | 88.22 |" in block


def _throughput(script: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    proc = _run([f"benchmarks/{script}.py", "--threads", "1", "--json", str(out), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| variant" in proc.stdout
    return json.loads(out.read_text())


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
    for result in (synth, distil):
        (row,) = result["results"]  # no CUDA here: only the CPU row runs
        assert row["variant"] == "cpu fp32 eager"
        assert row["seconds"] > 0 and row["tflops"] > 0
        assert row["fraction_of_datasheet_bf16_tflops"] is None
    assert 0.0 <= distil["results"][0]["agreement"] <= 1.0


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
    path = "benchmarks/results/channel/compensation.json"
    proc = _run(["benchmarks/channel_compensation.py", "--render", path], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (ROOT / "docs/channel-pruning.md").read_text()
    block = _block(text, "channel-compensation")
    assert block.strip() == proc.stdout.strip(), (
        "rerun channel_compensation.py --render ... --update-docs"
    )
    assert "| resnet20 (embedded) | 40.6 M → 19.8 M | 87.72 |" in block


def test_cpu_results_table_in_docs_is_generated_from_committed_results():
    files = [
        str(ROOT / f"benchmarks/results/cpu/{n}.json")
        for n in ("r20", "r32", "r32-seed", "r20-sweep", "r20-90", "r32-real", "r20-90di")
    ]
    proc = _run(["benchmarks/cifar10/run.py", "--render", *files], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.strip()
    for page in ("README.md", "docs/results.md"):
        text = (ROOT / page).read_text()
        block = _block(text, "results")
        assert block.strip() == table, (
            f"{page}: rerun run.py --render {' '.join(files)} --update-readme --marker results"
        )
        assert "older recipe" not in text and "before the ablation" not in text
    head = "| model | sparsity | teacher | pruned | deepinversion | seed | noise | real |"
    assert head in table
    for row in ("| resnet20 | 50% |", "| resnet20 | 75% |", "| resnet20 | 90% |"):
        assert row in table
    assert "| resnet32 | 75% |" in table
    assert "Transfer-set size" in table
    assert "| - |" not in table  # every cell measured


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
    table = str(ROOT / "benchmarks/results/cpu/r20.json")
    proc = _run(["benchmarks/stream_budget.py", "--render", *files, "--table", table], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (ROOT / "docs/results.md").read_text()
    block = _block(text, "stream-budget")
    assert block.strip() == proc.stdout.strip(), (
        f"rerun stream_budget.py --render {' '.join(files)} --table {table} --update-docs"
    )
    sources = ("deepinversion 1,024x200 (table)", "generator", "stream", "noise (table)")
    for source in (*sources, "real (table)"):
        assert f"| {source} |" in block


def test_time_to_accuracy_takes_the_best_cell_within_each_budget():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream_budget import time_to_accuracy

    cells = [
        {"column": "stream", "top1": 80.0, "steps": 10, "total_s": 500},
        {"column": "stream", "top1": 85.0, "steps": 20, "total_s": 1000},
        {"column": "stream", "top1": 84.0, "steps": 40, "total_s": 1100},  # later, not better
        {"column": "deepinversion", "top1": 86.0, "steps": 20, "total_s": 3000},
    ]
    table = time_to_accuracy(cells, budgets=(10, 20, 60))
    assert "| 10 min | none yet | 80.00 (10) |" in table
    assert "| 20 min | none yet | 85.00 (20) |" in table
    assert "| 60 min | 86.00 (20) | 85.00 (20) |" in table
