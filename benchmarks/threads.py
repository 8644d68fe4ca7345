"""CPU threads on a small shared machine: what torch's default costs, and what the policy picks.

Runs two workloads in fresh processes under several thread settings, once on the machine as
found and once with one extra CPU-bound competitor (``python -c "while True: pass"``):

- ``tiny``: ``recoverprune compress --preset tiny`` (stage seconds from its report.json);
- ``di``: ``--di-steps`` DeepInversion steps of the quick preset (batch of 256, ResNet-20).

Settings: ``auto`` (nothing set: recoverprune's policy, see ``_runtime.threads``, and for
the CLI ``OMP_WAIT_POLICY=PASSIVE``), ``1`` and ``2`` (``OMP_NUM_THREADS``; ``2`` with
OpenMP's default spin-waiting: torch's own default here), ``2-passive`` (2 threads,
``OMP_WAIT_POLICY=PASSIVE``), ``2-forced`` (``--threads 2`` over the policy).
Each cell is one run (noisy where other jobs share the machine); a run longer than
``--timeout`` seconds is reported as ``>timeout``.

    python benchmarks/threads.py --json runs/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from recoverprune.core.threads import available_cpus, machine

SETTINGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "auto": ({}, []),
    "1": ({"OMP_NUM_THREADS": "1"}, []),
    # "" keeps libgomp's default wait policy (the CLI otherwise sets PASSIVE)
    "2": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": ""}, []),
    "2-passive": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, []),
    "2-forced": ({}, ["--threads", "2"]),
}

DI_SNIPPET = """
import sys, time, torch
from recoverprune import synthesize
from recoverprune.core.threads import set_threads, threads
from recoverprune.models import default_teacher
if len(sys.argv) > 2:
    set_threads(int(sys.argv[2]))
teacher = default_teacher()
synthesize(teacher, 256, batch_size=256, iterations=1, progress=False)  # warm-up
t0 = time.perf_counter()
synthesize(teacher, 256, batch_size=256, iterations=int(sys.argv[1]), progress=False)
print(time.perf_counter() - t0, threads().intra)
"""


def run_one(workload: str, setting: str, steps: int, timeout: float) -> tuple[float | None, int]:
    """Seconds of work (None if over ``timeout``) and the intra-op threads the run used."""
    env_extra, args = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    with tempfile.TemporaryDirectory() as tmp:
        if workload == "tiny":
            cmd = [sys.executable, "-m", "recoverprune", "compress", "--preset", "tiny"]
            cmd += ["--out", tmp, "--no-progress", "--quiet", "--device", "cpu", *args]
        else:
            cmd = [sys.executable, "-c", DI_SNIPPET, str(steps), *args[1:]]
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True
            )
        except subprocess.TimeoutExpired:
            return None, -1
        if workload == "tiny":
            report = json.loads((Path(tmp) / "report.json").read_text())
            return sum(report["seconds"].values()), report["runtime"]["threads"]["intra"]
        seconds, used = done.stdout.split()[-2:]
        return float(seconds), int(used)


def measure(
    condition: str, settings: list[str], steps: int, timeout: float
) -> dict[str, dict[str, list]]:
    """``{workload: {setting: [seconds, threads]}}`` on the machine as it is now."""
    out: dict[str, dict[str, list]] = {}
    for w in ("tiny", "di"):
        for s in settings:
            sec, used = run_one(w, s, steps, timeout)
            out.setdefault(w, {})[s] = [sec, used]
            load = os.getloadavg()[0]
            print(f"  {condition}, {w}, {s}: {sec} s, {used} threads, load {load:.1f}", flush=True)
    return out


def table(results: dict[str, dict[str, dict[str, list]]], settings: list[str]) -> str:
    """Markdown table: seconds (threads used) and the ratio to one thread."""
    head = "| condition | workload | " + " | ".join(settings) + " |"
    lines = [head, "|---|---|" + "---:|" * len(settings)]
    for cond, by_work in results.items():
        for work, cells in by_work.items():
            one = cells.get("1", [None])[0]
            row = []
            for s in settings:
                sec, used = cells[s]
                if sec is None:
                    row.append(">timeout")
                    continue
                ratio = f", {sec / one:.1f}x" if one else ""
                row.append(f"{sec:.1f} s ({used} thr{ratio})")
            lines.append(f"| {cond} | {work} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--di-steps", type=int, default=5, help="DeepInversion steps to time")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a run is cut")
    p.add_argument("--no-competitor", action="store_true", help="only the machine as found")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    print(
        f"threads benchmark: {platform.platform()}, {available_cpus()} CPUs available, "
        f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f} at start; "
        f"settings {args.settings}, {args.di_steps} DI steps, timeout {args.timeout:.0f} s"
    )
    results: dict[str, dict[str, dict[str, list]]] = {}
    t0 = time.perf_counter()
    results["as found"] = measure("as found", args.settings, args.di_steps, args.timeout)
    if not args.no_competitor:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(2)
            results["+1 CPU-bound job"] = measure(
                "+1 job", args.settings, args.di_steps, args.timeout
            )
        finally:
            hog.kill()
            hog.wait()
    print(f"load {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s in all")
    print(table(results, args.settings))
    if args.json:
        out = {"machine": machine(), "settings": args.settings, "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
