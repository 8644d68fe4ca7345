"""Wall time of synthesising the same set on 1 process vs N processes (same total threads).

    python benchmarks/distributed_synthesis.py --n 512 --iterations 50 --procs 2

Runs ``recoverprune synthesize`` once as a single process with ``--threads`` threads and
once under ``torchrun --nproc_per_node N`` with ``threads / N`` threads per process, checks
that both sets are bitwise identical, and prints the configuration and both wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine

from recoverprune import SyntheticImages
from recoverprune.models import default_teacher


def _time(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="total threads in both settings")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    d = Path(tempfile.mkdtemp(prefix="recoverprune-dist-bench-"))
    ckpt = d / "teacher.pt"
    torch.save({"state_dict": default_teacher().state_dict()}, ckpt)
    common = [
        "synthesize",
        "--arch",
        "resnet20",
        "--checkpoint",
        str(ckpt),
        "--num-images",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--iterations",
        str(args.iterations),
        "--no-progress",
    ]
    single = _time(
        [sys.executable, "-m", "recoverprune", *common, "--out", str(d / "one")], args.threads
    )
    multi = _time(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.procs),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "recoverprune",
            *common,
            "--out",
            str(d / "many"),
        ],
        max(1, args.threads // args.procs),
    )
    one, many = SyntheticImages.load(d / "one"), SyntheticImages.load(d / "many")
    result = {
        "n": args.n,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "procs": args.procs,
        "total_threads": args.threads,
        "single_seconds": single,
        "distributed_seconds": multi,
        "identical": bool(torch.equal(one.images, many.images)),
        **machine(),
        "note": "wall time includes process start-up and model loading",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
