"""Output directories: removing outputs, cleaning what a killed run left, room to write."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TEMP_NAME", "check_free_space", "check_writable", "clean_stale", "remove_outputs"]


#: hidden temporaries of :func:`recoverprune.core.io.atomic_path` and of archive extraction
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+(\.tmp|\.old)?$")


def remove_outputs(paths: Sequence[Path]) -> None:
    """Delete files and directories, each first renamed to a hidden ``.NAME.PID.old`` (what
    a kill part-way leaves, :func:`clean_stale` removes on the next run).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "x").write_text("1")
        1
        >>> remove_outputs([d / "x", d / "missing"]); list(d.iterdir())
        []
    """
    for path in paths:
        if not path.exists():
            continue
        doomed = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.old")
        os.replace(path, doomed)
        if doomed.is_dir():
            shutil.rmtree(doomed)
        else:
            doomed.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    return True


def clean_stale(directory: str | os.PathLike[str], before: float | None = None) -> list[Path]:
    """Remove the hidden temporaries of dead processes older than ``before`` (default: now)
    from ``directory`` (a live writer's are never touched); return what went.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".student.pt.999999999.abc.tmp").write_text("half")
        >>> [p.name for p in clean_stale(d)], list(d.iterdir())
        (['.student.pt.999999999.abc.tmp'], [])
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    limit = time.time() if before is None else before
    gone = []
    for p in d.iterdir():
        m = TEMP_NAME.match(p.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        try:
            if p.lstat().st_mtime >= limit:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except FileNotFoundError:
            continue
        gone.append(p)
    return gone


def check_writable(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed and prove a file can be written there (else ``OSError``).

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp()).is_dir()
        True
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=".tmp", dir=d)
    except OSError as exc:  # name the directory, not the probe file
        raise OSError(exc.errno, exc.strerror, str(d)) from exc
    os.close(fd)
    os.unlink(name)
    return d


def check_free_space(directory: str | os.PathLike[str], need_bytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` when ``directory`` has clearly less room than ``need_bytes``.

    Example:
        >>> import tempfile
        >>> check_free_space(tempfile.mkdtemp(), 1)
    """
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        need = f"about {need_bytes / 1e6:.0f} MB are needed for shards and checkpoints"
        raise OSError(errno.ENOSPC, f"{need}, {free / 1e6:.0f} MB are free", str(directory))
