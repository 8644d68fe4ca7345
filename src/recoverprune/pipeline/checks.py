"""Pre-flight checks of a whole job, and whether a pruned or INT8 student on disk can be reused."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recoverprune.core.files import check_free_space, check_writable, clean_stale, remove_outputs
from recoverprune.core.io import load_own
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import StageMismatch, check_key
from recoverprune.core.validate import check_finite, check_plausible
from recoverprune.data.synthetic_io import SHARD_GLOB
from recoverprune.evaluation.evaluate import resolve_data
from recoverprune.pipeline import quantize as quantization
from recoverprune.pipeline.layout import INT8, RECOVER, REPORT, STUDENT, SYNTHETIC

__all__ = ["check_quantizable", "onnx_key", "preflight", "reuse_int8", "reuse_pruned", "stamp_key"]

#: the metadata entry of ``student.int8.onnx`` that holds the key of the stage that made it
KEY_PROP = "recoverprune.stage_key"


def preflight(
    teacher: nn.Module,
    out: Path,
    n: int,
    batch_size: int,
    spec: InputSpec,
    eval_data: Any,
    *,
    clean: bool = True,
    quantize: bool = False,
) -> None:
    """Check every input of :func:`~recoverprune.compress` before any compute: plausible
    teacher weights, a writable ``out`` (cleaned when ``clean``) with room for the shards and
    checkpoints, an ``eval_data`` path that reads as ``spec``, and with ``quantize`` that
    the INT8 stage can run (:func:`check_quantizable`).

    Example:
        >>> import tempfile
        >>> from recoverprune.models import resnet20
        >>> net = resnet20()
        >>> preflight(net, Path(tempfile.mkdtemp()), 8, 4, InputSpec.of(net), None)
    """
    check_finite(teacher, "teacher")
    check_plausible(teacher, "teacher")
    check_writable(out)
    if clean:
        clean_stale(out)
    done = len(list((out / SYNTHETIC).glob(SHARD_GLOB))) * batch_size
    image_bytes = max(n - done, 0) * math.prod(spec.shape) * 4
    model_bytes = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    check_free_space(out, image_bytes + 8 * model_bytes)  # pruned, checkpoints, student
    if isinstance(eval_data, (str, os.PathLike)):
        resolve_data(teacher, eval_data, input=spec)
    if quantize:
        check_quantizable(teacher, spec)


def check_quantizable(teacher: nn.Module, spec: InputSpec) -> None:
    """Whether an INT8 model can be made: ``ImportError`` with the install hint without onnx
    and onnxruntime, ``ValueError`` naming the layer when ``teacher`` does not export to ONNX
    (a pruned student has the teacher's layers).

    Example:
        >>> check_quantizable(nn.Sequential(nn.Conv2d(3, 2, 3)), InputSpec(size=8))
    """
    quantization.require_onnxruntime()
    plain = quantization.plain_fp32(teacher)
    with tempfile.TemporaryDirectory() as tmp:
        quantization.export_onnx(plain, os.path.join(tmp, "teacher.onnx"), torch.zeros(1, *spec.shape))


def stamp_key(path: str | os.PathLike[str], key: Mapping[str, Any]) -> None:
    """Record ``key`` in the metadata of the ONNX file at ``path`` (read by :func:`onnx_key`)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != KEY_PROP]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=KEY_PROP, value=json.dumps(key, sort_keys=True))
    onnx.save(model, str(path))


def onnx_key(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The key :func:`stamp_key` recorded in an ONNX file (``{}`` if none, or unreadable).

    Example:
        >>> import tempfile, torch
        >>> from recoverprune import export
        >>> p = export(nn.Linear(2, 1), tempfile.mkdtemp() + "/m.onnx", example=torch.ones(1, 2))
        >>> onnx_key(p), stamp_key(p, {"seed": 0}), onnx_key(p)
        ({}, None, {'seed': 0})
    """
    import onnx

    try:
        props = onnx.load(str(path), load_external_data=False).metadata_props
        return dict(json.loads(next(p.value for p in props if p.key == KEY_PROP)))
    except Exception:  # no key, or not an ONNX file: made by something else
        return {}


def reuse_int8(path: Path, key: Mapping[str, Any], overwrite: bool) -> bool:
    """Whether ``path`` holds the INT8 student for ``key`` (its :func:`onnx_key`); one made
    with other settings raises :class:`StageMismatch` or, with ``overwrite``, is removed.

    Example:
        >>> import tempfile
        >>> reuse_int8(Path(tempfile.mkdtemp()) / "student.int8.onnx", {"seed": 0}, False)
        False
    """
    return path.is_file() and _reuse(path, onnx_key(path), key, overwrite, [path])


def reuse_pruned(path: Path, key: Mapping[str, Any], overwrite: bool) -> bool:
    """Whether ``path`` holds the pruned student for ``key``. One pruned with other settings
    raises :class:`StageMismatch`, or with ``overwrite`` is removed (``False``) together with
    ``recover/``, ``student.pt`` and ``report.json`` beside it.

    Example:
        >>> import tempfile
        >>> reuse_pruned(Path(tempfile.mkdtemp()) / "pruned.pt", {"amount": 0.5}, False)
        False
    """
    if not path.is_file():
        return False
    state = load_own(path)
    old = state.get("key") or {k: state.get(k) for k in ("teacher", "amount", "scope")}
    later = [path.parent / name for name in (RECOVER, STUDENT, INT8, REPORT)]
    return _reuse(path, old, key, overwrite, [path, *later])


def _reuse(
    path: Path,
    old: Mapping[str, Any],
    key: Mapping[str, Any],
    overwrite: bool,
    outputs: Sequence[Path],
) -> bool:
    """``True`` when ``old`` is ``key``; else :class:`StageMismatch`, or with ``overwrite``
    ``outputs`` removed and ``False``."""
    try:
        check_key(old, key, path)
        return True
    except StageMismatch:
        if not overwrite:
            raise
    remove_outputs(outputs)
    return False
