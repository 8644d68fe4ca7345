"""Channel pruning through a dependency graph: a physically smaller dense network.

The coupling between layers (BatchNorm, the next layer's input channels, residual adds,
concatenations, depthwise convolutions, the classifier) comes from `Torch-Pruning
<https://github.com/VainF/Torch-Pruning>`_'s ``DependencyGraph`` (MIT, optional extra
``recoverprune[channel]``); this module decides *which* channels go (importance, budget,
protected layers), records which ones stayed, and saves/loads/exports the result.

Parameter-free modules that change the channel count (the CIFAR ResNets' option-A
shortcut ``F.pad`` on channels) cannot be resolved by the graph: the channels they couple
are kept (the residual stream), and only the channels inside the blocks are pruned.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from recoverprune.core.runtime import resolve
from recoverprune.core.spec import infer_input_shape
from recoverprune.pruning.batchnorm import recalibrate_bn, shifted_bns
from recoverprune.pruning.channel_spec import CONVERTED_ATTR, KEPT_ATTR
from recoverprune.pruning.compensate import compensate
from recoverprune.pruning.latency import (
    LatencyTable,
    allocate,
    group_links,
    measured_speedup,
    predicted,
)
from recoverprune.pruning.masks import check_amount, copy_model, magnitude_prune

__all__ = [
    "ChannelConfig",
    "channel_prune",
    "count_macs",
    "example_input",
    "recalibration_images",
]


Importance = Literal["magnitude", "taylor"]


_INSTALL = 'pip install "recoverprune[channel]"'


@dataclass(frozen=True)
class ChannelConfig:
    """Settings of channel pruning (``prune(..., structure="channel", channel=...)``).

    Attributes:
        importance: ``"magnitude"`` (L2 norm of each channel's coupled weights, data-free)
            or ``"taylor"`` (first-order Taylor ``|w * dL/dw|`` on DeepInversion images).
        speedup: prune until the model has ``speedup`` times fewer MACs (overrides amount).
        target_macs: prune until the model has at most this many MACs (overrides amount).
        latency_speedup: prune until the model runs this many times faster, measured on
            this machine (overrides amount): per-group widths are allocated from a latency
            table of every layer measured here at batch ``latency_batch``, then the whole
            model's latency is measured against the input model's and the allocation
            tightened until it is met (see :mod:`recoverprune.pruning.latency`). Opt-in:
            measured on a CIFAR ResNet-32 it recovered worse than a uniform MAC budget at
            the same latency (docs/channel-pruning.md).
        latency_batch: the batch size latency is measured at.
        protect_first: keep the output channels of the first convolution.
        protect_classifier: keep the last Linear layer's outputs (always kept: the class count).
        round_to: keep a multiple of this many channels per group (e.g. 8 for SIMD).
        unstructured: then prune this fraction of the remaining weights unstructured.
        calibration_images: DeepInversion images for ``importance="taylor"`` without ``data``.
        calibration_iterations: DeepInversion steps for those images.
        image_size: input ``H``/``W`` for tracing when the model has no ``pretrained_cfg``.
        residual: also prune the residual stream of the CIFAR ResNets: each parameter-free
            option-A shortcut becomes a 1x1 stride-2 convolution initialised to the same
            channel selection (trainable during recovery). ``False`` keeps the stream
            whole and prunes only inside the blocks (less speed-up).
        compensate: fold the expected contribution of every removed channel (from its
            BatchNorm's statistics, no data) into the bias, or the next BatchNorm's
            ``running_mean``, of the layer that read it. Off by default: measured on the
            CIFAR ResNets it helps when only channels inside the blocks go
            (``residual=False``) but lowers top-1 when residual streams are pruned, and
            it changes nothing once BatchNorm statistics are re-estimated (see
            docs/channel-pruning.md).
        recalibrate_images: then re-estimate the running statistics of every BatchNorm
            whose input pruning changed, on this many DeepInversion images of the model
            (made by :func:`recoverprune.prune` only when one changed; ``data=`` images
            are used instead when given). ``0`` keeps the teacher's statistics. ``None``
            (the default): 64 images, fewer for models whose DeepInversion would cost
            more than a CIFAR ResNet-32's (see ``recoverprune.pipeline.prune``).
        recalibrate_iterations: DeepInversion steps for those images; ``None`` (the
            default): 50, fewer for such models.

    Example:
        >>> ChannelConfig(speedup=2.0).importance
        'magnitude'
    """

    importance: Importance = "magnitude"
    speedup: float | None = None
    target_macs: int | None = None
    latency_speedup: float | None = None
    latency_batch: int = 64
    protect_first: bool = True
    protect_classifier: bool = True
    round_to: int | None = None
    unstructured: float = 0.0
    calibration_images: int = 64
    calibration_iterations: int = 100
    image_size: int | tuple[int, int] | None = None
    residual: bool = True
    compensate: bool = False
    recalibrate_images: int | None = None
    recalibrate_iterations: int | None = None

    def __post_init__(self) -> None:
        if self.importance not in ("magnitude", "taylor"):
            raise ValueError(f"importance must be 'magnitude' or 'taylor', got {self.importance!r}")
        if self.speedup is not None and self.speedup <= 1.0:
            raise ValueError(f"speedup is a MAC ratio and must be > 1, got {self.speedup}")
        if self.target_macs is not None and self.target_macs < 1:
            raise ValueError(f"target_macs must be a positive MAC count, got {self.target_macs}")
        budgets = (self.speedup, self.target_macs, self.latency_speedup)
        if sum(b is not None for b in budgets) > 1:
            raise ValueError("give one of speedup, target_macs and latency_speedup")
        if self.latency_speedup is not None and self.latency_speedup <= 1.0:
            raise ValueError(
                f"latency_speedup is a latency ratio and must be > 1, got {self.latency_speedup}"
            )
        if not 0.0 <= self.unstructured < 1.0:
            raise ValueError(f"unstructured must be in [0, 1), got {self.unstructured}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        if not isinstance(self.compensate, bool):
            raise ValueError(f"compensate must be True or False, got {self.compensate!r}")
        for name, least, what in (
            ("recalibrate_images", 0, "images"),
            ("calibration_images", 0, "images"),
            ("recalibrate_iterations", 1, "steps"),
            ("calibration_iterations", 1, "steps"),
            ("latency_batch", 1, "images"),
        ):
            value = getattr(self, name)
            if value is None and name.startswith("recalibrate"):
                continue  # automatic
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a number of {what} >= {least}, got {value!r}")
        if self.recalibrate_images == 1:
            raise ValueError(
                "recalibrate_images=1 gives no batch statistics: use 0 (off) or at least 2"
            )


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:
        raise ImportError(f"channel pruning needs the torch-pruning package: {_INSTALL}") from exc
    return torch_pruning


# -- measuring ------------------------------------------------------------------------
@contextmanager
def _hooks(model: nn.Module, types: tuple[type, ...], fn: Any) -> Iterator[None]:
    handles = [m.register_forward_hook(fn) for m in model.modules() if isinstance(m, types)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of Conv/Linear layers, per sample.

    Example:
        >>> count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 4, 4))
        3456
    """
    total = [0]

    def hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        w = m.weight
        total[0] += out[0].numel() * (w[0].numel())  # per output element: in/groups * k*k

    with _hooks(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear), hook), torch.no_grad():
        was = model.training
        model.eval()
        try:
            model(example[:1])
        finally:
            model.train(was)
    return total[0]


def example_input(
    model: nn.Module, example: torch.Tensor | None, image_size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    if example is not None:
        return example[:1]

    p = next(model.parameters())
    shape = infer_input_shape(model, image_size)
    return torch.zeros(1, *shape, device=p.device, dtype=p.dtype)


# -- the graph ------------------------------------------------------------------------
def _channel_changers(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[int, int]]:
    """Parameter-free leaf modules whose output has another channel count than their input."""
    found: dict[nn.Module, tuple[int, int]] = {}

    def hook(m: nn.Module, inputs: Any, out: Any) -> None:
        x = inputs[0] if inputs else None
        if (
            isinstance(x, torch.Tensor)
            and isinstance(out, torch.Tensor)
            and min(x.dim(), out.dim()) > 1
            and x.shape[1] != out.shape[1]
        ):
            found[m] = (int(x.shape[1]), int(out.shape[1]))

    leaves = [
        m
        for m in model.modules()
        if not list(m.children())
        and not list(m.parameters(recurse=False))
        and not isinstance(m, nn.Flatten | nn.Unflatten)
    ]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found


def _boundary_pruner(changers: Mapping[nn.Module, tuple[int, int]]) -> Any:
    """A Torch-Pruning layer pruner for channel-changing modules: a graph boundary, never pruned."""
    tp = _tp()

    class Boundary(tp.pruner.BasePruningFunc):  # type: ignore[misc,name-defined]
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            raise RuntimeError(f"{type(layer).__name__} cannot be channel-pruned")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return changers[layer][1]

        def get_in_channels(self, layer: nn.Module) -> int:
            return changers[layer][0]

    return Boundary()


def _convert_shortcuts(model: nn.Module, changers: dict[nn.Module, tuple[int, int]]) -> list[str]:
    """Replace each channel changer that offers ``as_conv(in_channels)`` by that convolution.

    A parameter-free module that changes the channel count (the CIFAR ResNets' option-A
    shortcut) cannot be pruned by the graph; one that can say what it computes as a
    convolution is swapped for it, and the graph prunes the convolution.
    """
    names = {m: n for n, m in model.named_modules()}
    like = next(model.parameters())
    converted = []
    for m, (c_in, c_out) in list(changers.items()):
        as_conv = getattr(m, "as_conv", None)
        if not callable(as_conv):
            continue
        conv = as_conv(c_in).to(like.device, like.dtype)
        if conv.out_channels != c_out:
            continue
        parent, _, attr = names[m].rpartition(".")
        setattr(model.get_submodule(parent), attr, conv)
        converted.append(names[m])
        del changers[m]
    return converted


def _graph(
    model: nn.Module, example: torch.Tensor, residual: bool = True
) -> tuple[Any, set[nn.Module]]:
    tp = _tp()
    changers = _channel_changers(model, example)
    if residual:
        converted = _convert_shortcuts(model, changers)
        setattr(model, CONVERTED_ATTR, [*getattr(model, CONVERTED_ATTR, []), *converted])
    pruner = _boundary_pruner(changers)
    graph = tp.DependencyGraph().build_dependency(
        model,
        example_inputs=example,
        customized_pruners={type(m): pruner for m in changers},
    )
    return graph, set(changers)


def _protected(model: nn.Module, cfg: ChannelConfig, exclude: Sequence[str]) -> list[nn.Module]:
    named = dict(model.named_modules())
    layers = [m for m in named.values() if isinstance(m, nn.Conv2d | nn.Linear)]
    out = [m for n, m in named.items() if any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if cfg.protect_first and layers:
        out.append(next(m for m in layers if isinstance(m, nn.Conv2d | nn.Linear)))
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if linears:
        out.append(linears[-1])  # the class count never changes
    return out


def _check_group(graph: Any, group: Any, name: str) -> None:
    """Refuse a group that couples layers of different widths (an op the graph misread)."""
    n = len(group[0].idxs)
    for dep, _ in group:
        module = dep.target.module
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        if not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        count = graph.get_out_channels(module)
        if count != n:
            label = graph._module2name.get(module, type(module).__name__)
            raise ValueError(
                f"channel pruning cannot resolve how {name!r} ({n} channels) is coupled to "
                f"{label!r} ({count} channels): an operation between them changes the channel "
                f"count without parameters. Keep them whole with exclude=[{name!r}, {label!r}], "
                "or prune unstructured"
            )


def _groups(
    model: nn.Module, example: torch.Tensor, cfg: ChannelConfig, exclude: Sequence[str]
) -> tuple[Any, dict[str, Any]]:
    """The dependency graph and its prunable groups, keyed by the root layer's name."""
    graph, boundaries = _graph(model, example, cfg.residual)
    names = {m: n for n, m in model.named_modules()}
    groups: dict[str, Any] = {}
    ignored = _protected(model, cfg, exclude)
    for group in graph.get_all_groups(
        ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)
    ):
        root = group[0].dep.target.module
        if any(dep.target.module in boundaries for dep, _ in group):
            continue  # coupled through a parameter-free channel change: kept whole
        _check_group(graph, group, names[root])
        groups[names[root]] = group
    return graph, groups


# -- importance -----------------------------------------------------------------------
def _calibration(model: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` for data-driven importance, from the images the caller gave."""
    if data is None:
        raise ValueError(
            'importance="taylor" needs calibration images: pass data= (images, an (images, '
            "labels) pair or a SyntheticImages); recoverprune.prune makes DeepInversion images "
            "when none are given"
        )
    if isinstance(data, torch.Tensor):
        with torch.no_grad():
            return data, model(data).argmax(1)
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    return data.images, data.labels  # SyntheticImages


def _taylor_grads(model: nn.Module, data: Any, cfg: ChannelConfig) -> None:
    """Accumulate ``dCE/dw`` on the calibration images into ``.grad`` (eval-mode BN)."""
    images, labels = _calibration(model, data)
    model.eval()
    model.zero_grad(set_to_none=True)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        for x, y in zip(images.split(64), labels.split(64), strict=True):
            loss = nn.functional.cross_entropy(model(x), y.long(), reduction="sum")
            (loss / len(images)).backward()
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _scores(groups: Mapping[str, Any], cfg: ChannelConfig) -> dict[str, torch.Tensor]:
    tp = _tp()
    imp = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    return {name: imp(group).detach().float().cpu() for name, group in groups.items()}


# -- selection and surgery ------------------------------------------------------------
def _n_pruned(n: int, amount: float, round_to: int | None) -> int:
    keep = max(1, n - math.floor(amount * n + 1e-9))
    if round_to:
        keep = min(n, max(round_to, round_to * round(keep / round_to)))
    return n - keep


def _remove(
    kept: dict[str, torch.Tensor], names: Mapping[Any, str], graph: Any, group: Any
) -> None:
    for dep, idxs in group:
        module = dep.target.module
        name = names.get(module)
        if name is None or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        current = kept.get(name)
        if current is None:
            current = torch.arange(graph.get_out_channels(module))
        mask = torch.ones(len(current), dtype=torch.bool)
        mask[torch.as_tensor(list(idxs), dtype=torch.long)] = False
        kept[name] = current[mask]


#: how much of each group goes: one fraction for all, or the channels each group keeps
Amount = float | Mapping[str, int]


def _prune_groups(
    model: nn.Module,
    graph: Any,
    groups: Mapping[str, Any],
    scores: Mapping[str, torch.Tensor],
    amount: Amount,
    cfg: ChannelConfig,
) -> dict[str, torch.Tensor]:
    """Remove the lowest-scoring channels of every group; return the kept indices per layer."""
    names = {m: n for n, m in model.named_modules()}
    kept: dict[str, torch.Tensor] = {}
    for name, group in groups.items():
        n = len(group[0].idxs)
        if isinstance(amount, Mapping):
            k = n - amount.get(name, n)
        else:
            k = _n_pruned(n, amount, cfg.round_to)
        if k == 0:
            continue
        idxs = torch.argsort(scores[name], stable=True)[:k].sort().values.tolist()
        root = group[0].dep
        exact = graph.get_pruning_group(root.target.module, root.handler, idxs)
        _remove(kept, names, graph, exact)
        exact.prune()
    return kept


def _traced(
    model: nn.Module,
    cfg: ChannelConfig,
    exclude: Sequence[str],
    example: torch.Tensor,
    scores: dict[str, torch.Tensor] | None,
    data: _Once,
) -> tuple[nn.Module, Any, dict[str, Any], dict[str, torch.Tensor]]:
    """A copy of ``model`` to prune, its dependency graph, prunable groups and their scores."""
    target = copy_model(model).eval()  # tracing must not touch BatchNorm statistics
    target.requires_grad_(True)  # the graph is traced through autograd: frozen layers vanish
    graph, groups = _groups(target, example, cfg, exclude)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no channel group that can be pruned (exclude="
            f"{list(exclude)}, protect_first={cfg.protect_first}); allow more layers"
        )
    if scores is None:
        if cfg.importance == "taylor":
            _taylor_grads(target, data(), cfg)
        scores = _scores(groups, cfg)
        target.zero_grad(set_to_none=True)
    return target, graph, groups, scores


def _pruned_copy(
    model: nn.Module,
    amount: Amount,
    cfg: ChannelConfig,
    exclude: Sequence[str],
    example: torch.Tensor,
    scores: dict[str, torch.Tensor] | None,
    data: _Once,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` with ``amount`` of every group's channels removed, and its scores."""
    target, graph, groups, scores = _traced(model, cfg, exclude, example, scores, data)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    kept = _prune_groups(target, graph, groups, scores, amount, cfg)
    for name, p in target.named_parameters():  # pruning makes new Parameters: keep the flags
        p.requires_grad_(flags.get(name, any(flags.values())))
    setattr(target, KEPT_ATTR, kept)
    return target, scores


def _budget_amount(
    model: nn.Module, cfg: ChannelConfig, exclude: Sequence[str], example: torch.Tensor, data: _Once
) -> float:
    """The smallest amount (to 1/256) that meets ``cfg.speedup`` / ``cfg.target_macs``."""
    full = count_macs(model, example)
    goal = cfg.target_macs if cfg.target_macs is not None else full / float(cfg.speedup or 1.0)
    scores = None
    lo, hi = 0.0, 255 / 256
    student, scores = _pruned_copy(model, hi, cfg, exclude, example, scores, data)
    if count_macs(student, example) > goal:
        raise ValueError(
            f"cannot reach {goal:,.0f} MACs (the model has {full:,}): even pruning every group "
            f"to one channel leaves {count_macs(student, example):,}. Protect fewer layers "
            "or ask for less"
        )
    for _ in range(8):
        mid = (lo + hi) / 2
        student, _ = _pruned_copy(model, mid, cfg, exclude, example, scores, data)
        lo, hi = (lo, mid) if count_macs(student, example) <= goal else (mid, hi)
    return hi


def _next_goal(points: list[tuple[float, float]], want: float) -> float:
    """The table's next goal: the secant through the last two ``(predicted seconds, measured
    time relative to the input model)`` points, solved for ``1 / want``. Time the table
    does not see (BatchNorm, activations, additions) makes the relation affine, not
    proportional."""
    (p0, r0), (p1, r1) = points[-2], points[-1]
    if r1 >= r0 or p1 >= p0:  # noise: no usable slope, scale by the miss instead
        return p1 / (r1 * want)
    return max(p1 + (1 / want - r1) * (p0 - p1) / (r0 - r1), 1e-3 * points[0][0])


def _latency_plan(
    model: nn.Module, cfg: ChannelConfig, exclude: Sequence[str], example: torch.Tensor, data: _Once
) -> dict[str, int]:
    """Channels each group keeps for ``cfg.latency_speedup``, measured on this machine.

    The widths come from :func:`~recoverprune.pruning.latency.allocate` on a latency table
    measured here; the pruned copy's latency is then measured against ``model``'s (batch
    ``cfg.latency_batch``, median of interleaved runs) and the table's goal corrected
    (:func:`_next_goal`), up to four rounds. The widest plan that meets the speed-up wins
    (within 5 % of it ends the search); if none does, the fastest, with a warning.
    """
    target, graph, groups, scores = _traced(model, cfg, exclude, example, None, data)
    links = group_links(graph, groups, target)
    sizes = {g: len(s) for g, s in scores.items()}
    table = LatencyTable.measure(model, example, batch=cfg.latency_batch)
    batch = example[:1].expand(cfg.latency_batch, *example.shape[1:]).contiguous()
    want = float(cfg.latency_speedup or 1.0)
    points = [(table.predict({}, {}), 1.0)]
    goal = points[0][0] / want
    tried: list[tuple[float, dict[str, int]]] = []
    for _ in range(4):
        try:
            kept = allocate(table, links, scores, goal, step=cfg.round_to)
        except ValueError:
            if not tried:
                raise
            break  # the correction asks for more than the narrowest widths: keep what was met
        student, _ = _pruned_copy(model, kept, cfg, exclude, example, scores, data)
        tried.append((measured_speedup(model, student, batch, repeats=7), kept))
        if want <= tried[-1][0] <= 1.05 * want:
            break
        points.append((predicted(table, links, kept, sizes), 1 / tried[-1][0]))
        goal = _next_goal(points, want)
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


# -- repair at prune time -------------------------------------------------------------
def _probe(example: torch.Tensor) -> torch.Tensor:
    """A fixed random batch of the example's shape: tells which layer reads which BN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *example.shape[1:]), generator=g, dtype=torch.float32)
    return x.to(example.device, example.dtype)


def recalibration_images(data: Any) -> torch.Tensor | None:
    """The images of ``data`` (a tensor, an ``(images, labels)`` pair or a SyntheticImages).

    Example:
        >>> recalibration_images((torch.zeros(4, 3, 2, 2), torch.zeros(4))).shape
        torch.Size([4, 3, 2, 2])
    """
    if data is None or isinstance(data, torch.Tensor):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0]
    return getattr(data, "images", None)


class _Once:
    """``data``, or what the zero-argument function ``data`` returns, made on first use."""

    def __init__(self, data: Any) -> None:
        self.data, self.made = data, not callable(data) or isinstance(data, nn.Module)

    def __call__(self) -> Any:
        if not self.made:
            self.data, self.made = self.data(), True
        return self.data


def _repair(
    teacher: nn.Module, student: nn.Module, cfg: ChannelConfig, example: torch.Tensor, data: _Once
) -> None:
    """Compensate the removed channels, then re-estimate the shifted BatchNorm statistics.

    Only BatchNorm layers whose input pruning changed are re-estimated, on ``data``'s
    images, which are made (when ``data`` is a function) only if there is one.
    """
    kept, probe = getattr(student, KEPT_ATTR), _probe(example)
    if cfg.compensate:
        compensate(teacher, student, kept, probe)
    if cfg.recalibrate_images == 0:
        return
    shifted = shifted_bns(teacher, student, kept, probe)
    images = recalibration_images(data()) if shifted else None
    if images is not None:
        device = next(student.parameters()).device
        recalibrate_bn(student, images, rt=resolve(device), layers=shifted)


def channel_prune(
    model: nn.Module,
    amount: float | None,
    config: ChannelConfig | None = None,
    *,
    exclude: Sequence[str] = (),
    data: Any = None,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` without its least important output channels.

    Use it through :func:`recoverprune.prune` with ``structure="channel"``.

    Args:
        model: the trained network; left unchanged.
        amount: fraction of each prunable group's channels to remove, in ``[0, 1)``;
            ignored when ``config`` sets ``speedup`` or ``target_macs``.
        config: importance, budget, protected layers (:class:`ChannelConfig`).
        exclude: glob patterns of layers whose output channels are kept.
        data: images for ``importance="taylor"`` and for re-estimating BatchNorm
            statistics (a :class:`~recoverprune.SyntheticImages`, an ``(images, labels)``
            pair or an image tensor), or a function without arguments that returns them,
            called only when they are needed. Required for Taylor importance; without
            it, BatchNorm statistics are not re-estimated (:func:`recoverprune.prune`
            makes DeepInversion images for both).
        example: an input batch for tracing (default: zeros of the model's input size).

    Returns:
        The smaller model, same mode, with :func:`kept_channels` recorded.

    Example:
        >>> from recoverprune.models import resnet20
        >>> small = channel_prune(resnet20(), 0.5)
        >>> small.layer1[0].conv1.out_channels, small.layer3[0].conv2.in_channels
        (8, 32)
    """
    cfg = config or ChannelConfig()
    example = example_input(model, example, cfg.image_size)
    was = model.training
    source = _Once(data)
    plan: Amount
    if cfg.latency_speedup is not None:
        plan = _latency_plan(model, cfg, exclude, example, source)
    elif cfg.speedup is not None or cfg.target_macs is not None:
        plan = _budget_amount(model, cfg, exclude, example, source)
    elif amount is None:
        raise TypeError(
            "give amount, or a ChannelConfig with speedup=, target_macs= or latency_speedup="
        )
    else:
        plan = check_amount(amount)
    student, _ = _pruned_copy(model, plan, cfg, exclude, example, None, source)
    _repair(model, student, cfg, example, source)
    student.train(was)
    if cfg.unstructured > 0:
        kept = getattr(student, KEPT_ATTR)
        keep_dense = [*exclude, *getattr(student, CONVERTED_ATTR, [])]
        student = magnitude_prune(student, cfg.unstructured, exclude=keep_dense)
        setattr(student, KEPT_ATTR, kept)
    return student
