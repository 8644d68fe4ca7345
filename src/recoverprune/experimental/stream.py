"""Streamed synthesis (experimental): fresh generator batches interleaved with distillation.

Measured: the stream did not beat the fixed DeepInversion set at any budget measured
(``docs/results.md``); it is kept for long structured recoveries that may need fresh images.

A :class:`SyntheticStream` is a transfer source (:mod:`recoverprune.distill.source`) that
:func:`recoverprune.recover` takes instead of a fixed set; :class:`StreamSource` makes one
for :func:`recoverprune.compress` (``source=StreamSource()``, ``--synthesis stream``).
Before the first epoch it fills its pool with ``initial_batches`` batches of the
amortised generator; at the start of every later epoch it adds ``batches_per_epoch``
new ones (made against the current student, for the decision-adversarial term), the
oldest leaving once the pool holds ``pool_size`` images, or ``pool_bytes`` of pixels
when that is fewer. Each distillation epoch then takes ``steps_per_epoch`` steps on
batches drawn from the pool.

Images are kept as 8-bit pixels (the generator's images are valid pixels), so a pool of
8,192 CIFAR images takes 25 MB; at 224 x 224 RGB the default 256 MiB holds 1,783. The
whole state (synthesizer, pool, counts) round-trips through
:meth:`SyntheticStream.state_dict`, which recovery checkpoints every epoch:
a killed run resumes to the same student bitwise. Under torchrun each rank streams its
own batches (seeded by rank), so a run is deterministic for a seed and world size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recoverprune.core.io import fingerprint
from recoverprune.core.runtime import Runtime, generator
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import stage_key
from recoverprune.core.validate import check_fields
from recoverprune.experimental.generator import AmortisedSynthesizer, GeneratorConfig
from recoverprune.pipeline.compress import SourceContext
from recoverprune.pipeline.presets import Preset

__all__ = ["StreamConfig", "StreamSource", "SyntheticStream", "stream_for"]


@dataclass(frozen=True)
class StreamConfig:
    """How a stream interleaves synthesis with distillation.

    Attributes:
        batch_size: images per generator batch.
        initial_batches: batches in the pool before the first distillation step.
        batches_per_epoch: new batches at the start of every later epoch.
        steps_per_epoch: distillation steps per epoch (the epoch count is
            ``DistillConfig.epochs``).
        pool_size: the most images kept (oldest out first).
        pool_bytes: the most memory the pool's 8-bit pixels take: large inputs keep fewer
            images than ``pool_size`` (never fewer than one batch).
        generator: the amortised synthesizer's settings.

    Example:
        >>> StreamConfig(pool_size=512).pool_size
        512
        >>> StreamConfig().capacity((3, 224, 224)), StreamConfig().capacity((3, 32, 32))
        (1783, 8192)
    """

    batch_size: int = 128
    initial_batches: int = 8
    batches_per_epoch: int = 2
    steps_per_epoch: int = 8
    pool_size: int = 8192
    pool_bytes: int = 256 * 2**20
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def capacity(self, shape: Sequence[int]) -> int:
        """Images the pool keeps for inputs of ``shape`` (channels, height, width)."""
        return max(self.batch_size, min(self.pool_size, self.pool_bytes // math.prod(shape)))

    def __post_init__(self) -> None:
        check_fields(self, 2, "batch_size", integer=True)
        check_fields(self, 1, "initial_batches", "steps_per_epoch", "pool_bytes", integer=True)
        check_fields(self, 0, "batches_per_epoch", integer=True)
        check_fields(self, self.batch_size, "pool_size", integer=True)  # one batch at least


class SyntheticStream:
    """A transfer source of fresh synthetic batches for :func:`recoverprune.recover`.

    Args:
        teacher: the teacher the images are made from (the same one given to recover).
        config: :class:`StreamConfig`.
        input: the teacher's input (default ``InputSpec.of(teacher)``).
        seed: the stream of rank ``r`` depends only on ``(seed, r)``.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune, recover
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
        >>> gen = GeneratorConfig(width=16, warmup_batches=1, warmup_steps=2, inner_steps=1)
        >>> cfg = StreamConfig(batch_size=8, initial_batches=2, steps_per_epoch=2,
        ...                    pool_size=24, generator=gen)
        >>> stream = SyntheticStream(net, cfg, input=InputSpec.of(net, image_size=8))
        >>> student = recover(net, prune(net, 0.5), stream, epochs=3, progress=False)
        >>> stream.made, len(stream)
        (48, 24)
    """

    def __init__(
        self,
        teacher: nn.Module,
        config: StreamConfig | None = None,
        *,
        input: InputSpec | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or StreamConfig()
        self.spec = input or InputSpec.of(teacher)
        self.teacher_fp = fingerprint(teacher)
        self.seed = seed
        self.images = torch.zeros(0, *self.spec.shape, dtype=torch.uint8)
        self.labels = torch.zeros(0, dtype=torch.long)
        self.made = 0
        self.seconds = 0.0  # spent making batches (what a report shows; not in the key)
        self.synth: AmortisedSynthesizer | None = None
        mean, std = self.spec.normalisation()
        self.fill = tuple(-m / s for m, s in zip(mean, std, strict=True))  # black crops
        self._m = torch.tensor(mean).view(1, -1, 1, 1)
        self._s = torch.tensor(std).view(1, -1, 1, 1)

    # -- the transfer-source protocol ----------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images (normalised, float32) and labels of the pool at ``indices``."""
        idx = indices.long()
        x = self.images[idx].float().div_(255)
        return (x - self._m) / self._s, self.labels[idx]

    def batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int
    ) -> list[Tensor]:
        """``steps_per_epoch`` batches drawn uniformly from the pool by ``(seed, epoch, rank)``."""
        g = generator(seed, "pool", epoch, rank)
        batch_size = min(batch_size, len(self))  # as a fixed set's batches: no larger than it
        n = self.config.steps_per_epoch * batch_size
        return list(torch.randint(0, len(self), (n,), generator=g).split(batch_size))

    def key(self) -> dict[str, Any]:
        """What identifies the images this stream makes (for recovery's resume check)."""
        return stage_key(
            config=asdict(self.config),
            spec=self.spec.to_dict(),
            teacher=self.teacher_fp,
            seed=self.seed,
        )

    def start(self, teacher: nn.Module, rt: Runtime, state: dict[str, Any] | None) -> None:
        """Bind the (borrowed) teacher and the runtime; the pool as ``state`` holds it, or
        its first ``initial_batches`` batches.

        Raises:
            ValueError: the stream was built from another teacher.
        """
        if fingerprint(teacher) != self.teacher_fp:
            raise ValueError(
                "this SyntheticStream was made for another teacher: build it from the teacher "
                "given to recover()"
            )
        with torch.no_grad():
            probe = teacher(rt.prepare_input(torch.zeros(2, *self.spec.shape)))
        seed = self.seed if rt.world_size == 1 else self.seed * 1009 + rt.rank
        self.synth = AmortisedSynthesizer(
            teacher, self.spec, int(probe.shape[1]), self.config.generator, rt, seed
        )
        if state is not None:
            self.load_state_dict(state)
        elif not len(self):
            self.grow(None, self.config.initial_batches)

    def on_epoch(self, student: nn.Module, epoch: int) -> dict[str, int]:
        """Before every epoch but the first: fresh images against the student as it is."""
        if epoch > 0:
            self.grow(student)
        return {"images": self.made}

    def grow(self, student: nn.Module | None, batches: int | None = None) -> None:
        """Add ``batches`` new batches (default ``batches_per_epoch``) to the pool."""
        assert self.synth is not None, "start() first"
        cfg = self.config
        t0 = time.perf_counter()
        keep = cfg.capacity(self.spec.shape)
        for _ in range(cfg.batches_per_epoch if batches is None else batches):
            x, y, _ = self.synth.make_batch(cfg.batch_size, student)
            pixels = (x * self._s + self._m).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
            self.images = torch.cat([self.images, pixels])[-keep:]
            self.labels = torch.cat([self.labels, y])[-keep:]
            self.made += len(y)
        self.seconds += time.perf_counter() - t0

    def state_dict(self) -> dict[str, Any]:
        assert self.synth is not None, "start() first"
        return {
            "synth": self.synth.state_dict(),
            "images": self.images.clone(),
            "labels": self.labels.clone(),
            "made": self.made,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.synth is not None, "start() first"
        self.synth.load_state_dict(state["synth"])
        self.images, self.labels = state["images"].clone(), state["labels"].clone()
        self.made = int(state["made"])
        self.seconds = float(state.get("seconds", 0.0))


def stream_for(p: Preset) -> StreamConfig:
    """The stream of a preset: its budget in generator batches (``StreamConfig()`` for quick).

    The pool starts with about ``p.n`` images (at most 8 batches) in batches of at most 128,
    and the warm-up batches take at most ``p.iterations`` steps.

    Example:
        >>> from recoverprune import PRESETS
        >>> cfg = stream_for(PRESETS["tiny"])
        >>> cfg.batch_size, cfg.initial_batches, cfg.generator.warmup_steps
        (16, 2, 4)
    """
    default = StreamConfig()
    batch = min(default.batch_size, p.batch_size)
    initial = max(1, min(default.initial_batches, p.n // batch))
    warm = min(default.generator.warmup_steps, p.iterations)
    return replace(
        default,
        batch_size=batch,
        initial_batches=initial,
        pool_size=max(default.pool_size, batch),
        generator=replace(default.generator, warmup_steps=warm),
    )


@dataclass(frozen=True)
class StreamSource:
    """Makes :func:`recoverprune.compress` recover from a stream (``--synthesis stream``):
    ``compress(..., source=StreamSource())``, a ``SourceFactory`` of the pipeline.

    ``config=None`` sizes the stream from the budget (:func:`stream_for`); ``n`` and
    ``iterations`` then apply to the check set only, and an epoch is the stream's
    ``steps_per_epoch`` steps.

    Example:
        >>> from types import SimpleNamespace
        >>> from recoverprune import PRESETS
        >>> ctx = SimpleNamespace(budget=PRESETS["tiny"])
        >>> StreamSource().describe(ctx)["stream"]["batch_size"]
        16
    """

    config: StreamConfig | None = None
    fixed: ClassVar[bool] = False  # fresh images every step: no set for INT8 to calibrate on

    def make(self, teacher: nn.Module, spec: InputSpec, ctx: SourceContext) -> SyntheticStream:
        """The stream (its images are made during recovery, checkpointed with it)."""
        cfg = self.config or stream_for(ctx.budget)
        return SyntheticStream(teacher, cfg, input=spec, seed=ctx.seed)

    def describe(self, ctx: SourceContext) -> dict[str, Any]:
        """What the report records."""
        return {"method": "stream", "stream": asdict(self.config or stream_for(ctx.budget))}
