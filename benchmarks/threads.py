"""CPU threads on a small shared machine: what torch's default costs, and what the policy picks.

Runs two workloads in fresh processes under several thread settings, once on the machine as
found and once with one extra CPU-bound competitor (``python -c "while True: pass"``):

- ``tiny``: ``recoverprune compress --preset tiny`` (stage seconds from its report.json);
- ``di``: ``--di-steps`` DeepInversion steps of the quick preset (batch of 256, ResNet-20).

Settings: ``auto`` (nothing set: recoverprune's policy, see ``recoverprune.core.threads.threads``, and for
the CLI ``OMP_WAIT_POLICY=PASSIVE``), ``1`` and ``2`` (``OMP_NUM_THREADS``; ``2`` with
OpenMP's default spin-waiting: torch's own default here), ``2-passive`` (2 threads,
``OMP_WAIT_POLICY=PASSIVE``), ``2-forced`` (``--threads 2`` over the policy).
Each cell is one run (noisy where other jobs share the machine); a run longer than
``--timeout`` seconds is reported as ``>timeout``.

    python benchmarks/threads.py --json runs/threads.json

``--scenarios``: the four machines of issue 26 instead, each with a fixed workload
(``--rounds`` calls of ``synthesize``, each one batch of ``--batch`` images for ``--steps``
DeepInversion steps of the embedded ResNet-20, the automatic choice revisited between
rounds), reported as seconds from the thread decision to the end of the work:

- ``quiet``: nothing else runs;
- ``busy``: one CPU-bound neighbour throughout;
- ``ends``: a neighbour that ends ``--end`` seconds (30) after the run starts;
- ``after-burst``: started right after a ``--burst``-second (60) burst of two CPU-bound
  jobs that has ended (the 1-minute load average still counts it).

Scenario settings: ``auto`` (the policy: a sample of ``/proc/stat`` at start, then
``revisit()`` every ``--revisit-every`` seconds), ``loadavg`` (the policy before issue 26:
CPUs available less the rounded 1-minute load average, chosen once), ``1`` and ``2``
(``set_threads``). All with ``OMP_WAIT_POLICY=PASSIVE``, as the command line sets it.
``--quick`` is a smoke test (three rounds of one step on 32 images, 3-s burst and
neighbour, ``auto`` and ``loadavg`` only; mostly process start-up): its seconds mean little.

    python benchmarks/threads.py --scenarios --json runs/threads-scenarios.json
    python benchmarks/threads.py --scenarios --quick
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
from dataclasses import asdict, dataclass, fields, replace
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


SCENARIOS = ("quiet", "busy", "ends", "after-burst")
SCENARIO_SETTINGS = ("auto", "loadavg", "1", "2")

SCENARIO_SNIPPET = """
import json, math, os, sys, time, torch
from recoverprune import synthesize
from recoverprune.core import threads as policy
from recoverprune.models import default_teacher
rounds, steps, batch, how, every = sys.argv[1:6]
teacher = default_teacher()
t0 = time.perf_counter()
if how == "auto":
    chosen = policy.threads()
elif how == "loadavg":  # before issue 26: CPUs available less the rounded load, once
    busy = math.floor(os.getloadavg()[0] + 0.5)
    n = max(1, min(policy.available_cpus() - busy, torch.get_num_threads()))
    chosen = policy.set_threads(n)
else:
    chosen = policy.set_threads(int(how))
changes = []
for _ in range(int(rounds)):
    before = torch.get_num_threads()
    synthesize(teacher, int(batch), batch_size=int(batch), iterations=int(steps), progress=False)
    policy.revisit(float(every), verbose=False)
    if torch.get_num_threads() != before:
        changes.append([round(time.perf_counter() - t0, 1), torch.get_num_threads()])
print(json.dumps({"seconds": time.perf_counter() - t0, "start": chosen.intra,
                  "seen": chosen.seen(), "changes": changes}))
