"""Pre-flight validation, stage keys, and the one map from expected failures to messages.

Three concerns a long job needs before and around its compute:

- **stage keys**: every resumable stage records what defines its result
  (:func:`stage_key`); a directory made with anything different is refused by name
  (:class:`StageMismatch`) or, when the user asks, recomputed (:func:`run_stage`).
- **pre-flight checks**: finite weights, a writable output directory, roughly enough
  free disk space — all before any compute.
- **messages**: :func:`explain` turns an expected failure (a full disk, a read-only
  directory, a corrupt file, bad input) into one paragraph naming the file and the fix;
  anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "StageMismatch",
    "architecture",
    "check_finite",
    "check_free_space",
    "check_key",
    "check_writable",
    "clean_stale",
    "data_fingerprint",
    "explain",
    "load_own",
    "preflight",
    "remove_outputs",
    "reuse_pruned",
    "run_stage",
    "stage_key",
]

T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: hidden temporaries of :func:`recoverprune._io.atomic_path` and of archive extraction
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+(\.tmp|\.old)?$")


class StageMismatch(ValueError):
    """An output directory holds a result made with other settings than this call's."""


def stage_key(**parts: Any) -> dict[str, Any]:
    """What defines a stage's result, normalised to plain JSON values.

    Example:
        >>> stage_key(amount=0.5, exclude=("fc",))
        {'amount': 0.5, 'exclude': ['fc']}
    """
    return json.loads(json.dumps(parts, default=str))


def architecture(model: nn.Module) -> str:
    """A short hash of a model's class and state-dict names and shapes (not values).

    Example:
        >>> from torch import nn
        >>> architecture(nn.Linear(2, 3)) == architecture(nn.Linear(2, 3))
        True
        >>> architecture(nn.Linear(2, 3)) == architecture(nn.Linear(3, 3))
        False
    """
    shapes = [(k, tuple(v.shape)) for k, v in sorted(model.state_dict().items())]
    text = f"{type(model).__name__}|{shapes}"
    return f"{type(model).__name__}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def check_key(
    old: Mapping[str, Any], new: Mapping[str, Any], where: str | os.PathLike[str]
) -> None:
    """Raise :class:`StageMismatch` naming every entry of ``new`` that ``old`` differs in.

    Example:
        >>> check_key({"amount": 0.5}, {"amount": 0.5}, "out/pruned.pt")
        >>> check_key({"amount": 0.75}, {"amount": 0.5}, "out/pruned.pt")
        Traceback (most recent call last):
        ...
        recoverprune._checks.StageMismatch: out/pruned.pt was made with different settings: amount (0.75 there, 0.5 now). Rerun with --overwrite (overwrite=True) to recompute it, or use a new output directory.
    """
    new = stage_key(**new)
    diff = [k for k in new if old.get(k, _MISSING) != new[k]]
    if diff:
        detail = ", ".join(
            f"{k} ({_short(old[k]) if k in old else 'not recorded'} there, {_short(new[k])} now)"
            for k in diff
        )
        raise StageMismatch(
            f"{where} was made with different settings: {detail}. Rerun with --overwrite "
            "(overwrite=True) to recompute it, or use a new output directory."
        )


_MISSING = object()


