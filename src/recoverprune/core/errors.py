"""The one map from expected failures to messages: a paragraph naming the file and the fix."""

from __future__ import annotations

import errno
import pickle
import re
import zipfile
from pathlib import Path

from recoverprune.core.files import TEMP_NAME

__all__ = ["explain"]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _final_name(filename: str | None) -> str:
    """The file a hidden temporary ``.NAME.PID.xxxx.tmp`` stands for."""
    if not filename:
        return "the output directory"
    p = Path(filename)
    m = TEMP_NAME.match(p.name)
    return str(p.with_name(m["name"])) if m else str(p)


def explain(exc: BaseException) -> str | None:
    """A one-paragraph message for an expected failure, or ``None`` for a bug.

    Example:
        >>> import errno
        >>> explain(OSError(errno.ENOSPC, "No space left on device", "/out/.s.pt.12.ab.tmp"))
        'no space left on the device while writing /out/s.pt (No space left on device). Free some space or pass another output directory, then rerun the same command: finished work is kept and resumed.'
        >>> explain(KeyError("x")) is None
        True
        >>> explain(ImportError('INT8 needs onnxruntime: pip install "recoverprune[export]"'))
        'INT8 needs onnxruntime: pip install "recoverprune[export]"'
        >>> explain(ImportError("No module named 'x'")) is None
        True
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return _explain_os(exc)
    if isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):  # torch, full disk
        return (
            "writing a checkpoint failed part-way, most likely because the disk is full "
            f"({_clean(exc)}). Free some space or pass another output directory, then rerun "
            "the same command: finished work is kept and resumed."
        )
    if isinstance(exc, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)):
        return (
            f"a file could not be read: it is corrupt or truncated ({_clean(exc)}). Rerun with "
            "--debug to see which file, delete it, and rerun."
        )
    if isinstance(exc, (ValueError, FileNotFoundError, FloatingPointError)):
        return _clean(exc)
    if isinstance(exc, ImportError) and "pip install" in str(exc):  # an optional extra
        return _clean(exc)
    return None


def _explain_os(exc: OSError) -> str:
    where = _final_name(exc.filename)
    reason = exc.strerror or _clean(exc)
    if exc.errno == errno.ENOSPC:
        return (
            f"no space left on the device while writing {where} ({reason}). Free some space "
            "or pass another output directory, then rerun the same command: finished work is "
            "kept and resumed."
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write {where} ({reason}). Pass an output directory you can write to "
            "(--out), or make this one writable."
        )
    if exc.errno == errno.ENOENT:
        return f"{where} does not exist ({reason}); check the path."
    return f"{where}: {reason}. Check the path and the device, then rerun."


def _clean(exc: BaseException) -> str:
    """``str(exc)`` without ANSI colour codes (torch colours some of its messages)."""
    return _ANSI.sub("", str(exc)).strip() or type(exc).__name__