"""


@dataclass(frozen=True)
class Workload:
    """The fixed work of one scenario run and the timing of its neighbours."""

    rounds: int = 16
    steps: int = 10
    batch: int = 128
    end: float = 30.0
    burst: float = 60.0
    revisit_every: float = 10.0
    timeout: float = 600.0


WORKLOAD_HELP = {
    "rounds": "synthesize calls, the thread choice revisited between them (16)",
    "steps": "DeepInversion steps per round (10)",
    "batch": "images per round (128)",
    "end": "seconds after the start when the 'ends' neighbour stops (30)",
    "burst": "seconds of the two-job burst before 'after-burst' (60)",
    "revisit_every": "seconds between looks of revisit() (10, the library's default)",
}

QUICK = Workload(rounds=3, steps=1, batch=32, end=3.0, burst=3.0, revisit_every=2.0, timeout=60)


def neighbour(seconds: float | None = None) -> subprocess.Popen:
    """A CPU-bound process (``while True: pass``), for ``seconds`` or until killed."""
    if seconds is None:
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def run_scenario(scenario: str, setting: str, work: Workload) -> dict | None:
    """One fresh run of the workload on the machine of ``scenario`` (None if over timeout)."""
    others: list[subprocess.Popen] = []
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    args = [str(a) for a in (work.rounds, work.steps, work.batch, setting, work.revisit_every)]
    try:
        if scenario == "after-burst":
            others = [neighbour(work.burst) for _ in range(2)]
            for job in others:
                job.wait()
        elif scenario in ("busy", "ends"):
            others.append(neighbour(None if scenario == "busy" else work.end))
        done = subprocess.run(
            [sys.executable, "-c", SCENARIO_SNIPPET, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=work.timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    finally:
        for job in others:
            job.kill()
            job.wait()
    return json.loads(done.stdout.splitlines()[-1])


def scenario_cell(run: dict | None) -> str:
    """``12.3 s (1 thr)``, or ``12.3 s (1 thr, 2 at 31 s)`` where the policy stepped."""
    if run is None:
        return ">timeout"
    steps = "".join(f", {n} at {t:.0f} s" for t, n in run["changes"])
    return f"{run['seconds']:.1f} s ({run['start']} thr{steps})"


def scenarios(settings: list[str], work: Workload) -> dict[str, dict[str, dict | None]]:
    """``{scenario: {setting: run}}``, each run in a fresh process, printed as it ends."""
    out: dict[str, dict[str, dict | None]] = {}
    for scenario in SCENARIOS:
        for setting in settings:
            run = run_scenario(scenario, setting, work)
            out.setdefault(scenario, {})[setting] = run
            seen = f"; saw {run['seen']}" if run else ""
            print(f"  {scenario}, {setting}: {scenario_cell(run)}{seen}", flush=True)
    return out


def scenario_table(results: dict[str, dict[str, dict | None]], settings: list[str]) -> str:
    """Markdown table: seconds of the fixed work per scenario and setting."""
    lines = ["| scenario | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    for scenario, cells in results.items():
        lines.append(f"| {scenario} | " + " | ".join(scenario_cell(cells[s]) for s in settings))
    return "\n".join(line if line.endswith("|") else line + " |" for line in lines)


def parse() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--di-steps", type=int, default=5, help="DeepInversion steps to time")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run is cut")
    p.add_argument("--no-competitor", action="store_true", help="only the machine as found")
    p.add_argument("--json", default=None, help="also write the figures here")
    s = p.add_argument_group("--scenarios (issue 26)")
    s.add_argument("--scenarios", action="store_true", help="the four scenarios instead")
    s.add_argument("--quick", action="store_true", help="smoke test: tiny work, auto, loadavg")
    s.add_argument("--scenario-settings", nargs="+", default=None, choices=SCENARIO_SETTINGS)
    for f in fields(Workload):
        if f.name != "timeout":
            flag, kind = f"--{f.name.replace('_', '-')}", type(f.default)
            s.add_argument(flag, type=kind, default=None, help=f"{WORKLOAD_HELP[f.name]}")
    return p.parse_args()


def _where(what: str) -> str:
    """The first line's start: the machine, torch and the load as the run begins."""
    return (
        f"{what}: {platform.platform()}, {available_cpus()} CPUs available, "
        f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f} at start; "
    )


def main_scenarios(args: argparse.Namespace) -> None:
    """The four scenarios of issue 26, each setting in a fresh process."""
    base = QUICK if args.quick else Workload()
    picked = {f.name: getattr(args, f.name) for f in fields(Workload)}
    work = replace(base, **{k: v for k, v in picked.items() if v is not None})
    settings = args.scenario_settings or (["auto", "loadavg"] if args.quick else SCENARIO_SETTINGS)
    quick = ", quick" if args.quick else ""
    print(f"{_where('threads scenarios')}settings {list(settings)}, {work}{quick}")
    t0 = time.perf_counter()
    results = scenarios(list(settings), work)
    print(f"load {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s in all")
    print(scenario_table(results, list(settings)))
    if args.json:
        out = {"machine": machine(), "workload": asdict(work), "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1))


def main() -> None:
    args = parse()
    if args.scenarios:
        main_scenarios(args)
        return
    timeout = 60.0 if args.timeout is None else args.timeout
    print(
        f"{_where('threads benchmark')}settings {args.settings}, {args.di_steps} DI steps, "
        f"timeout {timeout:.0f} s"
    )
    results: dict[str, dict[str, dict[str, list]]] = {}
    t0 = time.perf_counter()
    results["as found"] = measure("as found", args.settings, args.di_steps, timeout)
    if not args.no_competitor:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(2)
            results["+1 CPU-bound job"] = measure("+1 job", args.settings, args.di_steps, timeout)
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
