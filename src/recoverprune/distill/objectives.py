"""Loss terms of the recovery loop, as small composable pieces.

:func:`~recoverprune.recover` binds each term to both networks (hooks live for the ``with``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    >>> _ = net(torch.randn(2, 3, 6, 6))
    >>> with bind_objective([LogitKD(), FeatureKD(layers="bn")], net, net) as loss_fn:
    ...     z = net(torch.randn(2, 3, 6, 6))
    ...     parts = loss_fn(StepOutputs(z, z.detach(), torch.tensor([0, 1])))
    >>> sorted(parts), round(float(sum(parts.values()).detach()), 6)
    (['feature', 'kd'], 0.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.pruning.batchnorm import bn_layers
from recoverprune.pruning.channel_spec import kept_channels

__all__ = [
    "CrossEntropy",
    "FeatureKD",
    "LogitKD",
    "LossTerm",
    "StepOutputs",
    "bind_objective",
    "feature_layers",
    "kd_loss",
    "kept_error",
    "kept_indices",
    "relative_error",
]


Bound = Callable[["StepOutputs"], Tensor]


@dataclass
class StepOutputs:
    """What one step produced: logits of both networks and the batch's labels."""

    student_logits: Tensor
    teacher_logits: Tensor
    labels: Tensor


class LossTerm(Protocol):
    """A loss term: ``bind`` yields the function of one step's outputs it contributes."""

    name: str

    def bind(self, teacher: nn.Module, student: nn.Module) -> Iterator[Bound]: ...


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch.

    Example:
        >>> import torch
        >>> z = torch.randn(4, 10)
        >>> float(kd_loss(z, z, 4.0)) < 1e-6
        True
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class _PerStep:
    """A term without hooks: ``bind`` yields the term itself, called on each step's outputs."""

    @contextmanager
    def bind(self, teacher: nn.Module, student: nn.Module) -> Iterator[Bound]:
        yield self  # type: ignore[misc]


@dataclass(frozen=True)
class LogitKD(_PerStep):
    """Temperature-scaled KL between teacher and student logits (Hinton et al.).

    Example:
        >>> z = torch.randn(2, 5)
        >>> float(LogitKD(temperature=2.0)(StepOutputs(z, z, torch.tensor([0, 1])))) < 1e-6
        True
    """

    temperature: float = 4.0
    weight: float = 1.0
    name: str = "kd"

    def __call__(self, out: StepOutputs) -> Tensor:
        return self.weight * kd_loss(out.student_logits, out.teacher_logits, self.temperature)


@dataclass(frozen=True)
class CrossEntropy(_PerStep):
    """Cross-entropy of the student to the batch's (synthetic target) labels.

    Example:
        >>> CrossEntropy(weight=0.1).weight
        0.1
    """

    weight: float = 1.0
    name: str = "ce"

    def __call__(self, out: StepOutputs) -> Tensor:
        return self.weight * F.cross_entropy(out.student_logits.float(), out.labels)


def _blocks(model: nn.Module) -> list[str]:
    """Children of ``Sequential``/``ModuleList`` containers that hold a BatchNorm inside."""
    names = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in parent.named_children():
            if any(m is not child for m in bn_layers(child)):
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    # keep the innermost level only: a block that contains other blocks is dropped
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def feature_layers(model: nn.Module, layers: str | Sequence[str] = "auto") -> list[str]:
    """Names of the modules whose outputs :class:`FeatureKD` matches: ``"blocks"`` (children
    of containers holding a BatchNorm: a ResNet's blocks), ``"bn"``, ``"auto"`` (blocks, else
    BatchNorms), or a sequence of module names.

    Example:
        >>> from recoverprune.models import resnet20
        >>> feature_layers(resnet20())[:2], len(feature_layers(resnet20(), "bn"))
        (['layer1.0', 'layer1.1'], 19)
    """
    modules = dict(model.named_modules())
    if not isinstance(layers, str):
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"feature layers {missing} are not modules of {type(model).__name__}")
        return list(layers)
    if layers not in ("auto", "blocks", "bn"):
        raise ValueError(
            f"layers must be 'auto', 'blocks', 'bn' or a list of names, got {layers!r}"
        )
    found = _blocks(model) if layers in ("auto", "blocks") else []
    if not found and layers != "blocks":
        bns = set(bn_layers(model))
        found = [n for n, m in modules.items() if m in bns]
    return found


