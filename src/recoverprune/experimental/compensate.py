"""Experimental: compensation at prune time, the mean contribution of removed channels
folded in (``CompensatedChannelConfig``).

Measured worse than the default where it matters: on the CIFAR ResNets it helps when only
channels inside the blocks go (``ChannelConfig(residual=False)``) but lowers top-1 when
residual streams are pruned, and it changes nothing once BatchNorm statistics are
re-estimated (docs/channel-pruning.md). Off the main path for that reason.

When channel pruning removes channel ``c`` of a BatchNorm whose output (through an
elementwise activation ``f``) is read by a convolution or a Linear layer, that layer
loses the term ``W[:, c] * f(BN_c)``. Its expected value is known from the BatchNorm's
own parameters: under its running statistics the BatchNorm's output is
``N(beta_c, gamma_c^2)``, so ``E[relu(z)] = mu * Phi(mu / sigma) + sigma * phi(mu / sigma)``
(other activations by quadrature). :func:`compensate` adds
``sum over taps of W[:, c] * E[f(BN_c)]`` to the reading layer's bias, or, for a
convolution without bias that feeds a BatchNorm, subtracts it from that BatchNorm's
``running_mean`` (the analytic bias correction of Nagel et al. 2019, "Data-Free
Quantization", as in AIMET). Padding at the borders is ignored.

Which layer reads which BatchNorm, through which activation, is found by one forward pass
of the teacher on a fixed random batch: a pair counts only if the reading layer's input
*equals* ``f(BatchNorm output)``. Everything else (residual adds, concatenations, pooling
in between, grouped convolutions) is left exactly as it is and listed as skipped, so the
result is never a wrong model, only a less compensated one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.pruning.channels import ChannelConfig, channel_prune
from recoverprune.pruning.dispatch import Context, register

__all__ = [
    "ACTIVATIONS",
    "CompensatedChannelConfig",
    "Compensation",
    "compensate",
    "expected_activation",
]


#: elementwise activations recognised between a BatchNorm and the layer that reads it
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda z: z,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "elu": F.elu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

_Norm = nn.modules.batchnorm._BatchNorm
_GRID = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)


@dataclass(frozen=True)
class Compensation:
    """What :func:`compensate` did.

    Attributes:
        corrected: ``reading layer -> where the correction went`` (``"bias"`` or the name
            of the BatchNorm whose ``running_mean`` took it).
        skipped: ``reading layer -> why`` for each layer that lost input channels but was
            left as it is.

    Example:
        >>> Compensation({"conv2": "bn2"}, {}).corrected
        {'conv2': 'bn2'}
    """

    corrected: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def expected_activation(mu: Tensor, sigma: Tensor, activation: str) -> Tensor:
    """``E[f(z)]`` for ``z ~ N(mu, sigma^2)``, elementwise; ``f`` one of :data:`ACTIVATIONS`.

    ReLU and identity in closed form, the others by quadrature on a fine grid (16 sigma).

    Example:
        >>> round(float(expected_activation(torch.tensor([0.0]), torch.tensor([1.0]), "relu")), 4)
        0.3989
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    mu64, sigma64 = mu.double(), sigma.double().abs()
    if activation == "identity":
        out = mu64
    elif activation == "relu":
        safe = sigma64.clamp_min(1e-12)
        t = mu64 / safe
        pdf = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
        out = torch.where(sigma64 > 0, mu64 * cdf + sigma64 * pdf, mu64.clamp_min(0))
    else:
        weights = torch.exp(-0.5 * _GRID * _GRID)
        weights = weights / weights.sum()
        z = mu64.unsqueeze(-1) + sigma64.unsqueeze(-1) * _GRID
        out = (ACTIVATIONS[activation](z) * weights).sum(-1)
    return out.to(mu.dtype)


def _bn_output_moments(bn: _Norm) -> tuple[Tensor, Tensor]:
    """Mean and std of the BatchNorm's output when its input follows its running statistics."""
    n = bn.num_features
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones(n)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros(n)
    sigma = gamma.abs()
    if bn.running_var is not None:
        var = bn.running_var.detach()
        sigma = sigma * torch.sqrt(var / (var + bn.eps))
    return beta.float().cpu(), sigma.float().cpu()


@dataclass
class _Trace:
    """One teacher forward pass: BN outputs, layer inputs, and which BN a layer feeds."""

    bn_out: dict[str, Tensor] = field(default_factory=dict)
    layer_in: dict[str, Tensor] = field(default_factory=dict)
    feeds: dict[str, str] = field(default_factory=dict)  # layer -> the BN reading its output


