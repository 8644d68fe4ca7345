"""Experimental: channel widths chosen for measured latency, ``LatencyConfig``.

Measured worse than the default: on a CIFAR ResNet-32, widths from the latency table
recovered to 63.16 % top-1 where uniform channel pruning (``ChannelConfig(speedup=...)``)
recovered to 75.14 %, at about the same measured latency (about 2.2x against 1.94x
faster; docs/channel-pruning.md). Kept for runs that must meet a latency on the machine at
hand; ``recoverprune prune --latency-speedup X`` maps to it.


A latency table is measured on the machine at hand: every Conv2d/Linear layer of the model,
alone, at a grid of kept input and output fractions, on the input shape it sees. Pruning a
channel group narrows the outputs of some layers and the inputs of others, so the table
predicts what each group's channels cost. :func:`allocate` then removes channels greedily,
each step from the group whose next channels save the most predicted time per share of that
group's importance they carry, until the prediction reaches the goal. The idea is that of
NetAdapt (Yang et al., ECCV 2018) and HALP (Shen et al., NeurIPS 2022); the code is this
library's. :func:`latency_plan` checks the result against the model's own measured
latency and tightens the goal where the table was optimistic.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.validate import check_fields
from recoverprune.pruning.calibration import Once
from recoverprune.pruning.channels import ChannelConfig, channel_prune, pruned_copy, trace
from recoverprune.pruning.dispatch import Context, register
from recoverprune.pruning.measure import example_input

__all__ = [
    "FRACTIONS",
    "LatencyConfig",
    "LatencyTable",
    "allocate",
    "group_links",
    "latency_plan",
    "measured_speedup",
    "median_seconds",
    "predicted",
]


@dataclass(frozen=True)
class LatencyConfig:
    """Channel pruning until the model runs ``speedup`` times faster, measured on this machine:
    ``prune(model, LatencyConfig(2.0))``.

    Per-group widths are allocated from a latency table of every layer measured here at
    batch ``batch``; the whole model's latency is then measured against the input model's
    and the allocation tightened until it is met. Measured worse than a uniform MAC budget
    at the same latency (see the module docstring).

    Attributes:
        speedup: the latency ratio to reach, > 1.
        batch: the batch size latency is measured at.
        channel: the other channel-pruning settings (importance, protected layers,
            re-estimation); without a budget of its own.

    Example:
        >>> LatencyConfig(2.0).channel.importance
        'magnitude'
    """

    speedup: float
    batch: int = 64
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        check_fields(self, 1, "speedup", lo_open=True)  # a latency ratio
        check_fields(self, 1, "batch", integer=True)
        if not isinstance(self.channel, ChannelConfig) or self.channel.budgeted:
            raise ValueError(
                "channel= takes a ChannelConfig without amount/speedup/target_macs (the "
                f"latency speed-up is the budget), got {self.channel!r}"
            )

    def images_wanted(self) -> Literal["taylor", "statistics"] | None:
        """The calibration images of the channel settings."""
        return self.channel.images_wanted()


#: kept fractions of a layer's inputs and outputs the table measures; a group keeps at least
#: the smallest (``allocate`` never removes more), so predictions interpolate, never extrapolate
FRACTIONS = (0.25, 0.5, 0.75, 1.0)

_Layer = nn.Conv2d | nn.Linear


def _clock(device: torch.device) -> Callable[[], float]:
    """The clock latency is read from: on one CPU thread the process's CPU time (what an
    idle core would take, even on a busy machine), else wall time (CUDA synchronised)."""
    if device.type == "cuda":

        def synced() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return synced
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def median_seconds(
    fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu"
) -> float:
    """Median time of ``fn()`` over ``repeats`` runs, after one untimed warm-up run.

    On one CPU thread it is the process's CPU time, which a busy machine does not
    inflate; otherwise wall time.

    Example:
        >>> median_seconds(lambda: sum(range(100)), 3) >= 0
        True
    """
    clock = _clock(torch.device(device))
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def measured_speedup(
    model: nn.Module, smaller: nn.Module, batch: torch.Tensor, repeats: int = 5
) -> float:
    """How many times faster ``smaller`` runs ``batch`` than ``model``: the ratio of their
    median times (the clock of :func:`median_seconds`), the two timed alternately (eval
    mode, no gradients; ``model``'s mode is restored).

    Example:
        >>> big, small = nn.Linear(512, 512), nn.Linear(512, 8)
        >>> measured_speedup(big, small, torch.zeros(64, 512)) > 1
        True
    """
    times: tuple[list[float], list[float]] = ([], [])
    clock = _clock(batch.device)
    with borrowed(model, smaller), torch.no_grad():
        for i in range(2 * repeats + 2):  # the first run of each is a warm-up
            net = (model, smaller)[i % 2]
            t0 = clock()
            net(batch)
            if i >= 2:
                times[i % 2].append(clock() - t0)
    return statistics.median(times[0]) / statistics.median(times[1])


@contextmanager
def _input_shapes(model: nn.Module) -> Iterator[dict[str, tuple[int, ...]]]:
    """Record the input shape (without the batch) of every Conv2d/Linear while active."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _Layer):

            def hook(_m: nn.Module, args: tuple, _out: object, name: str = name) -> None:
                shapes.setdefault(name, tuple(args[0].shape[1:]))

            handles.append(m.register_forward_hook(hook))
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def _narrowed(m: _Layer, f_in: float, f_out: float) -> _Layer:
    """A fresh layer like ``m`` with the kept fractions of its inputs and outputs."""

    def keep(n: int, f: float, multiple: int = 1) -> int:
        return max(multiple, multiple * round(n * f / multiple))

    if isinstance(m, nn.Linear):
        return nn.Linear(keep(m.in_features, f_in), keep(m.out_features, f_out))
    if m.groups == m.in_channels == m.out_channels:  # depthwise: in and out go together
        c = keep(m.in_channels, min(f_in, f_out))
        return nn.Conv2d(c, c, m.kernel_size, m.stride, m.padding, m.dilation, groups=c)
    g = m.groups
    return nn.Conv2d(
        keep(m.in_channels, f_in, g),
        keep(m.out_channels, f_out, g),
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        groups=g,
    )


@dataclass(frozen=True)
class LatencyTable:
    """Measured seconds of each Conv2d/Linear at kept input x output fractions.

    Attributes:
        fractions: the grid of kept fractions (``FRACTIONS``).
        batch: the batch size the layers were timed at.
        seconds: layer name -> ``len(fractions) x len(fractions)`` nested tuples, row =
            kept input fraction, column = kept output fraction.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
        >>> table = LatencyTable.measure(net, torch.zeros(1, 3, 8, 8), batch=2, repeats=1)
        >>> sorted(table.seconds), len(table.seconds["0"]), len(table.seconds["0"][0])
        (['0', '2'], 4, 4)
    """

    fractions: tuple[float, ...]
    batch: int
    seconds: dict[str, tuple[tuple[float, ...], ...]]

    @classmethod
    def measure(
        cls, model: nn.Module, example: torch.Tensor, *, batch: int = 64, repeats: int = 5
    ) -> LatencyTable:
        """Time every Conv2d/Linear of ``model`` alone at each grid point (identical layers
        on identical inputs are timed once), on ``example``'s device and dtype."""
        with _input_shapes(model) as shapes, torch.no_grad():
            model(example[:1])
        layers = dict(model.named_modules())
        cache: dict[tuple, float] = {}
        seconds = {}
        for name, shape in shapes.items():
            m = layers[name]
            seconds[name] = tuple(
                tuple(_timed(m, shape, a, b, batch, repeats, example, cache) for b in FRACTIONS)
                for a in FRACTIONS
            )
        return cls(FRACTIONS, batch, seconds)

    def predict(self, f_in: Mapping[str, float], f_out: Mapping[str, float]) -> float:
        """Predicted seconds of all the table's layers at these kept fractions (1 if absent)."""
        return sum(
            _bilinear(grid, self.fractions, f_in.get(n, 1.0), f_out.get(n, 1.0))
            for n, grid in self.seconds.items()
        )


def _timed(
    m: _Layer,
    shape: tuple[int, ...],
    f_in: float,
    f_out: float,
    batch: int,
    repeats: int,
    like: torch.Tensor,
    cache: dict[tuple, float],
) -> float:
    layer = _narrowed(m, f_in, f_out).to(like.device, like.dtype).eval()
    width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    key = (repr(layer), shape[1:], width)
    if key not in cache:
        x = torch.randn(batch, width, *shape[1:], device=like.device, dtype=like.dtype)
        with torch.no_grad():
            cache[key] = median_seconds(lambda: layer(x), repeats, like.device)
    return cache[key]


def _bilinear(
    grid: tuple[tuple[float, ...], ...], fractions: tuple[float, ...], a: float, b: float
) -> float:
    def locate(f: float) -> tuple[int, float]:
        f = min(max(f, fractions[0]), fractions[-1])
        i = max(0, min(len(fractions) - 2, sum(f > x for x in fractions) - 1))
        return i, (f - fractions[i]) / (fractions[i + 1] - fractions[i])

    (i, u), (j, v) = locate(a), locate(b)
    top = (1 - v) * grid[i][j] + v * grid[i][j + 1]
    bottom = (1 - v) * grid[i + 1][j] + v * grid[i + 1][j + 1]
    return (1 - u) * top + u * bottom


def group_links(graph: object, groups: Mapping[str, object], model: nn.Module) -> dict:
    """Group name -> ``(layer names whose outputs it narrows, those whose inputs it narrows)``."""
    names = {m: n for n, m in model.named_modules()}
    links = {}
    for group_name, group in groups.items():
        outs, ins = set(), set()
        for dep, _ in group:  # type: ignore[attr-defined]
            layer = names.get(dep.target.module)
            if layer is None or not isinstance(dep.target.module, _Layer):
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):  # type: ignore[attr-defined]
                outs.add(layer)
            elif graph.is_in_channel_pruning_fn(dep.handler):  # type: ignore[attr-defined]
                ins.add(layer)
        links[group_name] = (sorted(outs), sorted(ins))
    return links


