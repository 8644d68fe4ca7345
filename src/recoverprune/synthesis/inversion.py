"""DeepInversion (Yin et al., CVPR 2020): images from a teacher's BatchNorm statistics.

Each batch starts from Gaussian noise in the teacher's (normalised) input space and its
pixels are optimised with Adam so that

* the per-channel mean and variance of the input of every BatchNorm layer match that
  layer's running statistics (collected by forward hooks, :func:`bn_statistics`),
* the teacher assigns the batch's target labels (cross-entropy),
* total-variation and L2 priors keep the images smooth and bounded,
* optionally (Adaptive DeepInversion) a student disagrees with the teacher on them.

Randomness of batch ``i`` depends only on ``(seed, i)``: the set does not depend on how
many processes made it, and resuming an interrupted run gives the same images.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.io import save_atomic
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.resources import check_job_size
from recoverprune.core.runtime import Accel, Runtime, generator, resolve
from recoverprune.core.spec import InputSpec
from recoverprune.core.threads import revisit
from recoverprune.data.synthetic import SyntheticImages, shard_name
from recoverprune.synthesis.amortised import generate_set, manifest_config
from recoverprune.synthesis.bn import bn_layers, bn_statistics
from recoverprune.synthesis.config import InversionConfig
from recoverprune.synthesis.generator import GeneratorConfig
from recoverprune.synthesis.priors import js_competition, random_view, total_variation
from recoverprune.synthesis.shards import (
    check_or_write_manifest,
    make_manifest,
    unreadable_shards,
)

__all__ = ["synthesize"]


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """Split ``n`` into ``ceil(n / batch_size)`` near-equal batches (none smaller than 2).

    With ``batch_size=2`` and an odd ``n`` one batch holds 3 images: a batch of one image
    has no batch statistics to match.
    """
    count = max(1, min(math.ceil(n / batch_size), n // 2))
    base, extra = divmod(n, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _balanced_labels(n: int, num_classes: int, seed: int) -> Tensor:
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator(seed, "labels"))]


# --------------------------------------------------------------------------- engine
class _Inverter:
    """Optimises one batch. Holds the hooks context and the (optionally compiled) step."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module | None,
        cfg: InversionConfig,
        runtime: Runtime,
        losses: list[Tensor],
        lo: Tensor,
        hi: Tensor,
    ) -> None:
        self.teacher, self.student, self.cfg, self.rt = teacher, student, cfg, runtime
        self.losses, self.lo, self.hi = losses, lo, hi
        self._loss_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]] = (
            runtime.maybe_compile(self._loss) if runtime.compile else self._loss
        )

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
        self,
        labels: Tensor,
        shape: tuple[int, ...],
        g: torch.Generator,
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
            dx, dy = int(shifts[it, 0]), int(shifts[it, 1])
            view = random_view(
                x, dx, dy, jitter=bool(cfg.jitter), flip=cfg.flip and bool(flips[it])
            )
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
                best_loss = loss_v
                best = x.detach().clone()
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
        stats.update(
            bn_loss_final=float(bn),
            ce_final=float(ce),
            accuracy=float((logits.argmax(1) == labels).float().mean()),
        )
        return best.float().contiguous().cpu(), stats


