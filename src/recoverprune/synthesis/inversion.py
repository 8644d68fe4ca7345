"""DeepInversion (Yin et al., CVPR 2020): Adam optimises noise until every BatchNorm input
matches its running statistics, the teacher assigns the target labels (TV and L2 priors;
optionally a student disagrees). Batch ``i`` depends only on ``(seed, i)``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import Accel, Runtime, generator
from recoverprune.core.spec import InputSpec
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.data.synthetic_io import write_shard
from recoverprune.synthesis.bn import bn_statistics
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.plan import Batch, Plan, planned
from recoverprune.synthesis.priors import js_competition, random_view, total_variation

__all__ = ["synthesize"]


@dataclass(eq=False)  # hashed by identity, as torch.compile may need
class _Inverter:
    """Optimises one batch at a time: the loss (compiled on the fast path) and the Adam loop;
    ``losses`` is the list :func:`bn_statistics` fills on every teacher pass."""

    teacher: nn.Module
    student: nn.Module | None
    cfg: InversionConfig
    rt: Runtime
    losses: list[Tensor]
    spec: InputSpec

    def __post_init__(self) -> None:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in self.spec.normalisation())
        # the bounds of a valid image ([0, 1] pixels) in the normalised input space
        dev = self.rt.device
        self.lo, self.hi = ((0 - mean) / std).to(dev), ((1 - mean) / std).to(dev)
        self._loss_fn = self.rt.maybe_compile(self._loss)

    def _loss(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg = self.cfg
        self.losses.clear()
        with self.rt.autocast():
            logits = self.teacher(x)
        bn = torch.stack(self.losses).sum()
        ce = F.cross_entropy(logits.float(), labels)
        tv_l1, tv_l2 = total_variation(x)
        loss = cfg.bn_weight * bn + cfg.ce_weight * ce
        if cfg.tv_l2_weight:
            loss = loss + cfg.tv_l2_weight * tv_l2
        if cfg.tv_l1_weight:
            loss = loss + cfg.tv_l1_weight * tv_l1
        if cfg.l2_weight:
            loss = loss + cfg.l2_weight * torch.linalg.vector_norm(x) / x.shape[0]
        if self.student is not None and cfg.competition_weight > 0:
            with self.rt.autocast():
                s_logits = self.student(x)
            comp = js_competition(s_logits, logits, cfg.competition_temperature)
            loss = loss + cfg.competition_weight * comp
        return loss, bn, ce, logits

    def run(
        self, labels: Tensor, shape: tuple[int, ...], g: torch.Generator,
        on_step: Callable[[int, dict[str, float]], None],
    ) -> tuple[Tensor, dict[str, float]]:
        cfg, rt = self.cfg, self.rt
        x = rt.prepare_input(torch.randn(shape, generator=g)).requires_grad_(True)
        labels = labels.to(rt.device)
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas)
        # all per-step randomness drawn up front from the batch's own generator
        shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (cfg.iterations, 2), generator=g)
        flips = torch.rand(cfg.iterations, generator=g) < 0.5
        best_loss, best = math.inf, x.detach().clone()
        stats: dict[str, float] = {}
        for it in range(cfg.iterations):
            if cfg.lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * it / cfg.iterations))
            dx, dy, flip = int(shifts[it, 0]), int(shifts[it, 1]), cfg.flip and bool(flips[it])
            view = random_view(x, dx, dy, jitter=bool(cfg.jitter), flip=flip)
            opt.zero_grad(set_to_none=True)
            loss, bn, ce, logits = self._loss_fn(view, labels)
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise FloatingPointError(
                    f"non-finite DeepInversion loss ({loss_v}) at iteration {it}; try a lower lr"
                )
            if it == 0:
                stats["bn_loss_first"] = float(bn.detach())
            if cfg.keep_best and loss_v < best_loss:
                best_loss, best = loss_v, x.detach().clone()
            loss.backward()
            opt.step()
            if cfg.clip:
                with torch.no_grad():
                    x.data = torch.max(torch.min(x, self.hi), self.lo)
            stats.update(loss=loss_v, bn_loss=float(bn.detach()), ce=float(ce.detach()))
            on_step(it, stats)
        if not cfg.keep_best:
            best = x.detach().clone()
        # final measurement on the returned images (no jitter): BN loss and target accuracy
        with torch.no_grad():
            _, bn, ce, logits = self._loss(best, labels)
        accuracy = float((logits.argmax(1) == labels).float().mean())
        stats.update(bn_loss_final=float(bn), ce_final=float(ce), accuracy=accuracy)
        return best.float().contiguous().cpu(), stats


def synthesize(
    teacher: nn.Module,
    n: int,
    *,
    config: InversionConfig | None = None,
    batch_size: int = 256,
    iterations: int | None = None,
    labels: Sequence[int] | Tensor | None = None,
    input: InputSpec | None = None,
    student: nn.Module | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SyntheticImages:
    """Synthesise ``n`` images from ``teacher`` alone with DeepInversion.

    Args:
        teacher: a trained classifier with BatchNorm layers. Left exactly as it was.
        n: number of images.
        config: hyper-parameters (:class:`InversionConfig`); defaults work for CIFAR.
        batch_size: images optimised together (BN statistics are batch statistics).
        iterations: shortcut overriding ``config.iterations``.
        labels: target class of each image (length ``n``); default balanced over classes.
        input: the teacher's input (:class:`~recoverprune.core.spec.InputSpec`: channels,
            size, normalisation); default ``InputSpec.of(teacher)``, which needs a
            ``pretrained_cfg`` hint for the size.
        student: for Adaptive DeepInversion (with ``config.competition_weight > 0``).
        out_dir: stream each finished batch there as a shard (atomic) and resume from
            it (unreadable shards are made again); a directory made with other settings
            is refused.
        seed: batch ``i`` depends only on ``(seed, i)``.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        accel: GPU fast-path switches (default automatic).
        progress: show a rich progress bar.
        overwrite: empty an ``out_dir`` made with other settings and synthesise anew,
            instead of refusing it.

    Returns:
        A :class:`SyntheticImages` dataset of ``(image, label)``.

    Raises:
        ValueError: no BatchNorm layer, ``n < 1``, ``batch_size < 2``, bad labels,
            unknown image size, or (:class:`~recoverprune.core.stages.StageMismatch`) an
            ``out_dir`` made with other settings.
        FloatingPointError: the loss became non-finite (finished shards are kept).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from recoverprune import InputSpec, synthesize
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
        >>> ds = synthesize(net, n=8, batch_size=4, iterations=5, input=InputSpec(size=16),
        ...                 progress=False)
        >>> ds.images.shape, sorted(ds.labels.tolist())
        (torch.Size([8, 3, 16, 16]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    cfg = config or InversionConfig()
    if iterations is not None:
        cfg = replace(cfg, iterations=iterations)
    if cfg.competition_weight > 0 and student is None:
        raise ValueError("competition_weight > 0 (Adaptive DeepInversion) needs student=")
    how = dict(batch_size=batch_size, labels=labels, input=input, out_dir=out_dir, seed=seed)
    with planned(teacher, student, n, asdict(cfg), device=device, accel=accel, **how) as plan:
        todo = plan.start(overwrite)
        with bn_statistics(teacher, cfg.first_bn_multiplier) as losses:
            inverter = _Inverter(teacher, student, cfg, plan.rt, losses, plan.spec)
            kept = _run_batches(inverter, plan, todo, progress and plan.rt.is_main)
    return plan.result(kept)


def _run_batches(inverter: _Inverter, plan: Plan, todo: list[int], show: bool) -> dict[int, Batch]:
    """Optimise the batches ``todo``; stream each to a shard, or keep it in memory."""
    iterations = inverter.cfg.iterations
    kept: dict[int, Batch] = {}
    with progress_bar("DeepInversion", len(todo) * iterations, show and bool(todo)) as bar:
        t0, done = time.perf_counter(), 0
        for k, i in enumerate(todo):
            lb, t_batch = plan.labels_of(i), time.perf_counter()

            def on_step(
                it: int, s: dict[str, float], k: int = k, made: int = done, size: int = len(lb)
            ) -> None:
                if it % 10 == 0 or it == iterations - 1:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    rate = (made * iterations + size * (it + 1)) / elapsed
                    shown = dict(loss=s["loss"], bn=s["bn_loss"], ce=s["ce"], img_it_s=rate)
                    bar.update(batch=f"{k + 1}/{len(todo)}", **shown)
                bar.advance(1)

            try:
                g = generator(plan.seed, "batch", i)
                images, stats = inverter.run(lb, (len(lb), *plan.spec.shape), g, on_step)
            except FloatingPointError as exc:
                kept_where = f"; finished shards kept in {plan.out}" if plan.out else ""
                raise FloatingPointError(f"{exc} (batch {i}{kept_where})") from exc
            stats["seconds"] = time.perf_counter() - t_batch
            done += len(lb)
            if plan.out is not None:
                write_shard(plan.out, i, images, lb, stats)
            else:
                kept[i] = (images, stats)
    return kept
