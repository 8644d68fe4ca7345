"""File I/O: atomic writes (:func:`atomic_path`), checkpoint loading as data, verified
against the hash in its name and its digest (:func:`load_checkpoint`), fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DIGEST_KEY", "STATE_KEYS", "CheckpointError", "atomic_path", "extract_state_dict",
    "fingerprint", "load_checkpoint", "load_own", "name_hash", "read_json", "save_atomic",
    "save_model", "sha256_file", "state_digest", "write_json_atomic"]


#: where a dict checkpoint keeps its state dict, in the order :func:`extract_state_dict` looks
STATE_KEYS = ("state_dict", "model", "student", "model_state_dict")


#: the entry :func:`save_atomic` adds to a dict holding a state dict:
#: ``{"of": <its key>, "sha256": <state_digest of it>}``, verified by :func:`load_checkpoint`
DIGEST_KEY = "state_sha256"


#: torch.hub's naming: ``<name>-<first hex digits of the file's SHA-256>.<ext>``
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^-]*$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (so ``os.replace`` is atomic); move it into
    place only on success, else remove it and leave ``path`` as it was."""
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
    """``torch.save`` ``obj`` to ``path`` atomically; a dict holding a state dict gets the
    digest of its tensors (:data:`DIGEST_KEY`), which :func:`load_checkpoint` verifies.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "m.pt"
        >>> _ = save_atomic({"state_dict": {"w": torch.ones(2)}}, p)
        >>> sorted(load_checkpoint(p))
        ['state_dict', 'state_sha256']
    """
    key = _state_key(obj)
    if key is not None:
        obj = {**obj, DIGEST_KEY: {"of": key, "sha256": state_digest(obj[key])}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_model(model: nn.Module, path: str | os.PathLike[str], **meta: Any) -> Path:
    """Write ``model`` as ``{"state_dict": ..., **meta}`` (``None`` entries left out): the one
    format of ``student.pt`` and ``pruned.pt``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "student.pt"
        >>> _ = save_model(nn.Linear(2, 1), p, amount=0.5, channel_spec=None)
        >>> sorted(load_checkpoint(p))
        ['amount', 'state_dict', 'state_sha256']
    """
    record = {k: v for k, v in meta.items() if v is not None}
    return save_atomic({"state_dict": model.state_dict(), **record}, path)


def _state_key(obj: Any) -> str | None:
    """The key of ``obj`` holding a state dict (all tensors), or ``None``."""
    if not isinstance(obj, Mapping):
        return None
    return next((key for key in STATE_KEYS if _is_state(obj.get(key))), None)


def _is_state(x: Any) -> bool:
    is_dict = isinstance(x, Mapping) and bool(x)
    return is_dict and all(isinstance(v, torch.Tensor) for v in x.values())


def state_digest(state: Mapping[str, torch.Tensor], head: str = "{}|{}|{}|") -> str:
    """SHA-256 (hex) of every entry's name, shape, dtype and bytes, whatever the device or order.

    ``head`` formats the name, shape and dtype before the bytes (:func:`fingerprint` has its own).

    Example:
        >>> a = state_digest({"w": torch.ones(2), "b": torch.zeros(1)})
        >>> a == state_digest({"b": torch.zeros(1), "w": torch.ones(2)}), len(a)
        (True, 64)
        >>> a == state_digest({"w": torch.tensor([1.0, 1.5]), "b": torch.zeros(1)})
        False
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(head.format(name, tuple(t.shape), t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes; cached while its inode, size and times are unchanged.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:12]
        'ba7816bf8f01'
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def name_hash(path: str | os.PathLike[str]) -> str | None:
    """The hash prefix a hub-style file name claims (8 to 64 hex digits after the last ``-``,
    as torch.hub's ``check_hash``), or ``None``; decimal digits only are a counter.

    Example:
        >>> name_hash("resnet20-12fca82f.th"), name_hash("epoch-00000100.pt"), name_hash("a.pt")
        ('12fca82f', None, None)
    """
    m = _HASH_IN_NAME.search(Path(path).name)
    return None if m is None or m[1].isdigit() else m[1]


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json_atomic` (:class:`CheckpointError` naming
    it if it is not UTF-8 JSON)."""
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

    A hash prefix in the name (:func:`name_hash`) is checked against the file's SHA-256, and
    a digest written by :func:`save_atomic` against its tensors. A name whose hash does not
    match is tolerated, with a warning, only when the file's digest verifies.

    Raises:
        CheckpointError: the file does not exist, is not a PyTorch checkpoint, or is not
            the file its name or digest says (corrupted or changed on disk).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "net-0123abcd.pt"
        >>> torch.save({"w": torch.ones(1)}, p)
        >>> load_checkpoint(p)
        Traceback (most recent call last):
        ...
        recoverprune.core.io.CheckpointError: ...net-0123abcd.pt is not the file its name claims: ...
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (check the path)")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a file: {p}")
    claimed = name_hash(p)
    actual = sha256_file(p)[: len(claimed)] if claimed is not None else None
    obj, unreadable = None, None
    try:
        obj = _torch_load(p, map_location)
    except CheckpointError as exc:
        if actual == claimed:
            raise
        unreadable = exc  # a file that is not what its name says: say that instead
    digest_ok = _verify_digest(obj, p)
    if actual != claimed:
        problem = (
            f"{p} is not the file its name claims: the name says its SHA-256 starts with "
            f"{claimed}, the file's starts with {actual}"
        )
        if not digest_ok:
            raise CheckpointError(
                f"{problem}. It was corrupted or changed after it was named; get an intact "
                "copy (compare `sha256sum` with its source), or, if the hex in the name is "
                "not a hash, rename the file."
            ) from unreadable
        warnings.warn(
            f"{problem}; its tensors match the digest recoverprune wrote with them, so it "
            "is loaded. Rename it so that the name does not look like a hash.",
            stacklevel=2,
        )
    return obj


def _verify_digest(obj: Any, p: Path) -> bool:
    """Whether ``obj`` carries a :data:`DIGEST_KEY`; :class:`CheckpointError` if it does not match."""
    record = obj.get(DIGEST_KEY) if isinstance(obj, Mapping) else None
    if not isinstance(record, Mapping):
        return False
    key, expected = record.get("of"), record.get("sha256")
    state = obj.get(key) if isinstance(key, str) else None
    actual = state_digest(state) if _is_state(state) else None
    if actual != expected:
        raise CheckpointError(
            f"{p} is corrupt: its tensors do not match the digest written with them "
            f"(expected {str(expected)[:16]}, got {str(actual)[:16]}). The file was changed "
            "or damaged on disk after it was saved; delete it and rerun the command that "
            "wrote it, or restore an intact copy."
        )
    return True


def _torch_load(p: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with a :class:`CheckpointError` that says what to do."""
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
    """The state dict of a loaded checkpoint (itself, or under one of :data:`STATE_KEYS`),
    without the ``module.``/``_orig_mod.`` prefixes of (Distributed)DataParallel and compile."""
    if isinstance(obj, Mapping):
        key = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        obj = obj if key is None else obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
    if bad:
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
    """A short :func:`state_digest` of every parameter and buffer, as resume keys store it.

    Example:
        >>> len(fingerprint(nn.Linear(2, 1)))
        16
    """
    return state_digest(model.state_dict(), "{}({}, '{}')")[:16]


def load_own(path: Path) -> Any:
    """Load a checkpoint this library wrote into an output directory (resume state).

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
