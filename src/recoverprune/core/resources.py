"""Room for a job: memory and disk checked against its size before anything is allocated."""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from recoverprune.core.borrow import eval_mode

__all__ = ["available_memory", "check_batch_memory", "check_job_size"]


#: bytes of book-keeping per image besides its pixels: an int64 label, the shuffled copy it
#: is drawn from, its slot in the batch plan
PER_IMAGE_BYTES = 24


#: bytes of book-keeping per batch (Python ints and list slots of the batch plan)
PER_BATCH_BYTES = 128


def _cgroup_room() -> int | None:
    """Bytes the cgroup (v2 or v1) still lets this process use, if it sets a limit."""
    v2, v1 = "/sys/fs/cgroup/memory.", "/sys/fs/cgroup/memory/memory."
    files = ((v2 + "max", v2 + "current"), (v1 + "limit_in_bytes", v1 + "usage_in_bytes"))
    for limit, usage in files:
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:  # "max" or a huge v1 value: no limit
            return max(int(cap) - used, 0)
    return None


def available_memory() -> int | None:
    """Bytes of RAM a new allocation can get (``MemAvailable``, else ``sysconf``, lowered to
    the cgroup's room), or ``None`` if unknown.

    Example:
        >>> room = available_memory()
        >>> room is None or room > 0
        True
    """
    room: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        room = None
    if room is None:
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            room = None
    group = _cgroup_room()
    if group is not None:
        room = group if room is None else min(room, group)
    return room


def _size(b: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= scale:
            return f"{b / scale:,.1f} {unit}"
    return f"{b / 1e3:,.1f} kB"


def check_job_size(
    n: int,
    shape: Sequence[int],
    batch_size: int,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    what: str = "synthesising",
) -> None:
    """Refuse a job whose images clearly do not fit in memory or, with ``out_dir``, on disk.

    Without ``out_dir`` the images are kept in memory (twice: the batches and the set made
    from them); with it they are streamed to float32 shards there (the nearest existing
    parent is asked for room). Unknown free memory is not checked.

    Raises:
        ValueError: not enough memory; the message says how much is needed and available.
        OSError: ``ENOSPC``, not enough disk (worded by :func:`~recoverprune.core.errors.explain`).

    Example:
        >>> check_job_size(64, (3, 32, 32), 32)
        >>> check_job_size(10**13, (3, 32, 32), 256)
        Traceback (most recent call last):
        ...
        ValueError: synthesising 10,000,000,000,000 images of 3x32x32 needs about ... TB of memory (the images twice and their labels); ... are available. Pass a smaller n (--n), or an output directory (out_dir=, --out) to stream the images to disk.
    """
    dims = "x".join(str(int(s)) for s in shape)
    disk = n * math.prod(int(s) for s in shape) * 4
    batches = math.ceil(n / max(int(batch_size), 1))
    memory = n * PER_IMAGE_BYTES + batches * PER_BATCH_BYTES + (2 * disk if out_dir is None else 0)
    room = available_memory()
    if room is not None and memory > room:
        how = "the images twice and their labels" if out_dir is None else "labels and batch plan"
        fix = ", or an output directory (out_dir=, --out) to stream the images to disk"
        fix = "" if out_dir is not None else fix
        raise ValueError(
            f"{what} {n:,} images of {dims} needs about {_size(memory)} of memory ({how}); "
            f"{_size(room)} are available. Pass a smaller n (--n){fix}."
        )
    if out_dir is None:
        return
    where = Path(out_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if disk > free:
        raise OSError(
            errno.ENOSPC,
            f"{what} {n:,} images of {dims} needs about {_size(disk)} for its shards, "
            f"{_size(free)} are free; pass a smaller n (--n) or another output directory",
            str(out_dir),
        )


def check_batch_memory(model: nn.Module, shape: Sequence[int], batch_size: int) -> None:
    """Refuse a batch of ``shape`` images whose activations in ``model`` clearly do not fit
    in free memory (RAM, or a GPU's if larger): every layer's output, measured in one pass of
    one image of at most 64x64 and scaled by area. A model that cannot take that size is not
    checked here.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        >>> check_batch_memory(net, (3, 32, 32), 16)
        >>> check_batch_memory(net, (3, 2**20, 2**20), 16)
        Traceback (most recent call last):
        ...
        ValueError: a batch of 16 images of 3x1048576x1048576 needs about ... of memory for its activations in Sequential; ... are available. Pass a smaller --image-size (input=) or batch size.
    """
    c, h, w = (int(s) for s in shape)
    small, sizes = (1, c, min(h, 64), min(w, 64)), []
    handles = [
        m.register_forward_hook(lambda _m, _i, y: sizes.append(getattr(y, "nbytes", 0)))
        for m in model.modules()
        if not any(m.children())
    ]
    ref = next(iter(model.parameters()), torch.zeros(()))
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(small, device=ref.device))
    except Exception:  # a size it cannot take: check_image_size says so
        return
    finally:
        for handle in handles:
            handle.remove()
    need = sum(sizes) * h * w / (small[2] * small[3]) * batch_size
    gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    room = max(available_memory() or 0, gpu)
    if room and need > room:
        raise ValueError(
            f"a batch of {batch_size:,} images of {c}x{h}x{w} needs about {_size(need)} of memory "
            f"for its activations in {type(model).__name__}; {_size(room)} are available. Pass a "
            "smaller --image-size (input=) or batch size."
        )
