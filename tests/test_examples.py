"""Every example runs with its --tiny setting (seconds), so the tutorials cannot rot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECT = {
    "quickstart.py": "recovered; sparsity still 75.00%",
    "own_model.py": "student agrees with the teacher",
    "cli_pipeline.py": "done:",
    "distributed_launch.py": "identical sets: True",
    "torchvision_cli.py": "done:",
    "timm_model.py": "timm resnet18 at [64, 64]: sparsity",
    "grayscale_cnn.py": "grayscale CNN compressed:",
}


def test_every_example_is_covered():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize(
    "script",  # each in its own process, whole pipelines: slow, but for the README's first
    [s if s == "quickstart.py" else pytest.param(s, marks=pytest.mark.slow) for s in sorted(EXPECT)],
)
def test_example_runs_tiny(script):
    if script == "timm_model.py" and importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed (pip install 'recoverprune[timm]')")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert EXPECT[script] in proc.stdout, proc.stdout[-2000:]