def data_fingerprint(data: Any, chunk: int = 1024) -> str:
    """A short SHA-256 of every image and label of a :class:`~recoverprune.SyntheticImages`.

    Read in chunks of ``chunk`` images (a memory-mapped set is never materialised).

    Example:
        >>> import torch
        >>> from recoverprune import SyntheticImages
        >>> a = SyntheticImages(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]), mean=0.5, std=0.5)
        >>> data_fingerprint(a) == data_fingerprint(a), len(data_fingerprint(a))
        (True, 16)
    """
    h = hashlib.sha256()
    n = len(data)
    for start in range(0, n, chunk):
        x, y = data.get_batch(torch.arange(start, min(start + chunk, n)))
        h.update(x.float().contiguous().numpy().tobytes())
        h.update(y.long().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def run_stage(compute: Callable[[], T], outputs: Sequence[Path], overwrite: bool) -> T:
    """Run ``compute``; on a :class:`StageMismatch` with ``overwrite``, remove ``outputs`` and rerun.

    Example:
        >>> run_stage(lambda: 3, [], overwrite=False)
        3
    """
    try:
        return compute()
    except StageMismatch:
        if not overwrite:
            raise
    remove_outputs(outputs)
    return compute()


def remove_outputs(paths: Sequence[Path]) -> None:
    """Delete files and directories so that a kill part-way leaves only hidden leftovers.

    Each one is first renamed to a hidden ``.NAME.PID.old`` next to it (atomic), then
    removed; :func:`clean_stale` removes such leftovers on the next run.

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
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale(directory: str | os.PathLike[str], before: float | None = None) -> list[Path]:
    """Remove hidden temporaries left in ``directory`` by a killed run; return what went.

    A temporary is stale when its process is gone and it is older than ``before``
    (default: now), so files another live process is writing are never touched.

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
        m = _TEMP.match(p.name)
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


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise ``ValueError`` naming the parameters/buffers of ``model`` holding NaN or Inf.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> check_finite(net)
        >>> with torch.no_grad():
        ...     net.bias[0] = float("nan")
        >>> check_finite(net, "teacher")
        Traceback (most recent call last):
        ...
        ValueError: the teacher holds NaN/Inf values in bias; it cannot be pruned, inverted or distilled. Retrain it or load a checkpoint saved before the values diverged.
    """
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the {what} holds NaN/Inf values in {names}; it cannot be pruned, inverted or "
            "distilled. Retrain it or load a checkpoint saved before the values diverged."
        )


def check_writable(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed and prove a file can be written there.

    Raises:
        OSError: read-only file system, no permission, ... (:func:`explain` words it).

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
        raise OSError(
            errno.ENOSPC,
            f"about {need_bytes / 1e6:.0f} MB are needed for shards and checkpoints, "
            f"{free / 1e6:.0f} MB are free",
            str(directory),
        )


def _final_name(filename: str | None) -> str:
    """The file a hidden temporary ``.NAME.PID.xxxx.tmp`` stands for."""
    if not filename:
        return "the output directory"
    p = Path(filename)
    m = _TEMP.match(p.name)
    return str(p.with_name(m["name"])) if m else str(p)


def explain(exc: BaseException) -> str | None:
    """A one-paragraph message for an expected failure, or ``None`` for a bug.

    Example:
        >>> import errno
        >>> explain(OSError(errno.ENOSPC, "No space left on device", "/out/.s.pt.12.ab.tmp"))
        'no space left on the device while writing /out/s.pt (No space left on device). Free some space or pass another output directory, then rerun the same command: finished work is kept and resumed.'
        >>> explain(KeyError("x")) is None
        True
    """
    from recoverprune.data import DataError

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
    if isinstance(exc, (DataError, ValueError, FileNotFoundError, FloatingPointError)):
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


def preflight(
    teacher: nn.Module,
    out: Path,
    n: int,
    batch_size: int,
    image_size: int | None,
    eval_data: Any,
    *,
    clean: bool = True,
    read_as: Mapping[str, Any] | None = None,
) -> None:
    """Check every input of :func:`~recoverprune.compress` before any compute.

    Finite teacher weights, a writable ``out`` (its stale temporaries removed when
    ``clean``), free space for the shards still to make plus checkpoints, and an
    ``eval_data`` path whose layout and every image decode (the result is cached), read
    as ``read_as`` says (``channels``, ``mean``, ``std``, ``resize``).

    Example:
        >>> import tempfile
        >>> from recoverprune.models import resnet20
        >>> preflight(resnet20(), Path(tempfile.mkdtemp()), 8, 4, None, None)
    """
    from recoverprune._inversion import infer_input_shape

    check_finite(teacher, "teacher")
    check_writable(out)
    if clean:
        clean_stale(out)
    shape = infer_input_shape(teacher, image_size)
    done = len(list((out / "synthetic").glob("shard-*.pt"))) * batch_size
    image_bytes = max(n - done, 0) * math.prod(shape) * 4
    model_bytes = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    check_free_space(out, image_bytes + 8 * model_bytes)  # pruned, checkpoints, student
    if isinstance(eval_data, (str, os.PathLike)):
        from recoverprune._evaluate import resolve_data

        resolve_data(teacher, eval_data, **(read_as or {}))


def reuse_pruned(path: Path, key: Mapping[str, Any], overwrite: bool) -> bool:
    """Whether ``path`` holds the pruned student for ``key``.

    With ``overwrite``, a stale one and everything made from it (``recover/``,
    ``student.pt``, ``report.json`` beside it) are removed and ``False`` is returned.

    Raises:
        StageMismatch: ``path`` was pruned with other settings and ``overwrite`` is false.

    Example:
        >>> import tempfile
        >>> reuse_pruned(Path(tempfile.mkdtemp()) / "pruned.pt", {"amount": 0.5}, False)
        False
    """
    if not path.is_file():
        return False
    state = load_own(path)
    old = state.get("key") or {k: state.get(k) for k in ("teacher", "amount", "scope")}
    try:
        check_key(old, key, path)
        return True
    except StageMismatch:
        if not overwrite:
            raise
    out = path.parent
    remove_outputs([path, out / "recover", out / "student.pt", out / "report.json"])
    return False


def load_own(path: Path) -> Any:
    """Load a checkpoint this library wrote into an output directory (resume state).

    Raises:
        CheckpointError: it is corrupt; the message says to delete it and rerun.

    Example:
        >>> import tempfile, torch
        >>> p = Path(tempfile.mkdtemp()) / "pruned.pt"
        >>> _ = p.write_bytes(b"half a file")
        >>> load_own(p)
        Traceback (most recent call last):
        ...
        recoverprune._io.CheckpointError: ...pruned.pt is corrupt or truncated (...); delete it and rerun the same command: only the stage it belongs to is redone.
    """
    from recoverprune._io import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
        raise CheckpointError(
            f"{path} is corrupt or truncated ({cause}); delete it and rerun the same command: "
            "only the stage it belongs to is redone."
        ) from exc
