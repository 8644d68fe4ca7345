"""CPU threads: how many the command line uses on a shared machine (the policy is the CLI's
alone; the library only reads, :func:`current`), and the machine's name."""

from __future__ import annotations

import math
import os
import platform
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recoverprune.core.progress import console

__all__ = ["REVISIT_EVERY_S", "SAMPLE_S", "Threads", "available_cpus", "cpu_model", "current",
    "machine", "revisit", "set_threads", "threads"]


#: torch's own thread count at import; another value later is the user's (respected).
_TORCH_DEFAULT = torch.get_num_threads()
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

#: Seconds of ``/proc/stat`` the first, start-up choice looks at.
SAMPLE_S = 0.3

#: :func:`revisit` decides at most once in this many seconds (by default).
REVISIT_EVERY_S = 10.0

#: A step up needs this much room below the rounding point, so that the choice cannot flap.
_UP_MARGIN = 0.25

_PROC_STAT = Path("/proc/stat")

#: The clock of the samples (monotonic seconds); tests replace it, and ``_sleep``.
_clock = time.monotonic
_sleep = time.sleep


@dataclass(frozen=True)
class Threads:
    """The CPU threads torch uses in this process, and why.

    ``source`` is ``"auto"``, ``"--threads"``, ``"OMP_NUM_THREADS"``,
    ``"torch.set_num_threads"`` or ``"torch default"``; ``available`` the CPUs of the
    affinity mask and cgroup quota; ``load`` the 1-minute load; ``busy`` the CPUs busy
    elsewhere over a sample of ``sampled`` seconds (``None``: not sampled).

    Example:
        >>> Threads(2, 2, "auto", 2, 1.9, busy=0.0, sampled=0.3).line()
        'threads: 2 (2 CPUs available, 0.0 busy elsewhere (sampled 0.3 s); set --threads or OMP_NUM_THREADS to override)'
        >>> Threads(1, 1, "--threads", 2, 1.0).line()
        'threads: 1 (from --threads; 2 CPUs available, load 1.0)'
    """

    intra: int
    interop: int
    source: str
    available: int
    load: float | None = None
    wait_policy: str | None = None
    busy: float | None = None
    sampled: float | None = None

    def seen(self) -> str:
        """What the choice was based on: CPUs available, the sample (else the load)."""
        seen = f"{self.available} CPUs available"
        if self.busy is not None:
            seen += f", {self.busy:.1f} busy elsewhere (sampled {self.sampled or 0:.1f} s)"
        elif self.load is not None:
            seen += f", load {self.load:.1f}"
        return seen

    def line(self) -> str:
        """One line for the log: how many threads, and how the number came about."""
        if self.source == "auto":
            override = "set --threads or OMP_NUM_THREADS to override"
            return f"threads: {self.intra} ({self.seen()}; {override})"
        return f"threads: {self.intra} (from {self.source}; {self.seen()})"


@dataclass(frozen=True)
class _Sample:
    """Cumulative counters at ``wall`` (``_clock()``): busy and all jiffies of this process's
    CPUs, how many CPUs, and this process's own CPU seconds (``time.process_time()``)."""

    wall: float
    busy: int
    total: int
    cpus: int
    own: float


