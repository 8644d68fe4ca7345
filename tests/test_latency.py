"""Experimental widths chosen for measured latency: the table is measured, the allocation
follows it, and the result is checked against the model's own measured latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import recoverprune
from recoverprune import ChannelConfig, kept_channels, prune
from recoverprune.core.io import fingerprint
from recoverprune.experimental import latency as latency_module
from recoverprune.experimental.latency import (
    FRACTIONS,
    LatencyConfig,
    LatencyTable,
    allocate,
    measured_speedup,
    median_seconds,
    next_goal,
)
from recoverprune.models import resnet20

pytest.importorskip("torch_pruning")


def test_the_table_is_measured_per_layer_and_grows_with_width():
    net = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1))
    table = LatencyTable.measure(net, torch.zeros(1, 3, 16, 16), batch=4, repeats=3)
    assert table.fractions == FRACTIONS and sorted(table.seconds) == ["0", "1"]
    grid = table.seconds["1"]  # 128 -> 128: 16x the MACs at full width than at a quarter
    assert all(v > 0 for row in grid for v in row)
    assert grid[-1][-1] > 2 * grid[0][0]


def test_identical_layers_on_identical_inputs_are_timed_once(monkeypatch):
    timed = []

    def fake(fn, repeats, device="cpu"):
        timed.append(1)
        return float(len(timed))

    monkeypatch.setattr("recoverprune.experimental.latency.median_seconds", fake)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    table = LatencyTable.measure(net, torch.zeros(1, 8, 8, 8), batch=2)
    assert len(timed) == len(FRACTIONS) ** 2  # the second layer reuses the first's times
    assert table.seconds["0"] == table.seconds["1"]


def test_allocation_takes_channels_where_the_table_says_time_goes():
    grid = lambda full: tuple(tuple(full * b for b in FRACTIONS) for _ in FRACTIONS)  # noqa: E731
    table = LatencyTable(FRACTIONS, 1, {"slow": grid(10.0), "fast": grid(1.0)})
    links = {"a": (["slow"], []), "b": (["fast"], [])}
    scores = {"a": torch.ones(16), "b": torch.ones(16)}
    kept = allocate(table, links, scores, goal=8.0)
    assert kept["b"] == 16 and kept["a"] < 16  # equal importance: the slow layer pays
    assert table.predict({}, {"slow": kept["a"] / 16}) <= 8.0  # "fast" at full width
    dead = {"a": torch.ones(16), "b": torch.cat([torch.zeros(8), torch.ones(8)])}
    assert allocate(table, links, dead, goal=10.5) == {"a": 16, "b": 8}  # free channels first
    with pytest.raises(ValueError, match="smaller latency_speedup"):
        allocate(table, links, scores, goal=1.0)  # below every group at a quarter


def test_measured_speedup_times_both_and_restores_the_mode():
    big, small = nn.Linear(1024, 1024).train(), nn.Linear(1024, 4)
    assert measured_speedup(big, small, torch.zeros(256, 1024)) > 2
    assert big.training
    assert median_seconds(lambda: None, 3) >= 0


plans: list[dict[str, int]] = []


def _measured(monkeypatch, readings: list[float]) -> list[float]:
    """Make channel pruning read these speed-ups, in order, from a table of time proportional
    to MACs; return the goals it asked the allocation for."""
    goals: list[float] = []
    plans.clear()
    real_allocate = latency_module.allocate

    def spy(table, links, scores, goal, **kw):
        goals.append(goal)
        plans.append(real_allocate(table, links, scores, goal, **kw))
        return plans[-1]

    def table(model, example, batch=64):  # time proportional to MACs: always reachable
        grid = tuple(tuple(a * b for b in FRACTIONS) for a in FRACTIONS)
        layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        return LatencyTable(FRACTIONS, batch, dict.fromkeys(layers, grid))

    monkeypatch.setattr(latency_module, "allocate", spy)
    monkeypatch.setattr(latency_module.LatencyTable, "measure", staticmethod(table))
    it = iter(readings)
    monkeypatch.setattr(latency_module, "measured_speedup", lambda *a, **k: next(it))
    return goals


def test_a_short_measurement_tightens_the_goal_and_the_widths_are_exact(monkeypatch):
    teacher = resnet20().eval()
    before = fingerprint(teacher)
    goals = _measured(monkeypatch, [1.2, 1.32])
    cfg = LatencyConfig(1.3, batch=16, channel=ChannelConfig(recalibrate=False))
    student = prune(teacher, cfg)
    assert len(goals) == 2 and goals[1] < goals[0]  # short: the next goal is tighter
    assert plans[1] != plans[0]  # the tighter goal pruned more
    for group, width in plans[1].items():  # the plan that met the speed-up, exactly
        assert student.get_submodule(group).out_channels == width
        kept = kept_channels(student).get(group)  # absent: the group kept every channel
        assert kept is None or len(kept) == width
    assert fingerprint(teacher) == before


def test_a_speedup_never_reached_warns_with_what_was(monkeypatch):
    goals = _measured(monkeypatch, [1.1, 1.2, 1.15, 1.18])
    cfg = LatencyConfig(1.3, batch=16, channel=ChannelConfig(recalibrate=False))
    with pytest.warns(UserWarning, match=r"1\.20x, short of latency_speedup=1\.3"):
        prune(resnet20().eval(), cfg)
    assert len(goals) >= 3 and goals == sorted(goals, reverse=True)  # tighter each round


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"speedup": 1.0}, "must be > 1"),
        ({"speedup": 2.0, "channel": ChannelConfig(speedup=2.0)}, "without amount/speedup"),
        ({"speedup": 2.0, "batch": 0}, "batch must be"),
    ],
)
def test_latency_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatencyConfig(**kwargs)


def test_latency_is_experimental_and_off_the_main_configs():
    assert "LatencyConfig" not in recoverprune.__all__
    for gone in ("latency_speedup", "latency_batch"):
        with pytest.raises(TypeError, match=gone):
            ChannelConfig(**{gone: 2.0})


def test_cli_prune_latency_speedup_needs_no_amount(tmp_path, monkeypatch, capsys):
    from recoverprune.cli import main
    from recoverprune.models import load_model

    _measured(monkeypatch, [1.35])
    torch.save({"state_dict": resnet20().state_dict()}, tmp_path / "t.pt")
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(tmp_path / "t.pt")]
    argv += ["--structure", "channel", "--recalibrate-images", "0", "--out", str(tmp_path / "s.pt")]
    assert main([*argv, "--latency-speedup", "1.3"]) == 0
    assert len(plans) == 1 and kept_channels(load_model("resnet20", tmp_path / "s.pt"))
    assert main([*argv[:-6], "--latency-speedup", "1.3", "--out", str(tmp_path / "x.pt")]) == 2
    assert "needs --structure channel" in capsys.readouterr().err


def test_the_next_goal_follows_the_secant_of_what_was_measured():
    # predicted 100 -> measured 1.0; predicted 50 -> measured 0.75 (a fixed 0.5 the table
    # does not see): 1/2 of the time needs a predicted 0, not 50/0.75*0.5
    assert next_goal([(100.0, 1.0), (50.0, 0.75)], 2.0) == pytest.approx(0.1)
    assert next_goal([(100.0, 1.0), (50.0, 0.75)], 1.6) == pytest.approx(25.0)
    assert next_goal([(100.0, 1.0), (50.0, 0.4)], 2.0) > 50.0  # overshot: wider again
    # no usable slope (noise: narrower read slower): scale by the miss, either way
    assert next_goal([(100.0, 0.5), (50.0, 0.8)], 2.0) == pytest.approx(31.25)
    assert next_goal([(100.0, 0.3), (50.0, 0.4)], 2.0) == pytest.approx(62.5)
