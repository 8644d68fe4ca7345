"""Block dropping: whole residual blocks with an identity shortcut (``x + f(x)``) replaced by
``nn.Identity``, a shorter network (PRACTISE, Wang and Wu, CVPR 2023, scores blocks with
trained adaptors; here, untrained, greedily the block whose removal changes the logits least,
``KL(teacher ‖ student)`` on the calibration images), then the shifted BatchNorm statistics
re-estimated on the same images.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.modules import set_submodule
from recoverprune.core.runtime import resolve
from recoverprune.core.spec import InputSpec
from recoverprune.pruning.batchnorm import bn_layers, recalibrate_bn, shifted_bns
from recoverprune.pruning.calibration import Once, images_of
from recoverprune.pruning.channel_spec import CONVERTED_ATTR, DROPPED_ATTR, KEPT_ATTR
from recoverprune.pruning.masks import copy_model
from recoverprune.pruning.measure import count_macs, example_input, run_hooked

__all__ = ["BlockConfig", "drop_blocks", "droppable_blocks"]


@dataclass(frozen=True)
class BlockConfig:
    """Block dropping: ``prune(model, BlockConfig(drop=1))`` replaces whole residual blocks
    by ``nn.Identity``, the least damaging first, so the copy is a shorter network.

    Give ``drop`` or ``speedup``, not both; with neither, one block is dropped (the least
    damaging one: the smallest change that is valid for every model with a droppable block).

    Attributes:
        drop: how many blocks to remove.
        speedup: remove blocks, least damaging first, until the model has at most
            ``1 / speedup`` of the teacher's MACs (Conv/Linear multiply-accumulates).
        recalibrate: re-estimate the running statistics of every BatchNorm layer whose input
            the removal changed, on the images that scored the blocks (``prune``'s ``data=``,
            or DeepInversion images it makes to ``prune``'s ``calibration=`` budget).
            ``False`` keeps the teacher's.
        exclude: glob patterns of blocks to keep; a pattern naming a module keeps every
            block inside it (``("layer1",)`` keeps the first stage whole).

    Example:
        >>> BlockConfig(drop=2).recalibrate
        True
    """

    drop: int | None = None
    speedup: float | None = None
    recalibrate: bool = True
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.drop is not None and (
            isinstance(self.drop, bool) or not isinstance(self.drop, int) or self.drop < 1
        ):
            raise ValueError(f"drop is a number of blocks >= 1, got {self.drop!r}")
        if self.speedup is not None and not 1.0 < float(self.speedup) < math.inf:
            raise ValueError(f"speedup is a MAC ratio and must be > 1, got {self.speedup}")
        if self.drop is not None and self.speedup is not None:
            raise ValueError("give drop= (a number of blocks) or speedup= (a MAC ratio), not both")
        if not isinstance(self.recalibrate, bool):
            raise ValueError(f"recalibrate must be True or False, got {self.recalibrate!r}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise ValueError(
                f"exclude is a tuple of glob patterns, e.g. ('layer1.*',), got {self.exclude!r}"
            )
        object.__setattr__(self, "exclude", tuple(self.exclude))  # a list, made hashable

    def images_wanted(self) -> Literal["scoring"]:
        """The calibration images this step asks for: always some, to score the blocks."""
        return "scoring"


# -- which blocks can go --------------------------------------------------------------
#: boolean attributes that mean "this block adds its input to its output" (torchvision's
#: and the zoo's MobileNetV2 blocks, timm's EfficientNet/MobileNet blocks)
RESIDUAL_FLAGS = ("use_res_connect", "use_residual", "has_skip")
#: block classes whose ``downsample=None`` means an identity shortcut (torchvision, timm);
#: ``downsample`` alone says nothing: stages of ConvNeXt or Swin hold an identity one too
NONE_SHORTCUT_BLOCKS = ("BasicBlock", "Bottleneck")


def _identity_shortcut(m: nn.Module) -> str | nn.Module | None:
    """How ``m`` shows an identity shortcut: ``"flag"``, ``"none"``, the shortcut module
    (which the forward pass must then call on the block's input), or ``None`` (it does not).
    """
    if any(getattr(m, flag, None) is True for flag in RESIDUAL_FLAGS):
        return "flag"
    if type(m).__name__ in NONE_SHORTCUT_BLOCKS and getattr(m, "downsample", 0) is None:
        return "none"
    s = getattr(m, "shortcut", None)
    if isinstance(s, nn.Identity) or (isinstance(s, nn.Sequential) and len(s) == 0):
        return s
    return None  # no shortcut, a projection or an option-A shortcut (the shape changes)


class _Watch:
    """What one forward pass shows of each structural candidate (filled by hooks)."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.called: set[str] = set()
        self.skips: set[str] = set()
        self.inputs: dict[str, Tensor] = {}

    def pre(self, name: str, m: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs or len(args) != 1 or not isinstance(args[0], Tensor):
            self.bad.add(name)  # nn.Identity takes exactly one tensor
        else:
            self.inputs[name] = args[0]

    def post(self, name: str, m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        self.called.add(name)
        x = self.inputs.pop(name, None)
        if x is None or not isinstance(out, Tensor) or (out.shape, out.dtype) != (x.shape, x.dtype):
            self.bad.add(name)

    def skip(self, name: str, m: nn.Module, args: tuple) -> None:
        if args and self.inputs.get(name) is args[0]:
            self.skips.add(name)  # the shortcut reads the block's own input


def _watched(model: nn.Module, structural: dict[str, str | nn.Module], example: Tensor) -> _Watch:
    """Run ``model`` once on ``example`` with hooks on the candidates."""
    watch, handles = _Watch(), []
    modules = dict(model.named_modules())
    for name, how in structural.items():
        m = modules[name]
        handles.append(m.register_forward_pre_hook(partial(watch.pre, name), with_kwargs=True))
        handles.append(m.register_forward_hook(partial(watch.post, name), with_kwargs=True))
        if isinstance(how, nn.Module):
            handles.append(how.register_forward_pre_hook(partial(watch.skip, name)))
    run_hooked(model, example, handles)
    return watch


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    """Whether a pattern names the block or a module that contains it."""
    parts = name.split(".")
    scopes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(s, p) for s in scopes for p in patterns)


def droppable_blocks(
    model: nn.Module, example: Tensor | None = None, *, exclude: Sequence[str] = ()
) -> list[str]:
    """Names of the residual blocks of ``model`` that can be replaced by ``nn.Identity``.

    A block qualifies when it shows an identity shortcut (:data:`NONE_SHORTCUT_BLOCKS` with
    ``downsample=None``, :data:`RESIDUAL_FLAGS`, or an ``nn.Identity``/empty ``shortcut`` the
    forward pass calls on the block's input) *and*, on ``example``, every call takes one
    tensor and returns one of the same shape and dtype; not inside another qualifying block.

    Args:
        model: any network; left as it was (one eval-mode forward pass, hooks removed).
        example: an input batch (default: zeros of the model's input size).
        exclude: glob patterns of blocks to leave out, or of modules whose blocks to leave
            out; each must match some module.

    Example:
        >>> from recoverprune.models import resnet20
        >>> droppable_blocks(resnet20())[:4]
        ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.1']
    """
    names = [n for n, _ in model.named_modules()]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names if n):
            raise ValueError(
                f"exclude pattern {pattern!r} matches no module of {type(model).__name__}"
            )
    structural = {
        n: how for n, m in model.named_modules() if n and (how := _identity_shortcut(m)) is not None
    }
    if not structural:
        return []
    example = example if example is not None else example_input(model)
    watch = _watched(model, structural, example)
    shown = watch.skips | {n for n, how in structural.items() if isinstance(how, str)}
    ok = [n for n in structural if n in watch.called and n not in watch.bad and n in shown]
    outer = [n for n in ok if not any(n.startswith(o + ".") for o in ok)]
    return [n for n in outer if not _excluded(n, exclude)]


# -- choosing and removing --------------------------------------------------------------
def _replace(model: nn.Module, name: str) -> nn.Module:
    """Put an ``nn.Identity`` (in the block's mode) where block ``name`` was; return the block."""
    block = model.get_submodule(name)
    return set_submodule(model, name, nn.Identity().train(block.training))


@contextmanager
def _swapped(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """The named blocks replaced by ``nn.Identity`` inside the ``with``, put back on exit."""
    old: list[tuple[str, nn.Module]] = []
    try:
        for name in names:
            old.append((name, _replace(model, name)))
        yield
    finally:
        for name, block in reversed(old):
            set_submodule(model, name, block)


def _target(
    student: nn.Module, cfg: BlockConfig, candidates: Sequence[str], example: Tensor
) -> tuple[int | None, float | None]:
    """``(blocks to drop, None)`` or ``(None, MAC goal)``, refused when out of reach."""
    if cfg.speedup is None:
        n = cfg.drop or 1
        if n > len(candidates):
            raise ValueError(
                f"drop={n} asks for more blocks than {type(student).__name__} has droppable "
                f"({len(candidates)}: {', '.join(candidates)}): pass drop<={len(candidates)}"
                + (f" or fewer exclude= patterns ({list(cfg.exclude)})" if cfg.exclude else "")
            )
        return n, None
    full = count_macs(student, example)
    with _swapped(student, candidates):
        least = count_macs(student, example)
    goal = full / float(cfg.speedup)
    if least > goal:
        best = full / least
        raise ValueError(
            f"speedup={cfg.speedup} is out of reach by dropping blocks: without all "
            f"{len(candidates)} droppable blocks of {type(student).__name__} "
            f"({', '.join(candidates)}) {least:,} of its {full:,} MACs remain, a speedup of "
            f"{best:.2f}x at most. Pass speedup<={int(best * 100) / 100:.2f}, or prune channels "
            "(ChannelConfig) for more"
        )
    return None, goal


@torch.no_grad()
def _logits(model: nn.Module, images: Tensor) -> Tensor:
    return torch.cat([model(x).float() for x in images.split(256)])


def _damage(student: nn.Module, name: str, images: Tensor, teacher_log_p: Tensor) -> float:
    """``KL(teacher ‖ student without block name)`` on ``images`` (mean over images)."""
    with _swapped(student, [name]):
        log_q = F.log_softmax(_logits(student, images), 1)
    return float(F.kl_div(log_q, teacher_log_p, log_target=True, reduction="batchmean"))


def _greedy(
    teacher: nn.Module,
    student: nn.Module,
    candidates: Sequence[str],
    images: Tensor,
    target: tuple[int | None, float | None],
    example: Tensor,
) -> list[str]:
    """Drop the least damaging remaining block until ``target`` is met; the names dropped."""
    n, goal = target
    with borrowed(teacher):
        log_p = F.log_softmax(_logits(teacher, images), 1)
    remaining, dropped = list(candidates), []
    with borrowed(student):
        while remaining and (n is None or len(dropped) < n):
            if goal is not None and count_macs(student, example) <= goal:
                break
            scores = [_damage(student, name, images, log_p) for name in remaining]
            best = remaining[scores.index(min(scores))]  # the first of equals: deterministic
            _replace(student, best)
            remaining.remove(best)
            dropped.append(best)
    return [name for name in candidates if name in dropped]  # module order


def _resolved_images(model: nn.Module, data: Any) -> Tensor:
    """The scoring images: ``data`` (or what the function ``data`` returns) on the model's device."""
    images = images_of(Once.of(data)())
    if images is None or len(images) < 1:
        raise ValueError(
            "block dropping scores the blocks on images: pass data= (an image tensor, an "
            "(images, labels) pair or a SyntheticImages); recoverprune.prune makes "
            "DeepInversion images when none are given"
        )
    p = next(model.parameters())
    return images.to(p.device, p.dtype)


def _record(student: nn.Module, dropped: Sequence[str]) -> None:
    """Remember the dropped blocks; forget kept channels and converted shortcuts inside them."""
    setattr(student, DROPPED_ATTR, [*getattr(student, DROPPED_ATTR, []), *dropped])

    def inside(name: str) -> bool:
        return any(name == d or name.startswith(d + ".") for d in dropped)

    kept = getattr(student, KEPT_ATTR, None)
    if kept is not None:
        setattr(student, KEPT_ATTR, {k: v for k, v in kept.items() if not inside(k)})
    converted = getattr(student, CONVERTED_ATTR, None)
    if converted is not None:
        setattr(student, CONVERTED_ATTR, [c for c in converted if not inside(c)])


def drop_blocks(
    model: nn.Module,
    config: BlockConfig | None = None,
    data: Any = None,
    *,
    exclude: Sequence[str] = (),
    spec: InputSpec | None = None,
) -> nn.Module:
    """A copy of ``model`` with its least damaging residual blocks replaced by ``nn.Identity``.

    Use it through :func:`recoverprune.prune`. Each step removes the :func:`droppable_blocks`
    entry whose removal changes the logits least (the first of equals in module order).

    Args:
        model: the trained network; left exactly as it was.
        config: how many blocks, or which speed-up (:class:`BlockConfig`).
        data: the images (a tensor, an ``(images, labels)`` pair or a
            :class:`~recoverprune.SyntheticImages`), or a function without arguments that
            returns them, called only after the settings are known to be reachable.
        exclude: more glob patterns of blocks to keep (added to ``config.exclude``).
        spec: the model's input (default: ``InputSpec.of(model)``), traced with zeros of its
            shape unless ``data`` is given as images (then its first image).

    Returns:
        The shorter model, in ``model``'s mode, its dropped blocks recorded (saved with
        :func:`recoverprune.channel_spec`, rebuilt by :func:`recoverprune.models.load_model`).

    Raises:
        ValueError: no droppable block, more blocks asked for than there are, a speed-up
            no set of blocks reaches (the message gives the largest), or no images.

    Example:
        >>> from recoverprune.models import resnet20
        >>> short = drop_blocks(resnet20(), BlockConfig(drop=2), torch.randn(8, 3, 32, 32))
        >>> stages = (short.layer1, short.layer2, short.layer3)
        >>> sum(isinstance(block, nn.Identity) for stage in stages for block in stage)
        2
    """
    cfg = config or BlockConfig()
    patterns = (*cfg.exclude, *exclude)
    data = Once.of(data)
    given = images_of(data()) if data.ready else None
    if given is not None and len(given):
        like = next(model.parameters())
        example = given[:1].to(like.device, like.dtype)
    else:
        example = example_input(model, spec)
    candidates = droppable_blocks(model, example, exclude=patterns)
    if not candidates:
        some = " outside exclude=" + str(list(patterns)) if patterns else ""
        raise ValueError(
            f"{type(model).__name__} has no residual block that can be dropped{some}: none has "
            "an identity shortcut with an output of its input's shape. Prune channels "
            "(ChannelConfig) or weights (a float amount) instead"
            + (", or exclude fewer blocks" if patterns else "")
        )
    student = copy_model(model)
    target = _target(student, cfg, candidates, example)
    images = _resolved_images(model, data)
    dropped = _greedy(model, student, candidates, images, target, example)
    if cfg.recalibrate and bn_layers(student):
        shifted = shifted_bns(model, student, {}, images[:8])
        if shifted:
            rt = resolve(next(student.parameters()).device)
            recalibrate_bn(student, images, rt=rt, layers=shifted)
    _record(student, dropped)
    return student