def _trace(teacher: nn.Module, probe: Tensor) -> _Trace:
    """Record, on ``probe``, what every BN outputs and what every Conv/Linear reads."""
    trace = _Trace()
    # id(output) -> (layer, version, output): the reference keeps the id from being reused
    produced: dict[int, tuple[str, int, Tensor]] = {}
    handles = []

    def on_bn_in(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: Any) -> None:
            x = inputs[0]
            source = produced.get(id(x))
            if source is not None and source[2] is x and source[1] == x._version:
                trace.feeds[source[0]] = name

        return hook

    def on_bn_out(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: Any, out: Tensor) -> None:
            trace.bn_out[name] = out.detach().clone()  # an in-place activation comes next

        return hook

    def on_layer(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: Any, out: Tensor) -> None:
            trace.layer_in[name] = inputs[0].detach()
            produced[id(out)] = (name, out._version, out)

        return hook

    for name, m in teacher.named_modules():
        if isinstance(m, _Norm):
            handles.append(m.register_forward_pre_hook(on_bn_in(name)))
            handles.append(m.register_forward_hook(on_bn_out(name)))
        elif isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(on_layer(name)))
    try:
        with torch.no_grad(), borrowed(teacher):
            teacher(probe)
    finally:
        for h in handles:
            h.remove()
    return trace


def _source(trace: _Trace, layer: str) -> tuple[str, str] | None:
    """``(BatchNorm, activation)`` whose output the layer reads exactly, if any."""
    x = trace.layer_in[layer]
    if not x.is_floating_point() or not bool(x.abs().amax() > 0):
        return None
    head = x.reshape(-1)[:256]
    for bn, out in trace.bn_out.items():
        if out.shape != x.shape:
            continue
        for act, fn in ACTIVATIONS.items():  # a cheap look at the first values, then all
            if _close(fn(out.reshape(-1)[:256]), head) and _close(fn(out), x):
                return bn, act
    return None


