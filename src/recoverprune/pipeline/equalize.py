"""Data-free first aid before INT8 (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019), each step on a copy of the model: BatchNorm
folded into the convolution before it, cross-layer equalization of consecutive convolutions,
and bias correction of the weight-quantization error that onnxruntime will make."""

from __future__ import annotations

import copy
import functools
import math
import platform
import warnings
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from recoverprune.core.modules import set_submodule

__all__ = [
    "correct_bias",
    "equalize",
    "fold_batchnorm",
    "input_statistics",
    "quantize_weight",
    "run_hooked",
    "saturating_cpu",
    "weight_levels",
    "weight_scale",
]

_RELU = (F.relu, torch.relu, torch.relu_, "relu", "relu_")  # functions and tensor methods
#: equalization rounds over all pairs (a chain couples them); stops earlier once scales settle
ROUNDS, SETTLED = 20, 1e-4


@functools.cache  # a property of the machine; quantize_weight asks on every call
def saturating_cpu() -> bool:
    """True on an x86 CPU without VNNI: there onnxruntime's uint8 x int8 kernels add pairs
    of products in int16, which saturates with full-range weights, so the INT8 file keeps
    7-bit weights (onnxruntime's ``reduce_range``). Measured: on an AVX2-only EPYC the INT8
    file of a small net agreed with it on under 90 % of images with 8-bit weights.

    Example:
        >>> isinstance(saturating_cpu(), bool)
        True
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not bool(getattr(torch.cpu, "_is_vnni_supported", lambda: True)())


def weight_levels() -> int:
    """The largest integer a weight is stored as: 127, or 64 on a :func:`saturating_cpu`."""
    return 64 if saturating_cpu() else 127


def weight_scale(w: Tensor, per_channel: bool = True, levels: int | None = None) -> Tensor:
    """onnxruntime's symmetric int8 scale of a weight (``quant_utils.compute_scale_zp``):
    ``max|w| / levels`` (:func:`weight_levels` by default) computed in float64 and stored as
    float32, 1 where that is below float32's smallest normal; one per output channel
    (shaped to broadcast) or one for the tensor.

    Example:
        >>> weight_scale(torch.tensor([[1.27, -0.5], [0.0, 0.0]]), levels=127).flatten().tolist()
        [0.009999999776482582, 1.0]
    """
    levels = levels or weight_levels()
    dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
    absmax = w.detach().abs().amax(dim=dims, keepdim=True).double()
    scale = 2 * absmax / (2 * levels)
    return torch.where(scale < torch.finfo(torch.float32).tiny, 1.0, scale).float()


def quantize_weight(w: Tensor, per_channel: bool = True, levels: int | None = None) -> Tensor:
    """``w`` as onnxruntime stores it in the INT8 file, dequantized: ``round(w / scale)``
    (half to even) clamped to ``±levels``, times the scale of :func:`weight_scale`.

    Example:
        >>> quantize_weight(torch.tensor([[1.27, 0.004, 0.006]]), levels=127).tolist()
        [[1.2699999809265137, 0.0, 0.009999999776482582]]
    """
    levels = levels or weight_levels()
    scale = weight_scale(w, per_channel, levels)
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def _trace(model: nn.Module, what: str) -> fx.Graph | None:
    """The graph of ``model`` (torch.fx), or ``None`` when it cannot be traced, with a
    warning that ``what`` is skipped (none when ``what`` is empty)."""
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if not what:
            return None
        warnings.warn(
            f"{type(model).__name__} cannot be traced by torch.fx ({first}); {what} skipped",
            stacklevel=3,
        )
        return None


def _convs(graph: fx.Graph, model: nn.Module) -> dict[fx.Node, nn.Module]:
    """The convolutions the forward calls exactly once, by their graph node."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    nodes = [n for n in graph.nodes if n.op == "call_module" and calls[n.target] == 1]
    found = {n: model.get_submodule(str(n.target)) for n in nodes}
    return {n: m for n, m in found.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every BatchNorm that alone reads a convolution's
    output folded into it (the convolution gains a bias) and replaced by ``nn.Identity``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> x = torch.randn(2, 3, 6, 6)
        >>> folded = fold_batchnorm(net)
        >>> type(folded[1]).__name__, torch.allclose(folded(x), net(x), atol=1e-6)
        ('Identity', True)
    """
    model = copy.deepcopy(model).eval()
    graph = _trace(model, "BatchNorm folding")
    once = _convs(graph, model) if graph is not None else {}
    for node, bn in once.items():
        source = node.args[0]  # the conv's output feeds this BatchNorm alone
        conv = once.get(source) if len(getattr(source, "users", ())) == 1 else None  # type: ignore[arg-type]
        if (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and bn.running_mean is not None
        ):
            _fold(conv, bn)
            set_submodule(model, str(node.target), nn.Identity())
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    gamma = bn.weight.double() if bn.weight is not None else 1.0
    beta = bn.bias.double() if bn.bias is not None else 0.0
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else 0.0
    conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + beta).float())


def _passes(
    node: fx.Node, model: nn.Module, kinds: tuple[type, ...] = (nn.Identity, nn.ReLU)
) -> bool:
    """An identity or a ReLU (positively homogeneous: a channel's scale passes it)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), kinds)
    relu = node.op in ("call_function", "call_method") and node.target in _RELU
    return relu and nn.ReLU in kinds


def rectified(model: nn.Module) -> set[nn.Module]:
    """The Conv2d and Linear layers whose output alone reaches a ReLU through identities
    (onnxruntime fuses the ReLU and quantizes its output).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Identity(), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> rectified(net) == {net[0]}
        True
    """
    graph = _trace(model, "")
    found = set()
    for node in graph.nodes if graph is not None else []:
        if node.op != "call_module" or not isinstance(
            model.get_submodule(str(node.target)), nn.Conv2d | nn.Linear
        ):
            continue
        out = node
        while len(out.users) == 1 and _passes(user := next(iter(out.users)), model):
            if _passes(user, model, (nn.ReLU,)):
                found.add(model.get_submodule(str(node.target)))
                break
            out = user
    return found


def _pairs(graph: fx.Graph, model: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """Convolutions ``(conv1, conv2)`` where conv1's output reaches only conv2, through
    identities and ReLUs."""
    convs = {n: m for n, m in _convs(graph, model).items() if isinstance(m, nn.Conv2d)}
    found = []
    for first, conv1 in convs.items():
        node = first
        while len(node.users) == 1:
            user = next(iter(node.users))
            if user in convs and user.args[0] is node:
                if convs[user] is not conv1 and conv1.out_channels == convs[user].in_channels:
                    found.append((conv1, convs[user]))
                break
            if not _passes(user, model) or user.args[0] is not node:
                break
            node = user
    return found


def _by_input(w: Tensor, groups: int) -> Tensor:
    """A convolution weight as ``(groups, out per group, in per group, kernel)``, float64."""
    return w.double().reshape(groups, w.shape[0] // groups, w.shape[1], -1)


@torch.no_grad()
def _equalize_pair(conv1: nn.Conv2d, conv2: nn.Conv2d) -> float:
    """Scale conv1's output channel i by ``1/s_i`` and conv2's input channel i by ``s_i``,
    ``s_i = sqrt(r1_i * r2_i) / r2_i`` with r1, r2 the largest ``|w|`` of the channel in
    each (both become ``sqrt(r1_i * r2_i)``); returns the largest ``|s_i - 1|``. A channel
    with a zero range (pruned) keeps ``s_i = 1``."""
    r1 = conv1.weight.double().abs().flatten(1).amax(1)
    w2 = _by_input(conv2.weight, conv2.groups)
    r2 = w2.abs().amax(dim=(1, 3)).flatten()
    live = (r1 > 0) & (r2 > 0)
    s = torch.where(live, torch.sqrt(r1 * r2) / torch.where(live, r2, 1.0), 1.0)
    conv1.weight.copy_(conv1.weight.double() / s.view(-1, 1, 1, 1))
    if conv1.bias is not None:
        conv1.bias.copy_(conv1.bias.double() / s)
    conv2.weight.copy_((w2 * s.view(conv2.groups, 1, -1, 1)).view(conv2.weight.shape))
    return float((s - 1).abs().max())


def equalize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded (:func:`fold_batchnorm`) and cross-layer
    equalization of each pair conv1 → (ReLU | identity) → conv2 where conv1's output feeds
    only conv2 (grouped and depthwise convolutions included), repeated until the scales
    settle. Exact in real arithmetic: the fp32 outputs stay the same up to float error.
    ReLU6 pairs are left alone (the clip at 6 is not scale-invariant); a model torch.fx
    cannot trace is returned folded as far as possible, with a warning.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        >>> with torch.no_grad():
        ...     _ = net[0].weight[0].mul_(50)
        >>> x, eq = torch.randn(2, 3, 6, 6), equalize(net)
        >>> torch.allclose(eq(x), net(x), atol=1e-4), float(eq[0].weight[0].abs().max().detach()) < 5
        (True, True)
    """
    model = fold_batchnorm(model)
    graph = _trace(model, "cross-layer equalization")
    pairs = _pairs(graph, model) if graph is not None else []
    for _ in range(ROUNDS):
        if max((_equalize_pair(a, b) for a, b in pairs), default=0.0) < SETTLED:
            break
    return model


def input_statistics(
    model: nn.Module, layers: list[nn.Module], images: Tensor
) -> list[tuple[Tensor, float, float]]:
    """For each of ``layers`` (Conv2d or Linear), over ``images`` (batches of 64, forward
    hooks removed afterwards): its input's mean per input channel (float64), minimum and
    maximum.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> [(m.shape, lo >= 0) for m, lo, hi in input_statistics(net, [net[2]], torch.randn(8, 2))]
        [(torch.Size([2]), True)]
    """
    stats: list[list[Any]] = [[0.0, 0, math.inf, -math.inf] for _ in layers]

    def record(i: int, x: Tensor) -> None:
        x = x.detach().double()
        x = x.movedim(1, -1) if isinstance(layers[i], nn.Conv2d) else x
        s = stats[i]
        s[0] = s[0] + x.reshape(-1, x.shape[-1]).sum(0)
        s[1] += x.numel() // x.shape[-1]
        s[2], s[3] = min(s[2], float(x.min())), max(s[3], float(x.max()))

    hooks = [
        m.register_forward_pre_hook(lambda _m, args, i=i: record(i, args[0]))
        for i, m in enumerate(layers)
    ]
    run_hooked(model, images, hooks)
    return [(torch.as_tensor(total) / max(n, 1), lo, hi) for total, n, lo, hi in stats]


def run_hooked(model: nn.Module, images: Tensor, handles: list[Any]) -> None:
    """``model`` run over ``images`` in batches of 64 without gradients, for what the hooks
    of ``handles`` record; the hooks are removed afterwards, whatever happens.

    Example:
        >>> net, seen = nn.Linear(2, 1), []
        >>> run_hooked(net, torch.ones(70, 2), [net.register_forward_hook(lambda *a: seen.append(1))])
        >>> len(seen), len(net._forward_hooks)
        (2, 0)
    """
    try:
        with torch.no_grad():
            for batch in images.split(64):
                model(batch)
    finally:
        for handle in handles:
            handle.remove()


def correct_bias(model: nn.Module, images: Tensor, *, per_channel: bool = True) -> nn.Module:
    """A copy of ``model`` whose convolutions and linear layers subtract the expected output
    shift their weight quantization causes: ``(W_q - W) · E[x]`` with ``E[x]`` the mean input
    per channel over ``images`` (summed over kernel positions; padding ignored, as the paper
    does) and ``W_q`` what onnxruntime stores (:func:`quantize_weight`). A layer without a
    bias gains one.

    Example:
        >>> net, x = nn.Sequential(nn.Linear(4, 2)), torch.randn(64, 4) + 3
        >>> fixed = correct_bias(net, x)
        >>> with torch.no_grad():
        ...     w_q = quantize_weight(net[0].weight)
        ...     shift = (x @ w_q.T + fixed[0].bias - net(x)).mean(0)
        >>> bool(shift.abs().max() < 1e-5)
        True
    """
    model = copy.deepcopy(model).eval()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer, (mean, _, _) in zip(layers, input_statistics(model, layers, images), strict=True):
        g = getattr(layer, "groups", 1)
        with torch.no_grad():
            delta = quantize_weight(layer.weight, per_channel).double() - layer.weight.double()
            d = delta.flatten(2).sum(2) if delta.dim() > 2 else delta  # (out, in per group)
            d = d.view(g, d.shape[0] // g, d.shape[1])
            shift = torch.einsum("goi,gi->go", d, mean.view(g, -1)).flatten()
            bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(shift)
            layer.bias = nn.Parameter((bias - shift).float())
    return model