def _fractions(
    kept: Mapping[str, int], sizes: Mapping[str, int], links: Mapping[str, tuple]
) -> tuple[dict[str, float], dict[str, float]]:
    f_in: dict[str, float] = {}
    f_out: dict[str, float] = {}
    for g, (outs, ins) in links.items():
        f = kept[g] / sizes[g]
        f_out.update(dict.fromkeys(outs, f))
        f_in.update(dict.fromkeys(ins, f))
    return f_in, f_out


def predicted(
    table: LatencyTable,
    links: Mapping[str, tuple[list[str], list[str]]],
    kept: Mapping[str, int],
    sizes: Mapping[str, int],
) -> float:
    """Seconds the table predicts with ``kept`` of each group's ``sizes`` channels.

    Example:
        >>> table = LatencyTable((0.25, 1.0), 1, {"a": ((1.0, 2.0), (1.0, 4.0))})
        >>> predicted(table, {"g": (["a"], [])}, {"g": 4}, {"g": 8})
        2.0
    """
    return table.predict(*_fractions(kept, sizes, links))


def allocate(
    table: LatencyTable,
    links: Mapping[str, tuple[list[str], list[str]]],
    scores: Mapping[str, torch.Tensor],
    goal: float,
    *,
    step: int | None = None,
) -> dict[str, int]:
    """Channels to keep per group so that the table predicts at most ``goal`` seconds.

    Each step removes the next ``step`` channels (default: 1/16 of the group) of the
    group whose removal saves the most predicted seconds per share of that group's total
    importance (``scores``) the removed channels carry, the lowest-scoring first; no group
    keeps fewer than the table's smallest fraction. Deterministic: ties go to the first
    group by name.

    Raises:
        ValueError: even every group at its smallest width is predicted above ``goal``.

    Example:
        >>> table = LatencyTable((0.25, 1.0), 1, {"a": ((1.0, 2.0), (1.0, 4.0))})
        >>> allocate(table, {"a": (["a"], [])}, {"a": torch.ones(8)}, goal=2.5)
        {'a': 5}
    """
    sizes = {g: len(s) for g, s in scores.items()}
    order = {g: torch.sort(s.double(), stable=True).values for g, s in scores.items()}
    totals = {g: float(s.double().sum()) or 1.0 for g, s in scores.items()}
    kept = dict(sizes)
    floor = {g: max(1, math.ceil(n * table.fractions[0])) for g, n in sizes.items()}
    now = table.predict(*_fractions(kept, sizes, links))
    while now > goal:
        best, best_gain, best_after = None, -1.0, now
        for g in sorted(kept):
            k = min(step or max(1, sizes[g] // 16), kept[g] - floor[g])
            if k <= 0:
                continue
            removed = sizes[g] - kept[g]
            share = float(order[g][removed : removed + k].sum()) / totals[g]
            after = table.predict(*_fractions({**kept, g: kept[g] - k}, sizes, links))
            if after >= now:
                continue  # narrows nothing the table times
            gain = (now - after) / max(share, 1e-12)
            if gain > best_gain:
                best, best_gain, best_after = (g, k), gain, after
        if best is None:
            raise ValueError(
                f"the latency table predicts {now * 1e3:.2f} ms even with every group at "
                f"{table.fractions[0]:.0%} of its channels, above the goal of "
                f"{goal * 1e3:.2f} ms: ask for a smaller latency_speedup"
            )
        kept[best[0]] -= best[1]
        now = best_after
    return kept


def next_goal(points: list[tuple[float, float]], want: float) -> float:
    """The table's next goal: the secant through the last two ``(predicted seconds, measured
    time relative to the input model)`` points, solved for ``1 / want``. Time the table
    does not see (BatchNorm, activations, additions) makes the relation affine, not
    proportional.

    Example:
        >>> round(next_goal([(100.0, 1.0), (50.0, 0.75)], 1.6), 6)
        25.0
    """
    (p0, r0), (p1, r1) = points[-2], points[-1]
    if r1 >= r0 or p1 >= p0:  # noise: no usable slope, scale by the miss instead
        return p1 / (r1 * want)
    return max(p1 + (1 / want - r1) * (p0 - p1) / (r0 - r1), 1e-3 * points[0][0])


def latency_plan(
    model: nn.Module,
    cfg: LatencyConfig,
    exclude: Sequence[str],
    example: torch.Tensor,
    data: Once,
) -> dict[str, int]:
    """Channels each group keeps for ``cfg.speedup``, measured on this machine.

    The widths come from :func:`allocate` on a latency table measured here; the pruned
    copy's latency is then measured against ``model``'s (batch ``cfg.batch``, median of
    interleaved runs) and the table's goal corrected (:func:`next_goal`), up to four
    rounds. The widest plan that meets the speed-up wins (within 5 % of it ends the
    search); if none does, the fastest, with a warning.
    """
    ch = cfg.channel
    target, graph, groups, scores = trace(model, ch, exclude, example, data)
    links = group_links(graph, groups, target)
    sizes = {g: len(s) for g, s in scores.items()}
    table = LatencyTable.measure(model, example, batch=cfg.batch)
    batch = example[:1].expand(cfg.batch, *example.shape[1:]).contiguous()
    want = float(cfg.speedup)
    points = [(table.predict({}, {}), 1.0)]
    goal = points[0][0] / want
    tried: list[tuple[float, dict[str, int]]] = []
    for _ in range(4):
        try:
            kept = allocate(table, links, scores, goal, step=ch.round_to)
        except ValueError:
            if not tried:
                raise
            break  # the correction asks for more than the narrowest widths: keep what was met
        student, _ = pruned_copy(model, kept, ch, exclude, example, data, scores)
        tried.append((measured_speedup(model, student, batch, repeats=7), kept))
        if want <= tried[-1][0] <= 1.05 * want:
            break
        points.append((predicted(table, links, kept, sizes), 1 / tried[-1][0]))
        goal = next_goal(points, want)
    met = [t for t in tried if t[0] >= want]
    if met:
        return min(met, key=lambda t: t[0])[1]
    reached, kept = max(tried, key=lambda t: t[0])
    warnings.warn(
        f"channel pruning reached a measured latency speed-up of {reached:.2f}x, short of "
        f"latency_speedup={want:g} (a busy machine times noisily): check it, or ask for more",
        stacklevel=3,
    )
    return kept


@register(LatencyConfig)
def _latency(model: nn.Module, cfg: LatencyConfig, ctx: Context) -> nn.Module:
    example = example_input(model, ctx.spec)
    plan = latency_plan(model, cfg, ctx.exclude, example, ctx.data)
    return channel_prune(
        model, cfg.channel, exclude=ctx.exclude, data=ctx.data, example=example, plan=plan
    )