def _close(a: Tensor, b: Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _removed(kept: Tensor, n: int) -> Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().squeeze(1)


def _shift(
    t_layer: nn.Module, rows: Tensor, t_bn: _Norm, kept_in: Tensor, act: str
) -> Tensor | None:
    """The mean contribution of the removed inputs to each kept output (``rows``), or None."""
    removed = _removed(kept_in, t_bn.num_features)
    if len(removed) == 0:
        return None
    mu, sigma = _bn_output_moments(t_bn)
    mean = expected_activation(mu[removed], sigma[removed], act)
    w = t_layer.weight.detach().float().cpu().index_select(0, rows)
    w = w.index_select(1, removed).reshape(len(w), len(removed), -1).sum(-1)  # taps summed
    return w @ mean


def _outputs(kept: Mapping[str, Tensor], name: str, layer: nn.Module) -> Tensor:
    count = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return kept.get(name, torch.arange(count))


def _check_slice(t_layer: nn.Module, s_layer: nn.Module, rows: Tensor, cols: Tensor) -> bool:
    """The student layer holds exactly the teacher's weights at ``rows`` x ``cols``."""
    w = t_layer.weight.detach()
    if rows.max() >= len(w) or cols.max() >= w.shape[1]:
        return False
    want = w.index_select(0, rows.to(w.device)).index_select(1, cols.to(w.device))
    got = s_layer.weight.detach()
    return want.shape == got.shape and torch.equal(want.to(got), got)


def _target(
    name: str, s_mods: Mapping[str, nn.Module], trace: _Trace, kept: Mapping[str, Tensor]
) -> tuple[str, str | None]:
    """Where a layer's correction goes: ``("bias", None)``, ``(bn, None)`` or ``("", why)``."""
    layer = s_mods[name]
    if getattr(layer, "bias", None) is not None:
        return "bias", None
    bn_name = trace.feeds.get(name)
    bn = s_mods.get(bn_name or "")
    if not isinstance(bn, _Norm) or bn.running_mean is None:
        return "", "no bias and no BatchNorm right after it to fold the correction into"
    rows = _outputs(kept, name, layer)
    if not torch.equal(kept.get(bn_name or "", torch.arange(bn.num_features)), rows):
        return "", f"its BatchNorm {bn_name!r} kept other channels than the layer"
    return str(bn_name), None


def _candidates(teacher: nn.Module, student: nn.Module) -> list[str]:
    """Conv/Linear layers (ungrouped, same type in both) that lost input channels."""
    t_mods = dict(teacher.named_modules())
    names = []
    for name, s in student.named_modules():
        t = t_mods.get(name)
        if type(t) is not type(s) or not isinstance(s, nn.Conv2d | nn.Linear):
            continue
        if isinstance(s, nn.Conv2d) and (s.groups != 1 or t.groups != 1):
            continue
        if s.weight.shape[1] < t.weight.shape[1]:
            names.append(name)
    return names


def _plan(
    name: str,
    t_mods: Mapping[str, nn.Module],
    s_mods: Mapping[str, nn.Module],
    trace: _Trace,
    kept: Mapping[str, Tensor],
) -> tuple[str, str, str] | str:
    """``(source BN, activation, target)`` for one layer, or the reason it is skipped."""
    source = _source(trace, name)
    if source is None:
        return "its input is not an activation of one BatchNorm (residual add, concat, pooling)"
    bn, act = source
    if bn not in kept:
        return f"its input BatchNorm {bn!r} was not pruned, yet the layer lost inputs"
    rows = _outputs(kept, name, t_mods[name])
    if not _check_slice(t_mods[name], s_mods[name], rows, kept[bn]):
        return f"its weights are not the teacher's at the channels {bn!r} kept"
    target, why = _target(name, s_mods, trace, kept)
    return why if why else (bn, act, target)


@torch.no_grad()
def compensate(
    teacher: nn.Module, student: nn.Module, kept: Mapping[str, Tensor], probe: Tensor
) -> Compensation:
    """Fold the expected contribution of every removed channel into the layer that read it.

    Args:
        teacher: the unpruned model (only read: one forward pass on ``probe`` in eval
            mode, hooks removed afterwards).
        student: its channel-pruned copy, changed in place (biases and BatchNorm
            ``running_mean`` only; no shape changes).
        kept: per pruned layer, the teacher's output-channel indices the student kept
            (``recoverprune.kept_channels``).
        probe: an input batch; a fixed random one is best (zeros make activations
            constant, and a pair is only accepted when the values agree).

    Returns:
        Which layers were corrected, where, and which were skipped and why.

    Example:
        >>> teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                         nn.Conv2d(4, 2, 3)).eval()
        >>> student = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
        ...                         nn.Conv2d(2, 2, 3)).eval()
        >>> kept = {"0": torch.tensor([0, 1]), "1": torch.tensor([0, 1])}
        >>> with torch.no_grad():
        ...     _ = student[3].weight.copy_(teacher[3].weight[:, :2])
        >>> compensate(teacher, student, kept, torch.randn(2, 3, 8, 8)).corrected
        {'3': 'bias'}
    """
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    trace = _trace(teacher, probe)
    done = Compensation()
    for name in _candidates(teacher, student):
        plan = _plan(name, t_mods, s_mods, trace, kept)
        if isinstance(plan, str):
            done.skipped[name] = plan
            continue
        bn, act, target = plan
        rows = _outputs(kept, name, t_mods[name])
        shift = _shift(t_mods[name], rows, t_mods[bn], kept[bn], act)
        if shift is None:
            continue
        if target == "bias":
            bias = s_mods[name].bias
            bias.add_(shift.to(bias))
        else:
            mean = s_mods[target].running_mean
            mean.sub_(shift.to(mean))
        done.corrected[name] = target
    return done


@dataclass(frozen=True)
class CompensatedChannelConfig:
    """Channel pruning, then :func:`compensate` on the pruned copy before its BatchNorm
    statistics are re-estimated: ``prune(model, CompensatedChannelConfig(ChannelConfig(
    amount=0.5, recalibrate=False)))``. Measured worse with residual streams pruned (see
    the module docstring).

    Attributes:
        channel: the channel pruning (with its budget).

    Example:
        >>> CompensatedChannelConfig(ChannelConfig(amount=0.5)).budgeted
        True
    """

    channel: ChannelConfig

    def __post_init__(self) -> None:
        if not isinstance(self.channel, ChannelConfig):
            raise ValueError(f"channel takes a ChannelConfig, got {self.channel!r}")

    @property
    def budgeted(self) -> bool:
        """Whether the channel settings say how much to prune."""
        return self.channel.budgeted

    def images_wanted(self) -> Literal["taylor", "statistics"] | None:
        """The calibration images of the channel settings."""
        return self.channel.images_wanted()


@register(CompensatedChannelConfig)
def _compensated(model: nn.Module, cfg: CompensatedChannelConfig, ctx: Context) -> nn.Module:
    return channel_prune(
        model, cfg.channel, exclude=ctx.exclude, data=ctx.data, spec=ctx.spec, adjust=compensate
    )