def synthesize(
    teacher: nn.Module,
    n: int,
    *,
    config: InversionConfig | None = None,
    batch_size: int = 256,
    iterations: int | None = None,
    labels: Sequence[int] | Tensor | None = None,
    image_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    channels: int | None = None,
    student: nn.Module | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
    overwrite: bool = False,
    method: Literal["deepinversion", "generator"] = "deepinversion",
    generator_config: GeneratorConfig | None = None,
) -> SyntheticImages:
    """Synthesise ``n`` images from ``teacher`` alone with DeepInversion (or a generator).

    Args:
        teacher: a trained classifier with BatchNorm layers. Left exactly as it was.
        n: number of images.
        config: hyper-parameters (:class:`InversionConfig`); defaults work for CIFAR.
        batch_size: images optimised together (BN statistics are batch statistics).
        iterations: shortcut overriding ``config.iterations``.
        labels: target class of each image (length ``n``); default balanced over classes.
        image_size: input ``H``/``W`` when the model has no ``pretrained_cfg`` hint.
        mean: the teacher's input mean (for clipping and PNG grids), one value or one per
            channel; default from ``pretrained_cfg``, else the ImageNet/CIFAR values for an
            RGB input (required for other channel counts).
        std: the teacher's input standard deviation, as ``mean``.
        channels: input channels, when the first ``Conv2d`` does not tell them.
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
        method: ``"deepinversion"`` optimises every batch's pixels (``config``);
            ``"generator"`` makes each batch with a few steps of a meta-learned generator
            (``generator_config``, :mod:`recoverprune.synthesis.generator`): far fewer teacher
            passes per image. ``config`` and ``iterations`` apply to DeepInversion only.
        generator_config: the generator's settings (default :class:`GeneratorConfig`).

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
        >>> from recoverprune import synthesize
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
        >>> ds = synthesize(net, n=8, batch_size=4, iterations=5, image_size=16, progress=False)
        >>> ds.images.shape, sorted(ds.labels.tolist())
        (torch.Size([8, 3, 16, 16]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    if method not in ("deepinversion", "generator"):
        raise ValueError(f"method must be 'deepinversion' or 'generator', got {method!r}")
    cfg = _checked_config(teacher, student, n, batch_size, config, iterations)
    rt = resolve(device, accel)
    spec = InputSpec.of(teacher, image_size=image_size, channels=channels, mean=mean, std=std)
    shape, (mean, std) = spec.shape, spec.normalisation()
    check_job_size(n, shape, batch_size, out_dir=out_dir)  # before anything of size n
    batch_sizes = _batch_sizes(n, batch_size)
    out = Path(out_dir) if out_dir is not None else None
    if rt.world_size > 1 and out is None:
        raise ValueError("distributed synthesis needs out_dir= (a directory all ranks can reach)")
    with ExitStack() as stack:
        stack.enter_context(borrowed(teacher, student, runtime=rt))
        manifest, all_labels = _describe(teacher, student, cfg, spec, batch_sizes, labels, seed, rt)
        if method == "generator":
            gen = generator_config or GeneratorConfig()
            manifest["config"] = manifest_config(gen)
            return generate_set(
                teacher,
                spec,
                all_labels,
                batch_sizes,
                config=gen,
                manifest=manifest,
                rt=rt,
                seed=seed,
                student=student if gen.adversarial_weight > 0 else None,
                out=out,
                overwrite=overwrite,
                show=progress and rt.is_main,
            )
        if out is not None:
            _open_out_dir(out, manifest, rt, overwrite)
        losses = stack.enter_context(bn_statistics(teacher, cfg.first_bn_multiplier))
        lo, hi = _clip_bounds(mean, std, cfg.clip, rt.device)
        inverter = _Inverter(teacher, student, cfg, rt, losses, lo, hi)
        plan = _Plan(batch_sizes, all_labels, shape, seed, out, rt)
        kept = _run_batches(inverter, plan, progress and rt.is_main)
    if out is not None:
        _barrier(rt)
        return SyntheticImages.load(out)
    meta = {k: v for k, v in manifest.items() if k not in ("mean", "std")}
    meta["stats"] = [stats for _, stats in kept.values()]
    return SyntheticImages(
        [images for images, _ in kept.values()],
        [plan.labels_of(i) for i in kept],
        mean=mean,
        std=std,
        meta=meta,
    )


def _describe(
    teacher: nn.Module,
    student: nn.Module | None,
    cfg: InversionConfig,
    spec: InputSpec,
    batch_sizes: list[int],
    labels: Sequence[int] | Tensor | None,
    seed: int,
    rt: Runtime,
) -> tuple[dict[str, Any], Tensor]:
    """The manifest of this call and its target labels (the teacher is borrowed)."""
    with torch.no_grad():
        probe = teacher(rt.prepare_input(torch.zeros(2, *spec.shape)))
    num_classes = int(probe.shape[1])
    n = sum(batch_sizes)
    all_labels = _target_labels(labels, n, num_classes, seed)
    mean, std = spec.normalisation()
    manifest = make_manifest(
        teacher,
        student,
        cfg,
        n=n,
        batch_sizes=batch_sizes,
        seed=seed,
        shape=spec.shape,
        num_classes=num_classes,
        labels=all_labels,
        mean=mean,
        std=std,
    )
    return manifest, all_labels


def _checked_config(
    teacher: nn.Module,
    student: nn.Module | None,
    n: int,
    batch_size: int,
    config: InversionConfig | None,
    iterations: int | None,
) -> InversionConfig:
    """The settings of this call, after every argument check that needs no compute."""
    cfg = config or InversionConfig()
    if iterations is not None:
        cfg = replace(cfg, iterations=iterations)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if batch_size < 2:
        raise ValueError(
            f"batch_size must be >= 2 (DeepInversion matches batch statistics), got {batch_size}"
        )
    if n < 2:
        raise ValueError("n must be >= 2: a batch of one image has no batch statistics")
    if not bn_layers(teacher):
        raise ValueError(
            f"{type(teacher).__name__} has no BatchNorm layer with running statistics. "
            "DeepInversion reconstructs images from those statistics, so it cannot work on this "
            "teacher; use a BN network or bring your own transfer images to recover()."
        )
    if cfg.competition_weight > 0 and student is None:
        raise ValueError("competition_weight > 0 (Adaptive DeepInversion) needs student=")
    return cfg


def _target_labels(
    labels: Sequence[int] | Tensor | None, n: int, num_classes: int, seed: int
) -> Tensor:
    """The target class of every image: as given (checked), or balanced over the classes."""
    if labels is None:
        return _balanced_labels(n, num_classes, seed)
    all_labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if all_labels.numel() != n:
        raise ValueError(f"labels has {all_labels.numel()} entries, expected n={n}")
    if all_labels.min() < 0 or all_labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the teacher has {num_classes} "
            f"classes), got values from {int(all_labels.min())} to {int(all_labels.max())}"
        )
    return all_labels


def _barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _open_out_dir(out: Path, manifest: dict[str, Any], rt: Runtime, overwrite: bool) -> None:
    """Create ``out`` and check (rank 0: write) its manifest; every rank waits for rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, manifest, rt.is_main, overwrite)
    _barrier(rt)  # rank 0 has emptied an overwritten out_dir


