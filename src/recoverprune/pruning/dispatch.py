"""The handler table: which function prunes for which config type (torchao's pattern).

``prune(model, how)`` looks the *type* of each config up here; adding a variant is one
frozen config dataclass and one handler, registered with :func:`register` (the
experimental configs register themselves from ``recoverprune.experimental``). A config
carries only what its handler reads, so no setting can be passed and silently ignored.

=============================  =========================================================
config                         handler
=============================  =========================================================
``float`` / UnstructuredConfig  :func:`~recoverprune.pruning.masks.magnitude_prune`
ChannelConfig                  :func:`~recoverprune.pruning.channels.channel_prune`
BlockConfig                    :func:`~recoverprune.pruning.blocks.drop_blocks`
=============================  =========================================================
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from torch import nn

from recoverprune.core.spec import InputSpec
from recoverprune.pruning.blocks import BlockConfig, drop_blocks
from recoverprune.pruning.calibration import Once
from recoverprune.pruning.channels import ChannelConfig, channel_prune
from recoverprune.pruning.masks import UnstructuredConfig, magnitude_prune

__all__ = ["Context", "Handler", "accepted", "apply", "register", "steps"]


@dataclass(frozen=True)
class Context:
    """What every step of one ``prune`` call shares.

    Attributes:
        exclude: glob patterns of layers (or blocks) to keep whole.
        data: the calibration images, made at most once for all steps.
        spec: the model's input, resolved once at the entry.
        inplace: the step may change the model it is given (unstructured masks only).
    """

    exclude: tuple[str, ...]
    data: Once
    spec: InputSpec
    inplace: bool = False


#: ``handler(model, config, context) -> pruned model``
Handler = Callable[[nn.Module, Any, Context], nn.Module]
H = TypeVar("H", bound=Handler)
_HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[H], H]:
    """Decorator: ``handler`` prunes for configs of ``config_type``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Nothing:
        ...     pass
        >>> @register(Nothing)
        ... def _same(model, cfg, ctx):
        ...     return model
        >>> Nothing in accepted()
        True
        >>> _ = _HANDLERS.pop(Nothing)  # (the example leaves the table as it was)
    """

    def add(handler: H) -> H:
        _HANDLERS[config_type] = handler
        return handler

    return add


def accepted() -> tuple[type, ...]:
    """The config types with a handler."""
    return tuple(_HANDLERS)


def _handler(cfg: Any) -> Handler | None:
    return next((_HANDLERS[t] for t in type(cfg).__mro__ if t in _HANDLERS), None)


def _flat(how: Any) -> tuple[Any, ...]:
    if isinstance(how, list | tuple):
        if not how:
            raise ValueError("prune needs at least one config, got an empty sequence")
        return tuple(s for item in how for s in _flat(item))
    if isinstance(how, numbers.Real) and not isinstance(how, bool):
        return (UnstructuredConfig(float(how)),)
    if _handler(how) is None:
        names = ", ".join(t.__name__ for t in accepted())
        raise TypeError(
            f"prune takes a float amount, a config ({names}) or a list of them, got "
            f"{type(how).__name__} {how!r}"
        )
    return (how,)


def steps(how: Any) -> tuple[Any, ...]:
    """``how`` as the configs it applies, in order, each checked before any work.

    A number is ``UnstructuredConfig(amount)``; a list or tuple is applied in order.

    Raises:
        TypeError: a ``how`` of no accepted type (the message names them).
        ValueError: an empty sequence, or a ChannelConfig without a budget.

    Example:
        >>> [type(s).__name__ for s in steps([BlockConfig(drop=1), 0.5])]
        ['BlockConfig', 'UnstructuredConfig']
    """
    out = _flat(how)
    for i, cfg in enumerate(out):
        if getattr(cfg, "budgeted", True) is False:
            after = " after a BlockConfig (X times fewer MACs than the shorter model)" * any(
                isinstance(c, BlockConfig) for c in out[:i]
            )
            raise ValueError(
                f"{type(cfg).__name__} needs a budget{after}: give amount=, speedup= or "
                "target_macs=, e.g. ChannelConfig(speedup=2)"
            )
    return out


def apply(
    model: nn.Module, how: Any, *, exclude: Sequence[str] = (), data: Any = None,
    spec: InputSpec, inplace: bool = False,
) -> nn.Module:
    """Apply each config of ``how`` (see :func:`steps`) with its handler, in order.

    Example:
        >>> from recoverprune.pruning.masks import is_pruned
        >>> net = nn.Sequential(nn.Linear(4, 4))
        >>> is_pruned(apply(net, 0.5, spec=InputSpec.of(net))), is_pruned(net)
        (True, False)
    """
    todo = steps(how)
    if inplace and not isinstance(todo[0], UnstructuredConfig):
        raise ValueError(
            f"inplace=True applies to unstructured pruning only; {type(todo[0]).__name__} "
            "builds a new model: drop inplace"
        )
    ctx = Context(tuple(exclude), Once.of(data), spec, inplace)
    for cfg in todo:
        model = _handler(cfg)(model, cfg, ctx)  # type: ignore[misc]
        ctx = replace(ctx, inplace=True)  # later steps change the copy the first one made
    return model


@register(UnstructuredConfig)
def _unstructured(model: nn.Module, cfg: UnstructuredConfig, ctx: Context) -> nn.Module:
    return magnitude_prune(model, cfg, exclude=ctx.exclude, inplace=ctx.inplace)


@register(ChannelConfig)
def _channel(model: nn.Module, cfg: ChannelConfig, ctx: Context) -> nn.Module:
    return channel_prune(model, cfg, exclude=ctx.exclude, data=ctx.data, spec=ctx.spec)


@register(BlockConfig)
def _block(model: nn.Module, cfg: BlockConfig, ctx: Context) -> nn.Module:
    return drop_blocks(model, cfg, ctx.data, exclude=ctx.exclude, spec=ctx.spec)
