"""An exclusive lock on an output for the life of a command: a second writer is refused."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import wraps
from inspect import signature
from pathlib import Path
from typing import Any, TypeVar

from recoverprune.core.runtime import dist_info

__all__ = ["OutputBusy", "holding", "locked"]

F = TypeVar("F", bound=Callable[..., Any])


class OutputBusy(ValueError):
    """Another live process holds the lock of this output."""


@contextmanager
def locked(out: str | os.PathLike[str] | None, *, file: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``out/.lock`` (``.NAME.lock`` beside a ``file``) while
    the block runs; the lock file, and directories made empty for it, go afterwards.

    The lock dies with its process, so a crash (even ``kill -9``) never blocks a rerun; the
    holder's pid and command line in the file only name it. ``None``, a rank other than 0,
    or a system without ``fcntl`` (Windows) locks nothing.

    Raises:
        OutputBusy: another process holds it (the message names its pid and command).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with locked(d), locked(d):  # as a second process would be
        ...     pass
        Traceback (most recent call last):
        ...
        recoverprune.core.lock.OutputBusy: ... is in use by pid ...: wait for it to finish or stop it, or write elsewhere.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        out = None
    if out is None or dist_info()[0] > 0:
        yield
        return
    where = Path(out).parent if file else Path(out)
    path = where / (f".{Path(out).name}.lock" if file else ".lock")
    made = [p for p in (where, *where.parents) if not p.exists()]
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd = _acquire(fcntl, path, out)
    except OSError:  # a file there, or not writable: the command's own checks say so
        fd = None
    if fd is None:
        yield
        return
    first = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")  # -m: the package
    argv = [first.parent.name if first.stem == "__main__" else first.name, *sys.argv[1:]]
    os.write(fd, f"pid {os.getpid()} ({' '.join(argv)})".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        with suppress(OSError):  # innermost first, up to the first that is not empty
            for p in made:
                p.rmdir()


def _acquire(fcntl: Any, path: Path, out: Any) -> int:
    """The descriptor of ``path`` locked; the holder named if another process holds it."""
    while True:  # until the file locked is the one at ``path`` (a holder unlinks it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.05)  # the holder may be about to write its name
            holder = os.pread(fd, 4096, 0).decode(errors="replace") or "another process"
            os.close(fd)
            raise OutputBusy(
                f"{out} is in use by {holder}: wait for it to finish or stop it, or write "
                "elsewhere."
            ) from None
        if path.exists() and path.stat().st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def holding(fn: F) -> F:
    """``fn`` run inside :func:`locked` of its keyword argument ``out_dir`` (or its default).

    Example:
        >>> holding(lambda out_dir=None: "done")()
        'done'
    """
    default = signature(fn).parameters["out_dir"].default

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with locked(kwargs.get("out_dir", default)):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
