"""Distributed synthesis with torchrun on 2 CPU processes (gloo), checked against 1 process.

    python examples/distributed_launch.py --tiny

The launch line it runs is the one you would use on GPUs, with more processes:
``torchrun --nproc_per_node 2 -m recoverprune synthesize ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from recoverprune import SyntheticImages
from recoverprune.models import default_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    n, iterations = ("16", "2") if args.tiny else ("512", "200")
    d = Path(tempfile.mkdtemp(prefix="recoverprune-dist-"))
    teacher = d / "teacher.pt"
    torch.save({"state_dict": default_teacher().state_dict()}, teacher)
    # --num-images, not --n: torchrun's own parser would claim --n as a prefix of its options
    common = [
        "synthesize",
        "--arch",
        "resnet20",
        "--checkpoint",
        str(teacher),
        "--num-images",
        n,
        "--batch-size",
        "8" if args.tiny else "128",
        "--iterations",
        iterations,
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "recoverprune",
        *common,
        "--out",
        str(d / "two"),
    ]
    print("$ torchrun --nproc_per_node 2 -m recoverprune " + " ".join(common), flush=True)
    subprocess.run(launch, check=True, env=env)
    subprocess.run(
        [sys.executable, "-m", "recoverprune", *common, "--out", str(d / "one")],
        check=True,
        env=env,
    )
    two, one = SyntheticImages.load(d / "two"), SyntheticImages.load(d / "one")
    same = torch.equal(two.images, one.images) and torch.equal(two.labels, one.labels)
    print(f"2 processes and 1 process made identical sets: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
