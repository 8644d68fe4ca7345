"""Pre-flight checks of a whole job, and whether a pruned student on disk can be reused."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from recoverprune.core.files import check_free_space, check_writable, clean_stale, remove_outputs
from recoverprune.core.io import load_own
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import StageMismatch, check_key
from recoverprune.core.validate import check_finite, check_plausible
from recoverprune.data.synthetic_io import SHARD_GLOB
from recoverprune.evaluation.evaluate import resolve_data
from recoverprune.pipeline.layout import RECOVER, REPORT, STUDENT, SYNTHETIC

__all__ = ["preflight", "reuse_pruned"]

def preflight(
    teacher: nn.Module,
    out: Path,
    n: int,
    batch_size: int,
    spec: InputSpec,
    eval_data: Any,
    *,
    clean: bool = True,
) -> None:
    """Check every input of :func:`~recoverprune.compress` before any compute: plausible
    teacher weights, a writable ``out`` (cleaned when ``clean``) with room for the shards and
    checkpoints, and an ``eval_data`` path that reads as ``spec``.

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
    try:
        check_key(old, key, path)
        return True
    except StageMismatch:
        if not overwrite:
            raise
    out = path.parent
    remove_outputs([path, out / RECOVER, out / STUDENT, out / REPORT])
    return False
