"""Block-local recovery: each student block learns its teacher block's map on the teacher's
own inputs, so errors of earlier blocks do not pile up (the first phase of a structured
student's recovery, before end-to-end distillation).

Example:
    >>> import torch
    >>> from recoverprune.models import resnet20
    >>> net = resnet20().eval()
    >>> with block_local(net, net) as local:
    ...     _ = net(torch.randn(2, 3, 32, 32))
    ...     float(local().detach())
    0.0
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from recoverprune.distill.objectives import feature_layers, kept_error, kept_indices
from recoverprune.pruning.channel_spec import kept_channels

__all__ = ["block_local", "local_blocks"]


def _input_width(block: nn.Module) -> int | None:
    """Channels the block reads: the input width of its first convolution or linear layer."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return None


def _input_indices(student: nn.Module, block: str, width: int) -> Tensor | None:
    """Teacher channels a block of a channel-pruned ``student`` reads: those kept by the last
    recorded layer of that width registered before the block (what produced its input in a
    network written in forward order, as ResNets, MobileNets and VGGs are)."""
    recorded = kept_channels(student) or {}
    found = None
    for name, _ in student.named_modules():
        if name == block or name.startswith(block + "."):
            break
        if name in recorded and len(recorded[name]) == width:
            found = recorded[name]
    return found


def local_blocks(teacher: nn.Module, student: nn.Module) -> dict[str, Tensor | None]:
    """Blocks both networks share (:func:`feature_layers` ``"blocks"``, same type), each with
    the teacher input channels its student block reads (``None``: all of them).

    A block whose input width changed but whose input channels are not recorded is left out.

    Example:
        >>> from recoverprune.models import resnet20
        >>> blocks = local_blocks(resnet20(), resnet20())
        >>> len(blocks), blocks["layer1.0"]
        (9, None)
    """
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    out: dict[str, Tensor | None] = {}
    for name in feature_layers(teacher, "blocks"):
        if name not in s_mods or type(s_mods[name]) is not type(t_mods[name]):
            continue
        s_width, t_width = _input_width(s_mods[name]), _input_width(t_mods[name])
        if s_width is None or s_width == t_width:
            out[name] = None
            continue
        idx = _input_indices(student, name, s_width)
        if idx is not None:
            out[name] = idx
    return out


@contextmanager
def block_local(
    teacher: nn.Module, student: nn.Module, weight: float = 1.0
) -> Iterator[Callable[[], Tensor] | None]:
    """While the block lasts, every teacher forward records each shared block's input and
    output; the yielded function runs each student block on the teacher's input (its kept
    channels) and returns ``weight`` times the mean relative squared error to the teacher
    block's output (its kept channels). ``None`` (with a warning) when the networks share
    no block.
    Hooks are removed when the block ends, also on an exception.
    """
    blocks = local_blocks(teacher, student)
    if not blocks:
        warnings.warn(
            f"block-local recovery found no block of the teacher ({type(teacher).__name__}) "
            f"in the student ({type(student).__name__}); it is skipped.",
            stacklevel=3,
        )
        yield None
        return
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    kept_out = kept_indices(student, list(blocks))
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    handles = [
        t_mods[n].register_forward_hook(
            lambda _m, inp, out, n=n: seen.__setitem__(n, (inp[0], out))
        )
        for n in blocks
    ]

    def loss() -> Tensor:
        terms = []
        for name, idx in blocks.items():
            t_in, t_out = seen.pop(name)
            x = t_in.detach() if idx is None else t_in.detach().index_select(1, idx.to(t_in.device))
            error = kept_error(s_mods[name](x), t_out, kept_out, name)
            if error is not None:  # None: widths differ and no recorded channels to compare on
                terms.append(error)
        if not terms:
            return torch.zeros((), device=t_out.device)
        return weight * torch.stack(terms).mean()

    try:
        yield loss
    finally:
        for h in handles:
            h.remove()
