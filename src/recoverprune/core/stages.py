"""Stage keys: what defines a resumable stage's result, and refusing a mismatch by name."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from recoverprune.core.files import remove_outputs

__all__ = ["StageMismatch", "architecture", "check_key", "run_stage", "stage_key"]


T = TypeVar("T")


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
        recoverprune.core.stages.StageMismatch: out/pruned.pt was made with different settings: amount (0.75 there, 0.5 now). Rerun with --overwrite (overwrite=True) to recompute it, or use a new output directory.
    """
    new = stage_key(**new)
    diff = [k for k in new if k not in old or old[k] != new[k]]
    if diff:
        detail = ", ".join(
            f"{k} ({_short(old[k]) if k in old else 'not recorded'} there, {_short(new[k])} now)"
            for k in diff
        )
        raise StageMismatch(
            f"{where} was made with different settings: {detail}. Rerun with --overwrite "
            "(overwrite=True) to recompute it, or use a new output directory."
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def run_stage(compute: Callable[[], T], outputs: Sequence[Path], overwrite: bool) -> T:
    """Run ``compute``; on a :class:`StageMismatch` with ``overwrite``, remove ``outputs``, rerun.

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
