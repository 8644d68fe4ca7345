"""Channel pruning through `Torch-Pruning <https://github.com/VainF/Torch-Pruning>`_'s
``DependencyGraph`` (the ``recoverprune[channel]`` extra): a physically smaller dense network.

Parameter-free modules that change the channel count (the CIFAR ResNets' option-A shortcut)
are graph boundaries: the channels they couple are kept, unless the module offers
``as_conv`` and ``residual=True`` swaps it for that convolution.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from recoverprune.core.modules import set_submodule
from recoverprune.core.runtime import resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.validate import check_fields
from recoverprune.pruning.batchnorm import recalibrate_bn, shifted_bns
from recoverprune.pruning.budget import amount_for
from recoverprune.pruning.calibration import Once, images_of
from recoverprune.pruning.channel_spec import CONVERTED_ATTR, KEPT_ATTR
from recoverprune.pruning.masks import UnstructuredConfig, check_amount, copy_model, magnitude_prune
from recoverprune.pruning.measure import count_macs, example_input, run_hooked

__all__ = ["Amount", "ChannelConfig", "channel_prune", "pruned_copy", "trace"]


Importance = Literal["magnitude", "taylor"]


@dataclass(frozen=True)
class ChannelConfig:
    """Channel pruning: ``prune(model, ChannelConfig(...))`` removes whole output channels
    through a dependency graph, so the result is a smaller dense network (needs
    ``pip install "recoverprune[channel]"``; see docs/channel-pruning.md).

    Give at most one budget: ``amount``, ``speedup`` or ``target_macs``. A config without
    one is a set of settings for a config that brings its own budget (``prune`` refuses it
    alone).

    Attributes:
        importance: ``"magnitude"`` (L2 norm of each channel's coupled weights, data-free)
            or ``"taylor"`` (first-order Taylor ``|w * dL/dw|`` on calibration images).
        amount: fraction of each prunable group's channels to remove, in ``[0, 1)``.
        speedup: prune until the model has ``speedup`` times fewer MACs.
        target_macs: prune until the model has at most this many MACs.
        protect_first: keep the output channels of the first convolution.
        protect_classifier: keep the last Linear layer's outputs (always kept: the class count).
        round_to: keep a multiple of this many channels per group (e.g. 8 for SIMD).
        unstructured: then prune this fraction of the remaining weights unstructured.
        residual: also prune the residual stream of the CIFAR ResNets: each parameter-free
            option-A shortcut becomes a 1x1 stride-2 convolution initialised to the same
            channel selection (trainable during recovery). ``False`` keeps the stream
            whole and prunes only inside the blocks (less speed-up).
        recalibrate: then re-estimate the running statistics of every BatchNorm whose
            input pruning changed, on the calibration images (``prune``'s ``data=``, or
            DeepInversion images it makes, only when one changed; their budget is
            ``prune``'s ``calibration=``). ``False`` keeps the teacher's statistics.

    Example:
        >>> ChannelConfig(speedup=2.0).importance
        'magnitude'
    """

    importance: Importance = "magnitude"
    amount: float | None = None
    speedup: float | None = None
    target_macs: int | None = None
    protect_first: bool = True
    protect_classifier: bool = True
    round_to: int | None = None
    unstructured: float = 0.0
    residual: bool = True
    recalibrate: bool = True

    def __post_init__(self) -> None:
        if self.importance not in ("magnitude", "taylor"):
            raise ValueError(f"importance must be 'magnitude' or 'taylor', got {self.importance!r}")
        if self.amount is not None:
            check_amount(self.amount)
        check_fields(self, 1, "speedup", lo_open=True)  # a MAC ratio
        check_fields(self, 1, "target_macs")
        check_fields(self, 1, "round_to", integer=True)
        if sum(b is not None for b in (self.amount, self.speedup, self.target_macs)) > 1:
            raise ValueError("give one of amount, speedup and target_macs")
        check_fields(self, 0, "unstructured", hi=1, hi_open=True)
        if not isinstance(self.recalibrate, bool):
            raise ValueError(f"recalibrate must be True or False, got {self.recalibrate!r}")

    @property
    def budgeted(self) -> bool:
        """Whether the config says how much to prune (``amount``, ``speedup`` or ``target_macs``)."""
        return any(b is not None for b in (self.amount, self.speedup, self.target_macs))

    def images_wanted(self) -> Literal["taylor", "statistics"] | None:
        """Which calibration images this step may ask for: ``"taylor"`` (importance, then
        re-estimation on the same images), ``"statistics"`` (re-estimation only, when a
        BatchNorm's input changed), or ``None``."""
        if self.importance == "taylor":
            return "taylor"
        return "statistics" if self.recalibrate else None


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:
        msg = 'channel pruning needs the torch-pruning package: pip install "recoverprune[channel]"'
        raise ImportError(msg) from exc
    return torch_pruning


# -- the graph ------------------------------------------------------------------------
def _channel_changers(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[int, int]]:
    """Parameter-free leaf modules whose output has another channel count than their input."""
    found: dict[nn.Module, tuple[int, int]] = {}

    def hook(m: nn.Module, inputs: Any, out: Any) -> None:
        x = inputs[0] if inputs else None
        tensors = isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor)
        if tensors and min(x.dim(), out.dim()) > 1 and x.shape[1] != out.shape[1]:
            found[m] = (int(x.shape[1]), int(out.shape[1]))

    leaves = [
        m for m in model.modules() if not list(m.children()) and not list(m.parameters(False))
        and not isinstance(m, nn.Flatten | nn.Unflatten)
    ]
    run_hooked(model, example, [m.register_forward_hook(hook) for m in leaves])
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
    """Replace each channel changer that offers ``as_conv(in_channels)`` by that convolution."""
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
        set_submodule(model, names[m], conv)
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
    custom = {type(m): pruner for m in changers}
    build = tp.DependencyGraph().build_dependency
    graph = build(model, example_inputs=example, customized_pruners=custom)
    return graph, set(changers)


def _protected(model: nn.Module, cfg: ChannelConfig, exclude: Sequence[str]) -> list[nn.Module]:
    named = dict(model.named_modules())
    layers = [m for m in named.values() if isinstance(m, nn.Conv2d | nn.Linear)]
    out = [m for n, m in named.items() if any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if cfg.protect_first and layers:
        out.append(layers[0])
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if linears:
        out.append(linears[-1])  # the class count never changes
    return out


def _check_group(graph: Any, group: Any, name: str) -> None:
    """Refuse a group that couples layers of different widths (an op the graph misread)."""
    n = len(group[0].idxs)
    for dep, _ in group:
        module = dep.target.module
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if not out or not isinstance(module, nn.Conv2d | nn.Linear):
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
    return images_of(data), data[1] if isinstance(data, tuple | list) else data.labels


def _taylor_grads(copy: nn.Module, data: Any) -> None:
    """Accumulate ``dCE/dw`` on the calibration images into ``.grad`` of the traced copy
    (eval mode, every parameter trainable: :func:`trace` made it so)."""
    images, labels = _calibration(copy, data)
    copy.zero_grad(set_to_none=True)
    for x, y in zip(images.split(64), labels.split(64), strict=True):
        loss = nn.functional.cross_entropy(copy(x), y.long(), reduction="sum")
        (loss / len(images)).backward()


def _scores(groups: Mapping[str, Any], cfg: ChannelConfig) -> dict[str, torch.Tensor]:
    tp = _tp()
    kind, taylor = tp.importance, cfg.importance == "taylor"
    imp = kind.GroupTaylorImportance() if taylor else kind.GroupMagnitudeImportance(p=2)
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
        current = kept[name] if name in kept else torch.arange(graph.get_out_channels(module))
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
        k = n - amount.get(name, n) if isinstance(amount, Mapping) else _n_pruned(n, amount, cfg.round_to)
        if k == 0:
            continue
        idxs = torch.argsort(scores[name], stable=True)[:k].sort().values.tolist()
        root = group[0].dep
        exact = graph.get_pruning_group(root.target.module, root.handler, idxs)
        _remove(kept, names, graph, exact)
        exact.prune()
    return kept


def trace(
    model: nn.Module,
    cfg: ChannelConfig,
    exclude: Sequence[str],
    example: torch.Tensor,
    data: Once,
    scores: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, Any, dict[str, Any], dict[str, torch.Tensor]]:
    """A copy of ``model`` traced on ``example``, its dependency graph, prunable groups and
    their scores by ``cfg``'s importance (``scores`` given: those instead; ``data`` is made
    only for Taylor scores).

    Example:
        >>> from recoverprune.models import resnet20
        >>> t = trace(resnet20(), ChannelConfig(), (), torch.zeros(1, 3, 32, 32), Once(None))
        >>> len(t[3]["layer1.0.conv1"])
        16
    """
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
            _taylor_grads(target, data())
        scores = _scores(groups, cfg)
        target.zero_grad(set_to_none=True)
    return target, graph, groups, scores


def pruned_copy(
    model: nn.Module,
    amount: Amount,
    cfg: ChannelConfig,
    exclude: Sequence[str],
    example: torch.Tensor,
    data: Once,
    scores: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` with ``amount`` of every group's channels removed, and its scores.

    Example:
        >>> from recoverprune.models import resnet20
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> small, _ = pruned_copy(resnet20(), {"layer1.0.conv1": 4}, ChannelConfig(), (), x, Once(None))
        >>> small.layer1[0].conv1.out_channels
        4
    """
    target, graph, groups, scores = trace(model, cfg, exclude, example, data, scores)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    kept = _prune_groups(target, graph, groups, scores, amount, cfg)
    for name, p in target.named_parameters():  # pruning makes new Parameters: keep the flags
        p.requires_grad_(flags.get(name, any(flags.values())))
    setattr(target, KEPT_ATTR, kept)
    return target, scores


def _plan(
    model: nn.Module, cfg: ChannelConfig, exclude: Sequence[str], example: torch.Tensor, data: Once
) -> float:
    """The fraction of every group's channels to remove: ``cfg.amount``, or the smallest
    (to 1/256) that meets ``cfg.speedup`` / ``cfg.target_macs``."""
    if cfg.speedup is None and cfg.target_macs is None:
        if cfg.amount is None:
            raise TypeError(
                "ChannelConfig needs a budget: amount=, speedup= or target_macs=, e.g. "
                "prune(model, ChannelConfig(speedup=2))"
            )
        return float(cfg.amount)
    full = count_macs(model, example)
    goal = cfg.target_macs if cfg.target_macs is not None else full / float(cfg.speedup or 1.0)
    scores: list[dict[str, torch.Tensor]] = []

    def macs_at(amount: float) -> int:
        student, found = pruned_copy(model, amount, cfg, exclude, example, data, *scores[:1])
        scores[:] = [found]
        return count_macs(student, example)

    return amount_for(macs_at, full, goal)


def _probe(example: torch.Tensor) -> torch.Tensor:
    """A fixed random batch of the example's shape: tells which layer reads which BN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *example.shape[1:]), generator=g, dtype=torch.float32)
    return x.to(example.device, example.dtype)


def _recalibrate(teacher: nn.Module, student: nn.Module, example: torch.Tensor, data: Once) -> None:
    """Re-estimate the BatchNorm statistics pruning shifted, on ``data``'s images (made, when
    ``data`` is a function, only if one shifted)."""
    shifted = shifted_bns(teacher, student, getattr(student, KEPT_ATTR), _probe(example))
    images = images_of(data()) if shifted else None
    if images is not None:
        device = next(student.parameters()).device
        recalibrate_bn(student, images, rt=resolve(device), layers=shifted)


#: a change made to the pruned copy before its statistics are re-estimated:
#: ``adjust(teacher, student, kept channels, probe batch)`` (experimental compensation)
Adjust = Callable[[nn.Module, nn.Module, Mapping[str, torch.Tensor], torch.Tensor], Any]


def channel_prune(
    model: nn.Module,
    config: ChannelConfig,
    *,
    exclude: Sequence[str] = (),
    data: Any = None,
    spec: InputSpec | None = None,
    example: torch.Tensor | None = None,
    plan: Amount | None = None,
    adjust: Adjust | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` without its least important output channels.

    Use it through :func:`recoverprune.prune` (``prune(model, ChannelConfig(...))``).

    Args:
        model: the trained network; left unchanged.
        config: budget, importance, protected layers (:class:`ChannelConfig`).
        exclude: glob patterns of layers whose output channels are kept.
        data: images for ``importance="taylor"`` (required) and for re-estimating
            BatchNorm statistics (skipped without), as :func:`recoverprune.prune` takes
            them, or a function without arguments that returns them when needed.
        spec: the model's input (default: ``InputSpec.of(model)``), for tracing.
        example: an input batch for tracing (default: zeros of ``spec``'s shape).
        plan: what each group loses, instead of ``config``'s budget: a fraction, or the
            channels each group keeps by name (experimental latency widths).
        adjust: a change to the pruned copy before re-estimation (experimental).

    Returns:
        The smaller model, same mode, with :func:`kept_channels` recorded.

    Example:
        >>> from recoverprune.models import resnet20
        >>> small = channel_prune(resnet20(), ChannelConfig(amount=0.5))
        >>> small.layer1[0].conv1.out_channels, small.layer3[0].conv2.in_channels
        (8, 32)
    """
    example = example[:1] if example is not None else example_input(model, spec)
    source = Once.of(data)
    if plan is None:
        plan = _plan(model, config, exclude, example, source)
    student, _ = pruned_copy(model, plan, config, exclude, example, source)
    if adjust is not None:
        adjust(model, student, getattr(student, KEPT_ATTR), _probe(example))
    if config.recalibrate:
        _recalibrate(model, student, example, source)
    student.train(model.training)
    if config.unstructured > 0:
        kept = getattr(student, KEPT_ATTR)
        keep_dense = [*exclude, *getattr(student, CONVERTED_ATTR, [])]
        masks = UnstructuredConfig(config.unstructured)
        student = magnitude_prune(student, masks, exclude=keep_dense)
        setattr(student, KEPT_ATTR, kept)
    return student
