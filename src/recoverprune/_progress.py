"""Rich progress bars that can be switched off and stay quiet off rank 0."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Bar", "console", "progress"]

console = Console(stderr=True)


class Bar:
    """A handle on one task of a progress display; every method is a no-op when disabled."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Advance by ``n`` and update the status text fields."""
        if self._progress is not None:
            self._progress.update(self._task, advance=n, status=_fmt(fields))

    def update(self, **fields: Any) -> None:
        """Update the status fields without advancing."""
        if self._progress is not None:
            self._progress.update(self._task, status=_fmt(fields))

    def reset(self, total: float | None = None, description: str | None = None) -> None:
        """Start the bar again (e.g. for a new batch or epoch)."""
        if self._progress is not None:
            kw: dict[str, Any] = {"total": total, "completed": 0}
            if description is not None:
                kw["description"] = description
            self._progress.reset(self._task, **kw)


def _fmt(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


@contextmanager
def progress(description: str, total: float | None, enabled: bool = True) -> Iterator[Bar]:
    """A progress bar for one long loop.

    Args:
        description: shown on the left.
        total: number of steps (``None`` for unknown).
        enabled: ``False`` gives a silent bar (also pass ``False`` off rank 0).
    """
    if not enabled:
        yield Bar(None, None)
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    with prog:
        task = prog.add_task(description, total=total, status="")
        yield Bar(prog, task)
