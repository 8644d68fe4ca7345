"""CPU threads: how many a run uses on a machine shared with other work, and the machine's name."""

from __future__ import annotations

import math
import os
import platform
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # eager on purpose, see below

__all__ = ["Threads", "available_cpus", "cpu_model", "machine", "set_threads", "threads"]


#: torch's own thread count when recoverprune was imported; a different value later means
#: the user called ``torch.set_num_threads`` (respected).
_TORCH_DEFAULT = torch.get_num_threads()


_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")


@dataclass(frozen=True)
class Threads:
    """The CPU threads torch uses in this process, and why.

    Attributes:
        intra: intra-op threads (``torch.get_num_threads()``).
        interop: inter-op threads (``torch.get_num_interop_threads()``).
        source: ``"auto"``, ``"--threads"``, ``"OMP_NUM_THREADS"`` or
            ``"torch.set_num_threads"``.
        available: CPUs this process may use (affinity and cgroup quota).
        load: the 1-minute load average when the choice was made (``None`` if unknown).
        wait_policy: ``OMP_WAIT_POLICY`` as torch loaded it (the CLI sets ``PASSIVE``).

    Example:
        >>> Threads(1, 1, "auto", 2, 1.0).line()
        'threads: 1 (2 CPUs available, load 1.0; set --threads or OMP_NUM_THREADS to override)'
    """

    intra: int
    interop: int
    source: str
    available: int
    load: float | None = None
    wait_policy: str | None = None

    def line(self) -> str:
        """One line for the log: how many threads, and how the number came about."""
        seen = f"{self.available} CPUs available"
        if self.load is not None:
            seen += f", load {self.load:.1f}"
        if self.source == "auto":
            return f"threads: {self.intra} ({seen}; set --threads or OMP_NUM_THREADS to override)"
        return f"threads: {self.intra} (from {self.source}; {seen})"


_chosen: Threads | None = None


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


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota.

    Example:
        >>> available_cpus() >= 1
        True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _auto_threads(available: int, load: float | None, cap: int | None = None) -> int:
    """The CPUs available less those other processes keep busy, at most ``cap``.

    ``cap`` defaults to torch's own choice (one thread per physical core).

    Example:
        >>> _auto_threads(2, 1.0, 8), _auto_threads(2, 0.2, 8), _auto_threads(2, 3.0, 8)
        (1, 2, 1)
    """
    busy = 0 if load is None else math.floor(load + 0.5)
    return max(1, min(available - busy, cap or _TORCH_DEFAULT))


def _set(n: int, source: str) -> Threads:
    global _chosen
    torch.set_num_threads(n)
    # torch allows this once, before any inter-op work; otherwise keep what is there
    with suppress(RuntimeError):
        torch.set_num_interop_threads(n)
    _chosen = Threads(
        n, torch.get_num_interop_threads(), source, available_cpus(), _load(), _WAIT_POLICY
    )
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


def threads() -> Threads:
    """Settle the CPU threads of this process (once) and say what was chosen.

    A value the user set (``OMP_NUM_THREADS``, ``torch.set_num_threads``, ``--threads``)
    is kept; otherwise the number is the CPUs available to the process (affinity and
    cgroup quota) less the load other processes put on them, at least one.

    Example:
        >>> t = threads()
        >>> 1 <= t.intra and t.source in ("auto", "--threads", "OMP_NUM_THREADS",
        ...                                 "torch.set_num_threads")
        True
    """
    global _chosen
    current = torch.get_num_threads()
    if _chosen is not None and current == _chosen.intra:
        return _chosen
    if _chosen is None and os.environ.get("OMP_NUM_THREADS"):
        source = "OMP_NUM_THREADS"
    elif _chosen is not None or current != _TORCH_DEFAULT:
        source = "torch.set_num_threads"
    else:
        return _set(_auto_threads(available_cpus(), _load()), "auto")
    _chosen = Threads(
        current, torch.get_num_interop_threads(), source, available_cpus(), _load(), _WAIT_POLICY
    )
    return _chosen


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
