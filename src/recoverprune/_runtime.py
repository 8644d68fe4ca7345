"""One place that decides device, precision, memory format, compilation, seeds and ranks.

Library code never reads global state for these: it asks :func:`resolve` for a
:class:`Runtime` and passes it along.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch._dynamo  # eager on purpose, see below
import torch.distributed as dist
from torch import nn

# Why the eager import: torch imports ``torch._dynamo`` lazily, the first time an optimiser
# or a DistributedDataParallel wrapper is built. If that first time comes after
# ``init_process_group`` (it does in every distributed recover/synthesize), the import
# keeps references to the live gloo process group; ``destroy_process_group`` then cannot
# free it, and its worker threads abort the process at interpreter exit ("terminate called
# without an active exception", about one run in six with torch 2.14). Every synthesize and
# recover builds an optimiser anyway, so importing it here costs nothing extra in use.

__all__ = [
    "Accel",
    "Runtime",
    "Threads",
    "available_cpus",
    "cpu_model",
    "dist_info",
    "generator",
    "machine",
    "resolve",
    "seed_int",
    "set_threads",
    "threads",
]

AmpMode = Literal["auto", "bf16", "fp16", "off"]


@dataclass(frozen=True)
class Accel:
    """Switches for the GPU fast paths. ``None`` means "automatic".

    Automatic choice: on CUDA, bf16 autocast (fp16 on GPUs without bf16),
    ``channels_last`` and ``torch.compile`` are on; on CPU everything is off and the
    computation is plain float32.

    Example:
        >>> from recoverprune import Accel
        >>> Accel(compile=False).compile
        False
    """

    amp: AmpMode = "auto"
    channels_last: bool | None = None
    compile: bool | None = None

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one job."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    rank: int = 0
    world_size: int = 1
    threads: Threads | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes reports and shows progress."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast context for the forward pass (a no-op when AMP is off)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device in the chosen memory format."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` (in place) to the device and memory format."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def maybe_compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``torch.compile`` ``fn`` when compilation is on, else return it unchanged."""
        if not self.compile:
            return fn
        return torch.compile(fn)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for manifests and reports."""
        return {
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "world_size": self.world_size,
            "torch": str(torch.__version__),
            "threads": asdict(self.threads) if self.threads else None,
            "machine": machine(),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available; pass device='cpu' "
            "or leave device unset to choose automatically"
        )
    return dev


def resolve(device: str | torch.device | None = None, accel: Accel | None = None) -> Runtime:
    """Decide the execution settings for ``device`` and the ``accel`` switches.

    Example:
        >>> resolve("cpu").amp_dtype is None
        True
    """
    accel = accel or Accel()
    dev = _resolve_device(device)
    cuda = dev.type == "cuda"
    amp_dtype: torch.dtype | None
    if accel.amp == "off" or (accel.amp == "auto" and not cuda):
        amp_dtype = None
    elif accel.amp == "fp16":
        amp_dtype = torch.float16
    elif accel.amp == "bf16":
        amp_dtype = torch.bfloat16
    else:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    channels_last = cuda if accel.channels_last is None else accel.channels_last
    compile_ = cuda if accel.compile is None else accel.compile
    rank, world = dist_info()
    return Runtime(dev, amp_dtype, channels_last, compile_, rank, world, threads())


# CPU threads. torch's default is one thread per core whatever else runs on the machine;
# on a small shared machine its OpenMP threads then spin-wait against the other jobs and a
# run gets many times slower (benchmarks/threads.py measures it). The policy: respect what
# the user set, else take the CPUs this process may use less those other work keeps busy.

#: torch's own thread count when recoverprune was imported; a different value later means
#: the user called ``torch.set_num_threads`` (respected).
_TORCH_DEFAULT = torch.get_num_threads()
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
_chosen: Threads | None = None


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


def seed_int(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (never on rank or order)."""
    h = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *keys)``."""
    g = torch.Generator()
    g.manual_seed(seed_int(seed, *keys))
    return g