def _clip_bounds(
    mean: Sequence[float], std: Sequence[float], clip: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-channel bounds of a valid image ([0, 1] pixels) in the normalised input space."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    lo, hi = ((0 - mean_t) / std_t).to(device), ((1 - mean_t) / std_t).to(device)
    if not clip:
        lo, hi = torch.full_like(lo, -math.inf), torch.full_like(hi, math.inf)
    return lo, hi


@dataclass(frozen=True)
class _Plan:
    """Which batches this process makes, their labels, and where finished ones go."""

    sizes: list[int]
    labels: Tensor
    shape: tuple[int, int, int]
    seed: int
    out: Path | None
    rt: Runtime

    def labels_of(self, i: int) -> Tensor:
        start = sum(self.sizes[:i])
        return self.labels[start : start + self.sizes[i]]

    def todo(self) -> list[int]:
        """This rank's batches not yet on disk (unreadable shards are removed first)."""
        mine = [i for i in range(len(self.sizes)) if i % self.rt.world_size == self.rt.rank]
        if self.out is None:
            return mine
        unreadable_shards(self.out, mine)
        return [i for i in mine if not (self.out / shard_name(i)).is_file()]


def _run_batches(
    inverter: _Inverter, plan: _Plan, show: bool
) -> dict[int, tuple[Tensor, dict[str, float]]]:
    """Optimise every batch still to do; stream each to a shard, or keep it in memory."""
    todo = plan.todo()
    iterations = inverter.cfg.iterations
    kept: dict[int, tuple[Tensor, dict[str, float]]] = {}
    with progress_bar("DeepInversion", len(todo) * iterations, show and bool(todo)) as bar:
        t0, done_images = time.perf_counter(), 0
        for k, i in enumerate(todo):
            revisit(verbose=show)  # the CPU threads follow the machine
            lb = plan.labels_of(i)
            t_batch = time.perf_counter()

            def on_step(
                it: int,
                s: dict[str, float],
                k: int = k,
                done: int = done_images,
                size: int = len(lb),
            ) -> None:
                if it % 10 == 0 or it == iterations - 1:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    rate = (done * iterations + size * (it + 1)) / elapsed
                    bar.update(
                        batch=f"{k + 1}/{len(todo)}",
                        loss=s["loss"],
                        bn=s["bn_loss"],
                        ce=s["ce"],
                        img_it_s=rate,
                    )
                bar.advance(1)

            try:
                g = generator(plan.seed, "batch", i)
                images, stats = inverter.run(lb, (len(lb), *plan.shape), g, on_step)
            except FloatingPointError as exc:
                kept_where = f"; finished shards kept in {plan.out}" if plan.out else ""
                raise FloatingPointError(f"{exc} (batch {i}{kept_where})") from exc
            stats["seconds"] = time.perf_counter() - t_batch
            done_images += len(lb)
            if plan.out is not None:
                shard = {"images": images, "labels": lb.clone(), "batch": i, "stats": stats}
                save_atomic(shard, plan.out / shard_name(i))
            else:
                kept[i] = (images, stats)
    return dict(sorted(kept.items()))
