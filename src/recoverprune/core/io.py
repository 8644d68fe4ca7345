"""File I/O: atomic writes, safe checkpoint loading, manifests and fingerprints.

Everything a long job writes goes through :func:`atomic_path`, so a crash or Ctrl-C
never leaves a half-written file under its final name. Everything read from a user
goes through :func:`load_checkpoint`, which uses ``torch.load(..., weights_only=True)``:
checkpoint files are data, never code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_path",
    "extract_state_dict",
    "fingerprint",
    "load_checkpoint",
    "load_own",
    "read_json",
    "save_atomic",
    "write_json_atomic",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success.

    The temporary file lives in the same directory, so the final ``os.replace`` is
    atomic on POSIX and Windows. On any exception the temporary file is removed and
    ``path`` is left exactly as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later run tell a killed writer's leftover from a live one's
    prefix = f".{target.name}.{os.getpid()}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`.

    Raises:
        CheckpointError: the file is not valid UTF-8 JSON (the message names it).
    """
    p = Path(path)
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{p} is corrupt ({type(exc).__name__}: {exc}); delete it and rerun the same "
            "command (the stage it belongs to is redone)"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint as data (``weights_only=True``) with errors that say what to do.

    Raises:
        CheckpointError: the file does not exist or is not a PyTorch checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (check the path)")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a file: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        detail = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc)).strip()  # no ANSI colours
        if detail.startswith("Weights only load failed"):
            detail = "it holds Python objects besides tensors, which are never unpickled"
        raise CheckpointError(
            f"{p} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{detail.splitlines()[0] if detail else 'no detail'}). Pass a file written by "
            "torch.save (a state_dict, or a dict holding 'state_dict' or 'model')."
        ) from exc


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and strip ``module.`` prefixes.

    Accepts a plain state dict, or a dict holding it under ``state_dict``, ``model``,
    ``student`` or ``model_state_dict`` (the common layouts), as saved after
    ``DataParallel``/``DistributedDataParallel`` (``module.``) or ``torch.compile``
    (``_orig_mod.``).
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "student", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(f"{source} is not a state dict: non-tensor entries {bad}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN/Inf values in {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; it cannot be pruned, "
            "inverted or distilled. Use a checkpoint saved before the values diverged."
        )
    return out


def fingerprint(model: nn.Module) -> str:
    """A short SHA-256 of every parameter and buffer (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


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
        recoverprune.core.io.CheckpointError: ...pruned.pt is corrupt or truncated (...); delete it and rerun the same command: only the stage it belongs to is redone.
    """

    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
        raise CheckpointError(
            f"{path} is corrupt or truncated ({cause}); delete it and rerun the same command: "
            "only the stage it belongs to is redone."
        ) from exc