_chosen: Threads | None = None
#: The end of the last window the automatic choice looked at (``None``: cannot sample).
_mark: _Sample | None = None


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 CFS files), ``None`` if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _affinity() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota.

    Example:
        >>> available_cpus() >= 1
        True
    """
    mask = _affinity()
    n = len(mask) if mask is not None else os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _read_stat(text: str, mask: set[int] | None) -> tuple[int, int, int] | None:
    """Busy (not idle nor iowait) jiffies, all jiffies and CPUs counted, over the ``cpuN``
    lines in ``mask`` (all if ``None``), else the aggregate ``cpu`` line.

    Example:
        >>> text = "cpu  9 0 1 10 0 0 0 0 0 0\\ncpu0 3 0 1 6 0 0 0 0\\ncpu1 6 0 0 4 0 0 0 0\\n"
        >>> _read_stat(text, {0, 1}), _read_stat(text, {1}), _read_stat(text, {7})
        ((10, 20, 2), (6, 10, 1), (10, 20, 2))
    """
    counted, whole = [0, 0, 0], None
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu"):
            break  # the cpu lines come first
        jiffies = [int(v) for v in values[:8]]
        busy, total = sum(jiffies) - sum(jiffies[3:5]), sum(jiffies)
        if name == "cpu":
            whole = (busy, total, os.cpu_count() or 1)
        elif mask is None or int(name[3:]) in mask:
            counted = [counted[0] + busy, counted[1] + total, counted[2] + 1]
    return (counted[0], counted[1], counted[2]) if counted[2] else whole


def _snapshot() -> _Sample | None:
    """The CPU counters now, ``None`` where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        counters = _read_stat(_PROC_STAT.read_text(), _affinity())
    except (OSError, ValueError, IndexError):
        return None
    return None if counters is None else _Sample(_clock(), *counters, time.process_time())


def _busy_elsewhere(start: _Sample, end: _Sample) -> float | None:
    """CPUs other processes kept busy between two samples (``None`` if too close): the busy
    CPUs of the window less this process's own CPU time over it.

    Example:
        >>> a = _Sample(0.0, 0, 0, 2, 0.0)
        >>> _busy_elsewhere(a, _Sample(1.0, 200, 200, 2, 2.0))  # two busy CPUs, all ours
        0.0
        >>> _busy_elsewhere(a, _Sample(1.0, 150, 200, 2, 0.5))
        1.0
    """
    seconds, total = end.wall - start.wall, end.total - start.total
    if seconds <= 0 or total <= 0:
        return None
    cpus_busy = end.cpus * (end.busy - start.busy) / total
    return round(max(0.0, cpus_busy - (end.own - start.own) / seconds), 2)


def _decide(available: int, busy: float, cap: int | None = None) -> int:
    """The CPUs available less those busy elsewhere (rounded), from 1 to ``cap`` (default:
    torch's own choice, one thread per physical core).

    Example:
        >>> _decide(2, 1.0, 8), _decide(2, 0.2, 8), _decide(2, 3.0, 8), _decide(8, 0.0, 4)
        (1, 2, 1, 4)
    """
    return max(1, min(available - math.floor(busy + 0.5), cap or _TORCH_DEFAULT))


def _step(current: int, available: int, busy: float, cap: int | None = None) -> int:
    """The new choice: down as soon as ``busy`` says so, up only with ``_UP_MARGIN`` to spare.

    Example:
        >>> [_step(n, 2, busy, 8) for n, busy in [(1, 0.1), (1, 0.3), (2, 0.3), (2, 0.7)]]
        [2, 1, 2, 1]
    """
    down = _decide(available, busy, cap)
    if down < current:
        return down
    return max(current, _decide(available, busy + _UP_MARGIN, cap))


def _set(
    n: int, source: str, busy: float | None = None, sampled: float | None = None,
    interop: bool = True,
) -> Threads:
    global _chosen
    torch.set_num_threads(n)
    if interop:  # torch allows this once, before any inter-op work; else keep what is there
        with suppress(RuntimeError):
            torch.set_num_interop_threads(n)
    sampled = None if sampled is None else round(sampled, 2)
    interop_n = torch.get_num_interop_threads()
    _chosen = Threads(n, interop_n, source, available_cpus(), _load(), _WAIT_POLICY, busy, sampled)
    return _chosen


