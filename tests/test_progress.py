"""Progress display: plain timed lines off a terminal, filled status fields on one."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from recoverprune.core import progress as _progress
from recoverprune.core.progress import plan, progress


def _console(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200, color_system=None)
    monkeypatch.setattr(_progress, "console", console)
    return buf


def test_plain_lines_every_interval_with_rate_eta_and_fields(monkeypatch):
    buf = _console(monkeypatch, terminal=False)
    monkeypatch.setenv("RECOVERPRUNE_PROGRESS_INTERVAL", "0")
    with progress("DeepInversion", 4) as bar:
        for i in range(4):
            bar.advance(1, batch=f"{i + 1}/4", loss=1.5)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("DeepInversion: 0/4")
    assert any(line.startswith("DeepInversion: 2/4 (50%)") for line in lines)
    assert "steps/s" in lines[-1] and "ETA" in lines[-1] and "batch=4/4 loss=1.5" in lines[-1]


def test_plain_lines_respect_the_interval(monkeypatch):
    buf = _console(monkeypatch, terminal=False)
    monkeypatch.setenv("RECOVERPRUNE_PROGRESS_INTERVAL", "3600")
    with progress("Recovery", 100) as bar:
        for _ in range(100):
            bar.advance(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2  # when it starts and when it ends
    assert lines[-1].startswith("Recovery: 100/100 (100%)")


def test_terminal_bar_keeps_status_fields_between_updates(monkeypatch):
    buf = _console(monkeypatch, terminal=True)
    with progress("DeepInversion", 3) as bar:
        bar.update(batch="1/1", loss=2.0)
        for _ in range(3):
            bar.advance(1)  # advancing without fields must not blank the status
    final = [line for line in buf.getvalue().splitlines() if "3/3" in line][-1]
    assert "batch=1/1 loss=2" in final


def test_disabled_bar_prints_nothing(monkeypatch):
    buf = _console(monkeypatch, terminal=False)
    monkeypatch.setenv("RECOVERPRUNE_PROGRESS_INTERVAL", "0")
    with progress("Recovery", 3, enabled=False) as bar:
        bar.advance(3, loss=1.0)
    assert buf.getvalue() == ""


def test_overall_eta_adds_the_planned_later_stages(monkeypatch):
    _console(monkeypatch, terminal=False)
    plan({"DeepInversion": 10.0, "Recovery": 1000.0})
    try:
        with progress("DeepInversion", 10) as bar:
            bar.advance(1)
            bar.advance(1)
            stage, overall = bar.eta(), bar.overall_eta()
            assert "all stages ETA" in bar.status()
    finally:
        plan({})
    assert stage is not None and overall is not None
    assert overall > stage
