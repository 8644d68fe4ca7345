"""What :func:`~recoverprune.compress` writes into its output directory: one constant per name.

Example:
    >>> from pathlib import Path
    >>> Path("out") / PRUNED, Path("out") / STUDENT
    (PosixPath('out/pruned.pt'), PosixPath('out/student.pt'))
"""

from __future__ import annotations

from recoverprune.distill.loop import FINAL

__all__ = ["CHECK", "GRID", "PRUNED", "RECOVER", "REPORT", "STUDENT", "SYNTHETIC", "TIMING"]

#: the pruned student before recovery (resumable stage 1)
PRUNED = "pruned.pt"
#: the transfer set's shards and manifest
SYNTHETIC = "synthetic"
#: the independently seeded check set
CHECK = "check"
#: a grid of the first synthetic images
GRID = "synthetic-grid.png"
#: the recovery's checkpoints and history
RECOVER = "recover"
#: the final student (the same name ``recover`` writes into its own directory)
STUDENT = FINAL
#: the report of the run
REPORT = "report.json"
#: seconds per stage, kept across resumes
TIMING = "timing.json"
