"""Amortised synthesis: one small generator, meta-learned across batches, makes each batch.

Experimental: on every budget measured (ResNet-20 at 75 %, docs/results.md) a fixed set made
this way (85.63 %) or streamed (85.94 %) did not beat a fixed DeepInversion set (86.10 %).

DeepInversion optimises every batch's pixels from noise (hundreds of teacher passes per
image). Here a small convolutional generator maps latent codes to images, and each new
batch is made by a few Adam steps over a *copy* of the generator and its latent codes
(Fast-DataFree, Fang et al., AAAI 2022). After every batch the shared generator moves
towards the copy that made it (Reptile, Nichol et al. 2018), so it learns an
initialisation from which a handful of steps reach a good batch. The losses:

* BatchNorm statistics matched against a *running estimate over all batches so far*
  (each batch's mean/variance blended with the estimate), so the set matches the
  teacher in aggregate, not each batch alone;
* cross-entropy of the teacher to class-balanced targets;
* optionally, once a student is given and after ``adversarial_after`` batches, a
  decision-adversarial term: where student and teacher agree, their disagreement is
  maximised (images on which the student still has something to learn).

Everything a batch needs is drawn from ``(seed, batch index)``, and the state (shared
generator, its optimiser, the statistics estimate, the batch count) round-trips through
:meth:`AmortisedSynthesizer.state_dict`, so a resumed run makes the same images bitwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.runtime import Runtime, generator
from recoverprune.core.spec import InputSpec
from recoverprune.core.validate import check_fields
from recoverprune.synthesis.bn import stat_distance, tracked_bn
from recoverprune.synthesis.priors import random_view

__all__ = ["AmortisedSynthesizer", "Generator", "GeneratorConfig"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the amortised (generator) synthesizer.

    Attributes:
        latent_dim: size of each image's latent code.
        width: channels of the generator's first stage (halved at each later one, at
            least 16); ``None``: 64, half the width of Fast-DataFree's CIFAR generator
            (about the cost of a CIFAR ResNet-20 forward pass at 32 px).
        inner_steps: Adam steps over a copy of the generator and the codes per batch.
        warmup_batches: the first batches take ``warmup_steps`` steps instead (the shared
            initialisation is still random then).
        warmup_steps: steps of each warm-up batch.
        lr: Adam learning rate of the generator copy.
        latent_lr: Adam learning rate of the latent codes.
        meta_lr: Adam learning rate of the Reptile update of the shared generator
            (its "gradient" is shared minus adapted weights).
        bn_weight: weight of the BatchNorm-statistics loss.
        bn_momentum: weight of the running estimate when a batch's statistics are
            blended with it (0: each batch alone, as in DeepInversion).
        ce_weight: weight of the teacher's cross-entropy to the targets.
        adversarial_weight: weight of the decision-adversarial term (needs a student).
        adversarial_after: batches made before that term is switched on.
        jitter: random shift (pixels) of each step's view, as in DeepInversion.
        flip: random horizontal flip of each step's view.

    Example:
        >>> GeneratorConfig().inner_steps, GeneratorConfig(width=32).width
        (5, 32)
    """

    latent_dim: int = 256
    width: int | None = None
    inner_steps: int = 5
    warmup_batches: int = 4
    warmup_steps: int = 50
    lr: float = 5e-3
    latent_lr: float = 0.015
    meta_lr: float = 5e-3
    bn_weight: float = 10.0
    bn_momentum: float = 0.9
    ce_weight: float = 1.0
    adversarial_weight: float = 0.0
    adversarial_after: int = 20
    jitter: int = 2
    flip: bool = True

    def __post_init__(self) -> None:
        check_fields(self, 1, "latent_dim", "inner_steps", "warmup_steps", integer=True)
        check_fields(self, 4, "width", integer=True)
        check_fields(self, 0, "warmup_batches", "adversarial_after", "jitter", integer=True)
        check_fields(self, 0, "lr", "latent_lr", "meta_lr", lo_open=True)
        check_fields(self, 0, "bn_weight", "ce_weight", "adversarial_weight")
        check_fields(self, 0, "bn_momentum", hi=1, hi_open=True)

    def steps_for(self, batch: int) -> int:
        """Inner steps of batch number ``batch`` (0-based)."""
        return self.warmup_steps if batch < self.warmup_batches else self.inner_steps


# --------------------------------------------------------------------------- the network
def _stages(size: tuple[int, int]) -> int:
    """Upsampling stages: from about 8 px (at least 2 stages, at most 6)."""
    return max(2, min(6, round(math.log2(max(min(size), 8) / 8)) + 2))


