"""The benchmark scripts run end to end with tiny budgets, so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["table"][0]
    for col in ("teacher", "pruned", "deepinversion", "noise", "real"):
        assert 0.0 <= row[col] <= 100.0, (col, row)
    assert row["teacher"] > 80.0  # the embedded teacher, measured on 500 real test images
    assert "| resnet20 |" in (tmp_path / "results.md").read_text()
    assert all("seconds" in c and "torch" in c for c in results["cells"].values())
    assert [r["n"] for r in results["sweep"]] == [16, 32]
