"""The pipeline on the command line: prune -> synthesize -> recover -> evaluate.

Runs the `recoverprune` commands as a user would type them, on a checkpoint of the embedded
teacher written to a temporary directory.

    python examples/cli_pipeline.py --tiny
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from recoverprune.models import default_teacher

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def run(*args: str) -> None:
    cmd = [sys.executable, "-m", "recoverprune", *args]
    print("$ recoverprune " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    n, iterations, epochs = ("16", "2", "1") if args.tiny else ("1024", "200", "60")
    d = Path(tempfile.mkdtemp(prefix="recoverprune-cli-"))
    teacher = d / "teacher.pt"
    torch.save({"state_dict": default_teacher().state_dict()}, teacher)
    quiet = ["--no-progress"] if args.tiny else []

    run(
        "prune",
        "--arch",
        "resnet20",
        "--checkpoint",
        str(teacher),
        "--amount",
        "0.75",
        "--out",
        str(d / "pruned.pt"),
    )
    run(
        "synthesize",
        "--arch",
        "resnet20",
        "--checkpoint",
        str(teacher),
        "--n",
        n,
        "--batch-size",
        "16" if args.tiny else "256",
        "--iterations",
        iterations,
        "--out",
        str(d / "synth"),
        *quiet,
    )
    run(
        "recover",
        "--arch",
        "resnet20",
        "--teacher",
        str(teacher),
        "--student",
        str(d / "pruned.pt"),
        "--synthetic",
        str(d / "synth"),
        "--out",
        str(d / "rec"),
        "--epochs",
        epochs,
        *quiet,
    )
    if DATA.is_file() and not args.tiny:
        run(
            "evaluate",
            "--arch",
            "resnet20",
            "--checkpoint",
            str(d / "rec" / "student.pt"),
            "--data",
            str(DATA),
        )
    print(f"done: {d / 'rec' / 'student.pt'}")


if __name__ == "__main__":
    main()