@dataclass(frozen=True)
class FeatureKD:
    """Match the student's intermediate features to the teacher's at the same places.

    Same-named modules (``layers``, see :func:`feature_layers`) are compared by relative
    squared error ``‖s − t‖² / ‖t‖²``, averaged, times ``weight``; a channel-pruned layer on
    the teacher channels it kept (:func:`recoverprune.kept_channels`), else skipped. With
    ``depth_weighted`` the *i*-th layer (in the order of :func:`feature_layers`) counts
    ``i`` times as much as the first, so the last feature map before pooling, which the
    classifier reads, weighs most (MiR, Liang et al. CVPR 2022; DFBF, EUSIPCO 2023).

    Example:
        >>> FeatureKD(weight=2.0).layers
        'auto'
    """

    layers: str | tuple[str, ...] = "auto"
    weight: float = 1.0
    depth_weighted: bool = False
    name: str = "feature"

    def _pairs(self, teacher: nn.Module, student: nn.Module) -> list[str]:
        t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
        names = [n for n in feature_layers(teacher, self.layers) if n in s_mods]
        usable = [n for n in names if type(t_mods[n]) is type(s_mods[n])]
        if not usable:
            warnings.warn(
                f"FeatureKD found no module of the teacher ({type(teacher).__name__}) in the "
                f"student ({type(student).__name__}) to match (layers={self.layers!r}); only "
                "the other loss terms are used. Pass layers=[...] naming modules both share.",
                stacklevel=3,
            )
        return usable

    @contextmanager
    def bind(self, teacher: nn.Module, student: nn.Module) -> Iterator[Bound]:
        names = self._pairs(teacher, student)
        kept = kept_indices(student, names)
        t_out: dict[str, Tensor] = {}
        s_out: dict[str, Tensor] = {}
        handles = [
            dict(model.named_modules())[n].register_forward_hook(
                lambda _m, _i, out, n=n, store=store: store.__setitem__(n, out)
            )
            for model, store in ((teacher, t_out), (student, s_out))
            for n in names
        ]

        def loss(out: StepOutputs) -> Tensor:
            terms, weights = [], []
            for depth, n in enumerate(names, start=1):
                error = kept_error(s_out.pop(n), t_out.pop(n), kept, n)
                if error is None:
                    continue  # a channel-pruned layer without recorded indices
                terms.append(error)
                weights.append(float(depth) if self.depth_weighted else 1.0)
            if not terms:
                return out.student_logits.new_zeros(())
            w = torch.tensor(weights, device=terms[0].device)
            return self.weight * (torch.stack(terms) * w).sum() / w.sum()

        try:
            yield loss
        finally:
            for h in handles:
                h.remove()


def relative_error(student: Tensor, teacher: Tensor) -> Tensor:
    """``‖s − t‖² / ‖t‖²`` in float32, the teacher's side detached.

    Example:
        >>> t = torch.ones(2, 3)
        >>> float(relative_error(2 * t, t))
        1.0
    """
    s, t = student.float(), teacher.detach().float()
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-8)


def kept_error(
    s: Tensor, t: Tensor, kept: dict[tuple[str, int], Tensor], name: str
) -> Tensor | None:
    """:func:`relative_error` of the student's output ``s`` of module ``name`` to the
    teacher's ``t`` on the teacher channels the student kept (``kept``, from
    :func:`kept_indices`); ``None`` when their widths differ and no indices are recorded.

    Example:
        >>> t = torch.ones(2, 4)
        >>> float(kept_error(t[:, :2], t, {("fc", 2): torch.tensor([0, 3])}, "fc"))
        0.0
        >>> kept_error(t[:, :2], t, {}, "fc") is None
        True
    """
    idx = kept.get((name, s.shape[1]))
    if s.shape != t.shape and idx is not None:
        t = t.index_select(1, idx.to(t.device))
    return relative_error(s, t) if s.shape == t.shape else None


def kept_indices(student: nn.Module, names: Sequence[str]) -> dict[tuple[str, int], Tensor]:
    """``(layer, width) -> teacher channel indices`` for a channel-pruned ``student``: a
    layer's own, or for a block those of its last layer of that width (pruning couples a
    residual block's last BatchNorm and shortcut)."""
    recorded = kept_channels(student) or {}
    order = [m for m, _ in student.named_modules() if m in recorded]  # forward order
    out: dict[tuple[str, int], Tensor] = {}
    for n in names:
        inside = [recorded[m] for m in order if m == n or m.startswith(n + ".")]
        for idx in inside:  # the last one of each width wins
            out[(n, len(idx))] = idx
    return out


@contextmanager
def bind_objective(
    terms: Sequence[LossTerm], teacher: nn.Module, student: nn.Module
) -> Iterator[Callable[[StepOutputs], dict[str, Tensor]]]:
    """Bind every term; yield a function from one step's outputs to each term's loss (hooks
    removed when the block ends, also on an exception)."""
    with ExitStack() as stack:
        bound = [(t.name, stack.enter_context(t.bind(teacher, student))) for t in terms]
        yield lambda out: {name: fn(out) for name, fn in bound}
