"""Progress that shows everywhere: rich bars on a terminal; piped, a line at the start, every
:func:`interval` seconds and at the end (stage, done/total, rate, ETA, the run's ETA)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
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

__all__ = ["Bar", "console", "duration", "interval", "on_advance", "plan", "progress"]


console = Console(stderr=True)


#: Estimated seconds of the stages still to come, by bar description, in run order.
_plan: dict[str, float] = {}

#: Called after every step of every bar (see :func:`on_advance`).
_hook: Callable[[], object] | None = None


@contextmanager
def on_advance(hook: Callable[[], object]) -> Iterator[None]:
    """Call ``hook()`` after every step of every bar, inside the ``with`` block.

    The command line hooks its thread policy here; the library itself hooks nothing.

    Example:
        >>> seen = []
        >>> with on_advance(lambda: seen.append(1)), progress("Work", 2, enabled=False) as bar:
        ...     bar.advance(1); bar.advance(1)
        >>> seen
        [1, 1]
    """
    global _hook
    old, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = old


def interval() -> float:
    """Seconds between plain progress lines (``RECOVERPRUNE_PROGRESS_INTERVAL``, default 15).

    Example:
        >>> interval() > 0
        True
    """
    return max(float(os.environ.get("RECOVERPRUNE_PROGRESS_INTERVAL", "15")), 0.0)


def plan(stages: dict[str, float]) -> None:
    """Announce the coming stages (bar descriptions, in order) with their estimated seconds.

    A bar then adds the later stages, scaled as its own compares with its estimate, to its
    ETA. ``plan({})`` forgets the plan.

    Example:
        >>> plan({"DeepInversion": 60.0, "Recovery": 30.0}); plan({})
    """
    _plan.clear()
    _plan.update(stages)


def duration(seconds: float | None) -> str:
    """``seconds`` as ``1h02m``, ``4m05s`` or ``12s`` (``?`` when unknown).

    Example:
        >>> duration(3725), duration(245), duration(12.4), duration(None)
        ('1h02m', '4m05s', '12s', '?')
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Bar:
    """One long loop's progress; a disabled bar only counts.

    Example:
        >>> with progress("Work", 4, enabled=False) as bar:
        ...     bar.advance(1, loss=0.5)
        ...     bar.advance(1)
        >>> bar.completed, bar.status()
        (2.0, 'loss=0.5')
    """

    def __init__(
        self, description: str, total: float | None, rich: tuple[Progress, Any] | None = None,
        lines: bool = False,
    ) -> None:
        self.description, self.total = description, total
        self.completed = 0.0
        self.fields: dict[str, Any] = {}
        self._rich, self._lines = rich, lines
        self._start = time.monotonic()
        self._last_line = -math.inf
        self._c0: float | None = None  # first count and time the rate is measured from
        self._t0 = 0.0

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Advance by ``n``; ``fields`` update the status (the others keep their values)."""
        self.completed += n
        self.fields.update(fields)
        if self._c0 is None:  # the first call may be a jump (a resumed run), not a rate
            self._c0, self._t0 = self.completed, time.monotonic()
        self._refresh()
        if _hook is not None:
            _hook()

    def update(self, **fields: Any) -> None:
        """Update some status fields without advancing."""
        self.fields.update(fields)
        self._refresh()

    def rate(self) -> float | None:
        """Steps per second since the first advance (``None`` until measurable)."""
        if self._c0 is None or self.completed <= self._c0:
            return None
        return (self.completed - self._c0) / max(time.monotonic() - self._t0, 1e-9)

    def eta(self) -> float | None:
        """Seconds left in this loop at the measured rate."""
        rate = self.rate()
        if rate is None or self.total is None:
            return None
        return max(self.total - self.completed, 0.0) / rate

    def overall_eta(self) -> float | None:
        """Seconds left in this loop and the planned stages after it (``None`` without a plan)."""
        left, names = self.eta(), list(_plan)
        if left is None or self.description not in names or self.total is None:
            return None
        later = names[names.index(self.description) + 1 :]
        if not later:
            return left
        spent = time.monotonic() - self._t0
        done = (self.completed - (self._c0 or 0.0)) / self.total
        planned = _plan[self.description]
        scale = spent / done / planned if done > 0 and planned > 0 else 1.0
        return left + scale * sum(_plan[s] for s in later)

    def status(self) -> str:
        """The status fields as text, and the whole run's ETA when a plan is known."""
        fields = self.fields.items()
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields)
        total = self.overall_eta()
        if total is not None and total != self.eta():
            text += f" | all stages ETA {duration(total)}"
        return text.strip()

    def line(self) -> str:
        """The plain progress line: stage, done/total, rate, ETA, status."""
        total = "?" if self.total is None else f"{self.total:.0f}"
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        rate = self.rate()
        speed = f"{rate:.3g} steps/s" if rate else "starting"
        elapsed = duration(time.monotonic() - self._start)
        head = f"{self.description}: {self.completed:.0f}/{total}{pct}, {speed}"
        tail = f"ETA {duration(self.eta())}; {self.status()}"
        return f"{head}, elapsed {elapsed}, {tail}".rstrip("; ")

    def _refresh(self) -> None:
        if self._rich is not None:
            self._rich[0].update(self._rich[1], completed=self.completed, status=self.status())
        elif self._lines and time.monotonic() - self._last_line >= interval():
            self._print()

    def _print(self) -> None:
        self._last_line = time.monotonic()
        console.print(self.line(), markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: float | None, enabled: bool = True) -> Iterator[Bar]:
    """A progress display for one long loop: a rich bar on a terminal, plain lines elsewhere.

    ``description`` is the key of :func:`plan`; ``total`` may be ``None``; ``enabled=False``
    (also off rank 0) gives a silent bar.

    Example:
        >>> with progress("Work", 2, enabled=False) as bar:
        ...     bar.advance(2)
    """
    if not enabled:
        yield Bar(description, total)
        return
    if not console.is_terminal:
        bar = Bar(description, total, lines=True)
        bar._print()
        try:
            yield bar
        finally:
            bar._print()
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    timing = (TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    prog = Progress(*columns, *timing, console=console, transient=False)
    with prog:
        task = prog.add_task(description, total=total, status="")
        yield Bar(description, total, rich=(prog, task))
