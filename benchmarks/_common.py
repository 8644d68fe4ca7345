"""What the benchmark scripts share: paths, the machine, teachers, synthesis seconds, the
cell cache and the generated docs blocks.

Not a benchmark itself. The scripts of ``benchmarks/`` import it as ``_common`` (run them
from the repository root, ``python benchmarks/<name>.py``: their folder is on ``sys.path``);
``benchmarks/cifar10/run.py`` puts ``benchmarks/`` on the path first.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recoverprune import Accel, SyntheticImages, __version__
from recoverprune.core.io import write_json_atomic
from recoverprune.core.threads import cpu_model
from recoverprune.models import default_teacher, load_model

ROOT = Path(__file__).resolve().parents[1]
#: ``../shared`` next to the repository: teachers and datasets, never copied in
SHARED = ROOT.parent / "shared"
#: the JPEG (q75) copy of CIFAR-10 every table is measured on
DATA = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
#: the pretrained checkpoints of ``../shared/teachers`` (trained on lossless CIFAR-10)
SHARED_TEACHERS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th"}
#: where ``cifar10/run.py`` keeps the teachers it fine-tunes on the JPEG copy
TEACHERS = ROOT / "runs" / "teachers"
#: plain float32 eager (no autocast, no channels_last, no compile): the precision baseline
FP32 = Accel(amp="off", channels_last=False, compile=False)


def machine() -> dict[str, Any]:
    """Where a measurement ran: platform, CPU, threads, torch, recoverprune and the GPU.

    Every results file records it beside its figures (the tables name the machine,
    threads and torch version from it).
    """
    return {
        "machine": platform.platform(),
        "processor": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "recoverprune": __version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


# -- teachers ------------------------------------------------------------------------------


def stem(arch: str) -> str:
    """A file-name-safe form of a model spec (``torchvision:resnet18`` -> ``torchvision-resnet18``)."""
    return arch.replace(":", "-").replace("/", "-")


def shared_teacher(arch: str) -> Path:
    """The ``../shared/teachers`` checkpoint of ``arch`` (check ``is_file()``: it may be absent)."""
    return SHARED / "teachers" / SHARED_TEACHERS.get(arch, f"{stem(arch)}-absent")


def jpeg_teacher(arch: str, directory: str | Path = TEACHERS) -> Path:
    """Where ``cifar10/run.py`` keeps the teacher of ``arch`` fine-tuned on the JPEG copy."""
    return Path(directory) / f"{stem(arch)}-jpeg.pt"


def table_teacher(arch: str) -> tuple[nn.Module, str] | None:
    """The JPEG-trained teacher the CIFAR-10 tables use for ``arch``, and its name: the
    embedded default teacher for ResNet-20, else :func:`jpeg_teacher` (None when absent)."""
    if arch == "resnet20":
        return default_teacher(), "embedded default teacher"
    path = jpeg_teacher(arch)
    return (load_model(arch, path), path.name) if path.is_file() else None


# -- synthesis seconds ----------------------------------------------------------------------


def synthesis_seconds(images: SyntheticImages) -> float | None:
    """Seconds a synthesis set took: the sum of the per-batch times it records (None when
    it records none, e.g. noise or real images)."""
    stats = images.meta.get("stats") or []
    return sum(st.get("seconds", 0.0) for st in stats) or None


def set_seconds(directory: str | Path) -> float | None:
    """:func:`synthesis_seconds` of the finished set in ``directory``, or None when the set
    is absent or unfinished."""
    try:
        return synthesis_seconds(SyntheticImages.load(directory))
    except FileNotFoundError:
        return None


# -- the cell cache -------------------------------------------------------------------------


def config_key(obj: Any) -> str:
    """A short hash of everything that defines a measurement (a cell's cache key)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cell(
    results: dict[str, Any],
    path: str | Path,
    key: str,
    measure: Callable[[], Any],
    **record: Any,
) -> dict[str, Any]:
    """The cell ``key`` of ``results["cells"]``, measured only the first time.

    ``measure()`` returns a top-1 or a dict of figures; the cell holds ``record``, the
    figures, the wall time of ``measure`` (``seconds``, unless the figures give their own)
    and the :func:`machine`. ``results`` is written to ``path`` after every new cell, so an
    interrupted run resumes where it stopped.
    """
    cells = results.setdefault("cells", {})
    if key not in cells:
        t0 = time.perf_counter()
        got = measure()
        figures = got if isinstance(got, dict) else {"top1": got}
        cells[key] = {**record, "seconds": time.perf_counter() - t0, **figures, **machine()}
        write_json_atomic(results, path)
        shown = {k: cells[key].get(k) for k in ("top1", "seconds")}
        print(json.dumps({"cell": key, **shown}), flush=True)
    return cells[key]


# -- generated docs blocks ------------------------------------------------------------------


def _markers(marker: str) -> tuple[str, str]:
    return f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"


def block(text: str, marker: str) -> str:
    """What ``text`` holds between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``.

    Example:
        >>> block("a<!-- x:begin -->\\nold\\n<!-- x:end -->b", "x")
        '\\nold\\n'
    """
    begin, end = _markers(marker)
    return text.split(begin, 1)[1].split(end, 1)[0]


def replace_block(text: str, marker: str, body: str) -> str:
    """``text`` with what stands between ``<!-- marker:begin -->`` and ``<!-- marker:end -->``
    replaced by ``body`` (both markers must be there).

    Example:
        >>> replace_block("a<!-- x:begin -->old<!-- x:end -->b", "x", "new\\n")
        'a<!-- x:begin -->\\nnew\\n<!-- x:end -->b'
    """
    begin, end = _markers(marker)
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    return pre + begin + "\n" + body + end + post


def update_block(page: str | Path, marker: str, body: str) -> None:
    """Write ``body`` into the ``marker`` block of the page ``page`` (generated docs)."""
    page = Path(page)
    text = page.read_text()
    if any(m not in text for m in _markers(marker)):
        raise SystemExit(f"{page} has no {' ... '.join(_markers(marker))} block")
    page.write_text(replace_block(text, marker, body))