def set_threads(n: int) -> Threads:
    """Use ``n`` CPU threads from now on (the CLI's ``--threads``), overriding the policy.

    Example:
        >>> import torch
        >>> old = torch.get_num_threads()
        >>> set_threads(1).source
        '--threads'
        >>> _ = set_threads(old)
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    return _set(n, "--threads")


def _window(start: _Sample | None) -> tuple[float, float, _Sample] | None:
    """CPUs busy elsewhere from ``start`` to now, over how many seconds, and the sample now."""
    end = None if start is None else _snapshot()
    busy = None if start is None or end is None else _busy_elsewhere(start, end)
    if start is None or end is None or busy is None:
        return None
    return busy, end.wall - start.wall, end


def _auto() -> Threads:
    """The automatic choice at start, from a sample (else from the load average)."""
    global _mark
    start = _snapshot()
    if start is not None:
        _sleep(SAMPLE_S)
    seen, _mark = _window(start), None
    if seen is None:  # not Linux: the load average, looked at once
        return _set(_decide(available_cpus(), _load() or 0.0), "auto")
    busy, seconds, _mark = seen
    return _set(_decide(available_cpus(), busy), "auto", busy, seconds)


def threads() -> Threads:
    """Settle the CPU threads of this process (once) and say what was chosen.

    A value the user set (``OMP_NUM_THREADS``, ``torch.set_num_threads``, ``--threads``)
    is kept. Otherwise: the CPUs available (affinity, cgroup quota) less those busy
    elsewhere over a ``SAMPLE_S`` sample (else the 1-minute load), 1 to torch's default.

    Example:
        >>> t = threads()
        >>> 1 <= t.intra and t.source in ("auto", "--threads", "OMP_NUM_THREADS",
        ...                                 "torch.set_num_threads")
        True
    """
    global _chosen
    now = current()
    if now.source == "torch default":  # nobody chose: the policy does
        return _auto()
    _chosen = now
    return now


def current() -> Threads:
    """The threads torch uses now and where the number came from; sets nothing, samples nothing.

    Example:
        >>> import torch
        >>> current().intra == torch.get_num_threads()
        True
    """
    n = torch.get_num_threads()
    if _chosen is not None and _chosen.intra == n:
        return _chosen
    if _chosen is None and os.environ.get("OMP_NUM_THREADS"):
        source = "OMP_NUM_THREADS"
    elif _chosen is not None or n != _TORCH_DEFAULT:
        source = "torch.set_num_threads"
    else:
        source = "torch default"
    interop = torch.get_num_interop_threads()
    return Threads(n, interop, source, available_cpus(), _load(), _WAIT_POLICY)


def revisit(every: float = REVISIT_EVERY_S, verbose: bool = True) -> Threads | None:
    """Look at the CPUs again and step the automatic choice up or down.

    No sleeping: it uses the window since the last look, at most once in ``every``
    seconds. Only an automatic choice moves, never a number the user set; ``verbose``
    prints a line on a change. Returns the new :class:`Threads`, or ``None`` if unchanged.

    Example:
        >>> _ = set_threads(1)
        >>> revisit() is None  # a number the user set is never revisited
        True
    """
    global _mark
    if _chosen is None or _chosen.source != "auto" or _mark is None:
        return None
    if torch.get_num_threads() != _chosen.intra:
        threads()  # the user set their own number: record it, never revisit again
        return None
    seen = None if _clock() - _mark.wall < every else _window(_mark)
    if seen is None:
        return None
    busy, seconds, _mark = seen
    before = _chosen.intra
    n = _step(before, available_cpus(), busy)
    if n == before:
        return None
    new = _set(n, "auto", busy, seconds, interop=False)
    if verbose:
        say = f"threads: {before} -> {n} ({new.seen()}; set --threads to keep a number)"
        console.print(say, markup=False, highlight=False)
    return new


def cpu_model() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where a run happened, for reports: platform, CPU, CPU counts, Python and torch.

    Example:
        >>> sorted(machine())
        ['cpu', 'cpu_count', 'cpus_available', 'platform', 'python', 'torch']
    """
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available_cpus(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
