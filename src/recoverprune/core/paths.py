"""Inputs are never outputs: a command refuses to write where it reads, before any compute."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["check_outputs"]


PathArg = str | os.PathLike[str] | None


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or directory (symlinks, hard links, ``..``)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` lies (at any depth) inside ``directory``."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return top in real.parents


def check_outputs(
    inputs: Mapping[str, PathArg],
    outputs: Mapping[str, PathArg],
    *,
    untouched: Iterable[str] = (),
) -> None:
    """Refuse outputs that resolve to one of the inputs, before anything is read or computed.

    Args:
        inputs: what the command reads, by the name the user knows it (``{"--data": "cifar/"}``).
        outputs: every path it writes or may replace, for a directory also the files in it
            (``{"--out": out, "student.pt": out / "student.pt"}``). ``None`` entries are skipped.
        untouched: names of ``inputs`` (labelled data) inside which nothing may be written.

    Raises:
        ValueError: an output is an input (through links or ``..``) or lies inside an
            ``untouched`` one; the message names both and what to pass instead.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "T.th").write_bytes(b"weights")
        >>> check_outputs({"--checkpoint": d / "T.th"}, {"--out": d / "pruned.pt"})
        >>> check_outputs({"--checkpoint": d / "T.th"}, {"--out": d / "sub" / ".." / "T.th"})
        Traceback (most recent call last):
        ...
        ValueError: --out (.../sub/../T.th) is the same file as --checkpoint (.../T.th): the command would replace what it reads. Pass another --out.
    """
    keep = set(untouched)
    for out_name, out in outputs.items():
        if out is None:
            continue
        target = Path(out)
        for in_name, src in inputs.items():
            if src is None:
                continue
            source = Path(src)
            if _same(target, source):
                kind = "directory" if source.is_dir() else "file"
                raise ValueError(
                    f"{out_name} ({target}) is the same {kind} as {in_name} ({source}): the "
                    f"command would replace what it reads. Pass another {_flag(out_name)}."
                )
            if in_name in keep and _inside(target, source):
                raise ValueError(
                    f"{out_name} ({target}) lies inside {in_name} ({source}): writing there "
                    "would add files to the labelled data (a new folder reads as one more "
                    f"class). Pass a {_flag(out_name)} outside it."
                )


def _flag(name: str) -> str:
    """The option to change for an output: itself, or ``--out`` for a file written in it."""
    return name if name.startswith("-") or name.endswith("=") else "--out"