class Generator(nn.Module):
    """Latent codes to images in a teacher's normalised input space.

    A linear layer to a small feature map, then ``k`` stages of nearest 2x upsampling,
    3x3 convolution, BatchNorm and LeakyReLU, a last 3x3 convolution to the image
    channels, a crop to the exact size and a sigmoid (valid pixels in [0, 1]), then the
    teacher's normalisation.

    Args:
        spec: the teacher's input (channels, size, mean, std); the size must be known.
        latent_dim: size of each latent code.
        width: channels of the first stage (halved at each later one, at least 16).

    Example:
        >>> from recoverprune.core.spec import InputSpec
        >>> g = Generator(InputSpec(channels=1, size=28, mean=0.5, std=0.5), 16, 32)
        >>> g(torch.randn(2, 16)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, spec: InputSpec, latent_dim: int = 256, width: int = 64) -> None:
        super().__init__()
        c, h, w = spec.shape
        k = _stages((h, w))
        self.size = (h, w)
        self.h0, self.w0 = math.ceil(h / 2**k), math.ceil(w / 2**k)
        self.width = width
        self.fc = nn.Linear(latent_dim, width * self.h0 * self.w0)
        layers: list[nn.Module] = [nn.BatchNorm2d(width)]
        c_in = width
        for stage in range(k):
            c_out = max(16, width >> stage) if stage else width
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, c, 3, padding=1))
        self.body = nn.Sequential(*layers)
        mean, std = spec.normalisation()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).view(len(z), self.width, self.h0, self.w0)
        x = self.body(x)[..., : self.size[0], : self.size[1]]
        return (torch.sigmoid(x) - self.mean) / self.std


# --------------------------------------------------------------------------- BN statistics
class _RunningBN:
    """Per-layer BatchNorm-input statistics blended with a running estimate over batches."""

    def __init__(self, teacher: nn.Module, momentum: float) -> None:
        self.layers = tracked_bn(teacher)
        self.momentum = momentum
        self.estimate: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)
        self.last: list[tuple[Tensor, Tensor]] = []
        self.losses: list[Tensor] = []

    def _hook(self, i: int, m: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        x = inputs[0].float()
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
        prev = self.estimate[i]
        if prev is not None:
            a = self.momentum
            mean, var = a * prev[0] + (1 - a) * mean, a * prev[1] + (1 - a) * var
        self.last.append((mean.detach(), var.detach()))
        self.losses.append(stat_distance(mean, var, m))

    @contextmanager
    def hooked(self) -> Iterator[None]:
        handles = [
            m.register_forward_hook(lambda m, i, o, k=k: self._hook(k, m, i, o))
            for k, m in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def loss(self) -> Tensor:
        total = torch.stack(self.losses).sum()
        self.losses.clear()
        return total

    def commit(self, stats: list[tuple[Tensor, Tensor]]) -> None:
        """Make ``stats`` (one blended mean/variance per layer) the running estimate."""
        self.estimate = [(m.clone(), v.clone()) for m, v in stats]


# --------------------------------------------------------------------------- the engine
class AmortisedSynthesizer:
    """Makes batch after batch from one meta-learned generator (see the module doc).

    Args:
        teacher: the frozen teacher, in eval mode, on ``rt.device`` (the caller borrows
            it: see :func:`recoverprune.core.borrow.borrowed`).
        spec: its input description (size known).
        num_classes: the teacher's outputs.
        config: :class:`GeneratorConfig`.
        rt: where to run.
        seed: the generator's initialisation and batch ``i``'s codes, views and targets
            depend only on ``(seed, i)`` and the state.

    Example:
        >>> from torch import nn
        >>> from recoverprune.core.runtime import resolve
        >>> from recoverprune.core.spec import InputSpec
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
        >>> cfg = GeneratorConfig(width=16, warmup_batches=0, inner_steps=2)
        >>> syn = AmortisedSynthesizer(net, InputSpec(size=8), 2, cfg, resolve("cpu"))
        >>> images, labels, stats = syn.make_batch(4)
        >>> images.shape, labels.tolist(), syn.batches
        (torch.Size([4, 3, 8, 8]), [1, 0, 0, 1], 1)
    """

    def __init__(
        self,
        teacher: nn.Module,
        spec: InputSpec,
        num_classes: int,
        config: GeneratorConfig,
        rt: Runtime,
        seed: int = 0,
    ) -> None:
        self.teacher, self.spec, self.num_classes = teacher, spec, num_classes
        self.cfg, self.rt, self.seed = config, rt, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator(seed, "generator-init").initial_seed())
            self.generator = Generator(spec, config.latent_dim, config.width or 64)
        self.generator.to(rt.device)
        self.meta_opt = torch.optim.Adam(
            self.generator.parameters(), lr=config.meta_lr, betas=(0.5, 0.999)
        )
        self.bn = _RunningBN(teacher, config.bn_momentum)
        self.batches = 0

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the next batch depends on (copies, on the CPU)."""
        estimate = [
            None if e is None else (e[0].cpu().clone(), e[1].cpu().clone())
            for e in self.bn.estimate
        ]
        return {
            "generator": {k: v.cpu().clone() for k, v in self.generator.state_dict().items()},
            "meta_opt": copy.deepcopy(self.meta_opt.state_dict()),
            "bn_estimate": estimate,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        dev = self.rt.device
        self.bn.estimate = [
            None if e is None else (e[0].to(dev), e[1].to(dev)) for e in state["bn_estimate"]
        ]
        self.batches = int(state["batches"])

    # -- one batch ----------------------------------------------------------------------
    def targets(self, size: int, g: torch.Generator) -> Tensor:
        """Class-balanced targets of one batch, in a random order."""
        labels = torch.arange(size) % self.num_classes
        return labels[torch.randperm(size, generator=g)]

    def make_batch(
        self, size: int, student: nn.Module | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The next batch: ``(images on the CPU, labels, stats)``; advances the state.

        Args:
            size: images in the batch (at least 2: batch statistics are matched).
            student: for the decision-adversarial term (read only: its weights, gradients
                and modes are left as they were).
            labels: the batch's targets (default: class-balanced, in a random order).
        """
        if size < 2:
            raise ValueError(f"a generator batch needs at least 2 images, got {size}")
        cfg, rt = self.cfg, self.rt
        g = generator(self.seed, "generator-batch", self.batches)
        drawn = self.targets(size, g)  # drawn always: the stream does not depend on labels=
        labels = drawn if labels is None else labels.cpu().long()
        z = torch.randn(size, cfg.latent_dim, generator=g).to(rt.device).requires_grad_(True)
        fast = copy.deepcopy(self.generator).train()
        opt = torch.optim.Adam(
            [{"params": fast.parameters()}, {"params": [z], "lr": cfg.latent_lr}],
            lr=cfg.lr,
            betas=(0.5, 0.999),
        )
        steps = cfg.steps_for(self.batches)
        shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (steps, 2), generator=g)
        flips = torch.rand(steps, generator=g) < 0.5
        adversary = student if cfg.adversarial_weight > 0 else None
        if self.batches < cfg.adversarial_after:
            adversary = None
        best: tuple[float, Tensor, list[tuple[Tensor, Tensor]]] | None = None
        stats: dict[str, float] = {}
        y = labels.to(rt.device)
        with self.bn.hooked(), borrowed(adversary):
            for it in range(steps):
                x = fast(z)
                view = random_view(
                    x,
                    int(shifts[it, 0]),
                    int(shifts[it, 1]),
                    jitter=bool(cfg.jitter),
                    flip=cfg.flip and bool(flips[it]),
                )
                self.bn.last = []
                loss, parts = self._loss(view, y, adversary)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"non-finite generator loss at step {it}")
                if best is None or value < best[0]:
                    best = (value, x.detach(), self.bn.last)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats = {"loss": value, **parts}
        assert best is not None
        self.bn.commit(best[2])
        self._reptile(fast)
        self.batches += 1
        stats["steps"] = float(steps)
        return best[1].float().cpu(), labels, stats

    def _loss(
        self, x: Tensor, y: Tensor, student: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        with self.rt.autocast():
            logits = self.teacher(x)
        bn = self.bn.loss()
        ce = F.cross_entropy(logits.float(), y)
        loss = cfg.bn_weight * bn + cfg.ce_weight * ce
        parts = {"bn": float(bn.detach()), "ce": float(ce.detach())}
        if student is not None:
            with self.rt.autocast():
                s_logits = student(x).float()
            t_logits = logits.float()
            agree = (s_logits.argmax(1) == t_logits.argmax(1)).float()
            kl = F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="none").sum(
                1
            )
            adv = -(kl * agree).mean()
            loss = loss + cfg.adversarial_weight * adv
            parts["adv"] = float(adv.detach())
        return loss, parts

    def _reptile(self, fast: nn.Module) -> None:
        """Move the shared generator towards the adapted copy (one Adam step)."""
        self.meta_opt.zero_grad(set_to_none=True)
        for p, q in zip(self.generator.parameters(), fast.parameters(), strict=True):
            p.grad = (p.detach() - q.detach()).clone()
        self.meta_opt.step()
        with torch.no_grad():  # BatchNorm statistics of the generator follow the copy
            for b, c in zip(self.generator.buffers(), fast.buffers(), strict=True):
                b.copy_(c)
