"""What :func:`~recoverprune.compress` writes into its output directory: one constant per name.

Example:
    >>> from pathlib import Path
    >>> Path("out") / PRUNED, Path("out") / STUDENT
    (PosixPath('out/pruned.pt'), PosixPath('out/student.pt'))
"""

from __future__ import annotations

from recoverprune.distill.loop import FINAL

__all__ = [
    "CHECK",
    "GRID",
    "INT8",
    "PRUNED",
    "RECOVER",
    "REPORT",
    "STUDENT",
    "SYNTHETIC",
    "TIMING",
]

PRUNED = "pruned.pt"  #: the pruned student before recovery (resumable stage 1)
SYNTHETIC = "synthetic"  #: the transfer set's shards and manifest
CHECK = "check"  #: the independently seeded check set
GRID = "synthetic-grid.png"  #: a grid of the first synthetic images
RECOVER = "recover"  #: the recovery's checkpoints and history
STUDENT = FINAL  #: the final student (the same name ``recover`` writes into its own directory)
INT8 = "student.int8.onnx"  #: the INT8 student, ``compress(quantize=...)`` (resumable stage 4)
REPORT = "report.json"  #: the report of the run
TIMING = "timing.json"  #: seconds per stage, kept across resumes
