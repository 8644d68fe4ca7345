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

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune._checks import (
    StageMismatch,
    check_free_space,
    check_key,
    clean_stale,
    remove_outputs,
)
from recoverprune._dataset import MANIFEST, SyntheticImages, shard_name
from recoverprune._io import fingerprint, read_json, save_atomic, write_json_atomic
from recoverprune._progress import progress as progress_bar
from recoverprune._runtime import Accel, Runtime, generator, resolve
from recoverprune._spec import InputSpec, _model_cfg
from recoverprune._version import __version__

__all__ = [
    "InversionConfig",
    "bn_statistics",
    "borrowed",
    "infer_input_shape",
    "synthesize",
    "total_variation",
]


@dataclass(frozen=True)
class InversionConfig:
    """Hyper-parameters of DeepInversion. Defaults work for CIFAR-scale BN classifiers.

    Attributes:
        iterations: Adam steps per batch. 200, as every preset but ``paper`` uses: it
            already gives images the teacher classifies as their targets (the
            DeepInversion paper uses 2,000, the ``paper`` preset's budget).
        lr: Adam learning rate on the pixels (normalised space).
        lr_schedule: ``"cosine"`` (decay to 0) or ``"constant"``.
        betas: Adam betas.
        bn_weight: weight of the BatchNorm statistics loss.
        first_bn_multiplier: extra weight of the first BN layer's term (the reference
            ImageNet setting uses 10; 1 treats all layers alike).
        ce_weight: weight of the cross-entropy to the target labels. The reference uses
            1 with 2,000 iterations; 4 reaches the targets within a 200-iteration budget
            without loosening the BN-statistics match (measured on ResNet-20, see the
            synthesis benchmark).
        tv_l2_weight: weight of the L2 total-variation prior.
        tv_l1_weight: weight of the L1 total-variation prior.
        l2_weight: weight of the L2 norm of the pixels.
        competition_weight: Adaptive DeepInversion term (needs a ``student``); 0 is off.
        competition_temperature: softmax temperature of the Jensen–Shannon term.
        jitter: random roll of up to this many pixels per step.
        flip: random horizontal flip per step.
        clip: keep pixels inside the valid range given ``mean``/``std``.
        keep_best: return the pixels of the lowest-loss iteration (as the reference does).

    Example:
        >>> from dataclasses import replace
        >>> InversionConfig().iterations, replace(InversionConfig(), iterations=2000).iterations
        (200, 2000)
    """

    iterations: int = 200
    lr: float = 0.2
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    betas: tuple[float, float] = (0.5, 0.9)
    bn_weight: float = 10.0
    first_bn_multiplier: float = 1.0
    ce_weight: float = 4.0
    tv_l2_weight: float = 3e-5
    tv_l1_weight: float = 0.0
    l2_weight: float = 0.0
    competition_weight: float = 0.0
    competition_temperature: float = 3.0
    jitter: int = 2
    flip: bool = True
    clip: bool = True
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        for name in (
            "bn_weight",
            "ce_weight",
            "tv_l2_weight",
            "tv_l1_weight",
            "l2_weight",
            "competition_weight",
            "first_bn_multiplier",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")


# --------------------------------------------------------------------------- helpers
@contextmanager
def borrowed(*models: nn.Module | None) -> Iterator[None]:
    """Put models in eval mode with frozen parameters; restore every flag afterwards.

    The ``training`` flag of every submodule and the ``requires_grad`` flag of every
    parameter are snapshotted and restored in ``finally``, also on an exception.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with borrowed(net):
        ...     net.training, net[0].weight.requires_grad
        (False, False)
        >>> net.training, net[0].weight.requires_grad
        (True, True)
    """
    mods = [m for m in models if m is not None]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in mods]
    grads = [[(p, p.requires_grad) for p in m.parameters()] for m in mods]
    try:
        for m in mods:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for snapshot in modes:
            for sub, flag in snapshot:
                sub.training = flag
        for snapshot in grads:
            for p, flag in snapshot:
                p.requires_grad_(flag)


def _bn_hook(
    module: nn.modules.batchnorm._BatchNorm,
    inputs: tuple[Tensor, ...],
    output: Tensor,
    *,
    out: list[Tensor],
    weight: float,
) -> None:
    x = inputs[0].float()
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    loss = torch.linalg.vector_norm(mean - module.running_mean.float()) + torch.linalg.vector_norm(
        var - module.running_var.float()
    )
    out.append(loss * weight if weight != 1.0 else loss)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that carry running statistics, in module order."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


@contextmanager
def bn_statistics(model: nn.Module, first_multiplier: float = 1.0) -> Iterator[list[Tensor]]:
    """Collect DeepInversion's BN-statistics loss of every BatchNorm layer's input.

    Yields a list that each forward pass appends one loss per BN layer to
    (``‖μ_batch − running_mean‖₂ + ‖σ²_batch − running_var‖₂``). Clear it between
    passes. Every hook is removed on exit, also on an exception.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> with bn_statistics(net) as losses:
        ...     _ = net(torch.randn(2, 3, 8, 8))
        >>> len(losses), len(net[1]._forward_hooks)
        (1, 0)
    """
    losses: list[Tensor] = []
    handles = []
    try:
        for i, m in enumerate(bn_layers(model)):
            w = first_multiplier if i == 0 else 1.0
            handles.append(m.register_forward_hook(partial(_bn_hook, out=losses, weight=w)))
        yield losses
    finally:
        for h in handles:
            h.remove()


def total_variation(x: Tensor) -> tuple[Tensor, Tensor]:
    """(L1, L2) total variation of a batch, over horizontal, vertical and both diagonals.

    Example:
        >>> import torch
        >>> [float(t) for t in total_variation(torch.zeros(1, 3, 4, 4))]
        [0.0, 0.0]
    """
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4)) / x.shape[0]
    l1 = sum(d.abs().mean() for d in (d1, d2, d3, d4))
    return l1, l2  # type: ignore[return-value]


def _js_competition(student_logits: Tensor, teacher_logits: Tensor, t: float) -> Tensor:
    """ADI term: 1 − JS(student ‖ teacher), minimised to make them disagree."""
    p = F.softmax(student_logits.float() / t, dim=1).clamp(0.01, 0.99)
    q = F.softmax(teacher_logits.float() / t, dim=1).clamp(0.01, 0.99)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(
        q.log(), m, reduction="batchmean"
    )
    return 1.0 - js.clamp(0.0, 1.0)


def infer_input_shape(
    model: nn.Module, image_size: int | Sequence[int] | None = None
) -> tuple[int, int, int]:
    """``(C, H, W)`` of the model's input: channels from the first convolution, size from
    ``image_size`` or the model's ``pretrained_cfg["input_size"]`` hint.

    Raises:
        ValueError: the size cannot be known; pass ``image_size``.

    Example:
        >>> from torch import nn
        >>> infer_input_shape(nn.Sequential(nn.Conv2d(1, 4, 3)), image_size=28)
        (1, 28, 28)
    """
    cfg = _model_cfg(model)
    if image_size is None and "input_size" in cfg:
        c, h, w = (int(v) for v in cfg["input_size"])
        return c, h, w
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: cannot infer input channels")
    if image_size is None:
        raise ValueError(
            f"cannot tell the input image size of {type(model).__name__}: pass image_size "
            "(e.g. image_size=32 for CIFAR, 224 for ImageNet models)"
        )
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    return conv.in_channels, int(size[0]), int(size[1])


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
            comp = _js_competition(s_logits, logits, cfg.competition_temperature)
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
            view = torch.roll(x, shifts=(dx, dy), dims=(2, 3)) if cfg.jitter else x
            if cfg.flip and bool(flips[it]):
                view = torch.flip(view, dims=(3,))
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


def _keep_storage(model: nn.Module) -> Callable[[], None]:
    """Snapshot the tensors of ``model``; the returned function puts them back.

    ``Runtime.prepare_model`` moves a model to the device and, for ``channels_last``,
    changes the memory format of its 4-D weights; ``model.to(device)`` alone would bring
    the device back but leave the memory format changed. Restoring the original tensors
    leaves the model exactly as it was (device, memory format, storage).
    """
    params = [(p, p.data, p.grad) for p in model.parameters()]
    buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]

    def restore() -> None:
        for p, data, grad in params:
            p.data = data
            p.grad = grad
        for m, k, b in buffers:
            m._buffers[k] = b

    return restore


def _manifest(
    teacher: nn.Module,
    student: nn.Module | None,
    cfg: InversionConfig,
    *,
    n: int,
    batch_sizes: list[int],
    seed: int,
    shape: tuple[int, int, int],
    num_classes: int,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    return {
        "format": 1,
        "n": n,
        "batch_sizes": batch_sizes,
        "seed": seed,
        "image_shape": list(shape),
        "num_classes": num_classes,
        "labels_sha": hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16],
        "teacher": fingerprint(teacher),
        "student": fingerprint(student) if student is not None else None,
        "config": asdict(cfg),
        "mean": list(mean),
        "std": list(std),
    }


_IDENTITY_KEYS = (
    "format",
    "n",
    "batch_sizes",
    "seed",
    "image_shape",
    "num_classes",
    "labels_sha",
    "teacher",
    "student",
    "config",
    "mean",
    "std",
)


def _check_or_write_manifest(
    out: Path, manifest: dict[str, Any], is_main: bool, overwrite: bool = False
) -> None:
    """Refuse (or, with ``overwrite``, empty) an ``out`` made with other settings; clean leftovers.

    Shards and the manifest of another synthesis are never mixed with this one's.
    """
    path = out / MANIFEST
    if is_main:
        clean_stale(out)
    if path.exists():
        try:
            check_key(read_json(path), {k: manifest[k] for k in _IDENTITY_KEYS}, out)
            return _check_room(out, manifest)
        except StageMismatch:
            if not overwrite:
                raise
        if is_main:
            remove_outputs([path, *sorted(out.glob("shard-*.pt"))])
    _check_room(out, manifest)
    if is_main:
        write_json_atomic({**manifest, "library": __version__}, path)


def _check_room(out: Path, manifest: dict[str, Any]) -> None:
    """Raise ``OSError(ENOSPC)`` when the shards still to write clearly do not fit on disk."""
    left = [b for i, b in enumerate(manifest["batch_sizes"]) if not (out / shard_name(i)).exists()]
    check_free_space(out, sum(left) * math.prod(manifest["image_shape"]) * 4)


def _unreadable_shards(out: Path, indices: list[int]) -> list[int]:
    """Finished-looking shards among ``indices`` that cannot be read; they are deleted."""
    bad = []
    for i in indices:
        path = out / shard_name(i)
        if not path.is_file():
            continue
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            ok = isinstance(shard, dict) and {"images", "labels"} <= shard.keys()
        except Exception:  # any unreadable file: regenerate it (batch i depends on (seed, i))
            ok = False
        if not ok:
            path.unlink()
            bad.append(i)
    return bad


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
) -> SyntheticImages:
    """Synthesise ``n`` images from ``teacher`` alone with DeepInversion.

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

    Returns:
        A :class:`SyntheticImages` dataset of ``(image, label)``.

    Raises:
        ValueError: no BatchNorm layer, ``n < 1``, ``batch_size < 2``, bad labels,
            unknown image size, or (:class:`~recoverprune._checks.StageMismatch`) an
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
    cfg = config or InversionConfig()
    if iterations is not None:
        from dataclasses import replace

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
    rt = resolve(device, accel)
    spec = InputSpec.of(teacher, image_size=image_size, channels=channels, mean=mean, std=std)
    shape = spec.shape
    mean, std = spec.normalisation()

    batch_sizes = _batch_sizes(n, batch_size)
    out = Path(out_dir) if out_dir is not None else None
    if rt.world_size > 1 and out is None:
        raise ValueError("distributed synthesis needs out_dir= (a directory all ranks can reach)")

    with ExitStack() as stack:
        stack.enter_context(borrowed(teacher, student))
        stack.callback(_keep_storage(teacher))
        rt.prepare_model(teacher)
        if student is not None:
            stack.callback(_keep_storage(student))
            rt.prepare_model(student)
        with torch.no_grad():
            probe = teacher(rt.prepare_input(torch.zeros(2, *shape)))
        num_classes = int(probe.shape[1])
        if labels is None:
            all_labels = _balanced_labels(n, num_classes, seed)
        else:
            all_labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
            if all_labels.numel() != n:
                raise ValueError(f"labels has {all_labels.numel()} entries, expected n={n}")
            if all_labels.min() < 0 or all_labels.max() >= num_classes:
                raise ValueError(
                    f"labels must lie in [0, {num_classes}) (the teacher has {num_classes} "
                    f"classes), got values from {int(all_labels.min())} to {int(all_labels.max())}"
                )
        manifest = _manifest(
            teacher,
            student,
            cfg,
            n=n,
            batch_sizes=batch_sizes,
            seed=seed,
            shape=shape,
            num_classes=num_classes,
            labels=all_labels,
            mean=mean,
            std=std,
        )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            _check_or_write_manifest(out, manifest, rt.is_main, overwrite)
            if rt.world_size > 1:
                import torch.distributed as dist

                dist.barrier()  # rank 0 has emptied an overwritten out_dir
        mean_t = torch.tensor(mean).view(1, -1, 1, 1)
        std_t = torch.tensor(std).view(1, -1, 1, 1)
        lo, hi = ((0 - mean_t) / std_t).to(rt.device), ((1 - mean_t) / std_t).to(rt.device)
        if not cfg.clip:
            lo, hi = torch.full_like(lo, -math.inf), torch.full_like(hi, math.inf)

        starts = [0, *torch.tensor(batch_sizes).cumsum(0).tolist()]
        mine = [i for i in range(len(batch_sizes)) if i % rt.world_size == rt.rank]
        if out is not None:
            _unreadable_shards(out, mine)
        todo = [i for i in mine if out is None or not (out / shard_name(i)).is_file()]
        kept_images: dict[int, Tensor] = {}
        kept_stats: dict[int, dict[str, float]] = {}
        losses = stack.enter_context(bn_statistics(teacher, cfg.first_bn_multiplier))
        inverter = _Inverter(teacher, student, cfg, rt, losses, lo, hi)
        total = len(todo) * cfg.iterations
        with progress_bar("DeepInversion", total, progress and rt.is_main and bool(todo)) as bar:
            t0 = time.perf_counter()
            done_images = 0
            for k, i in enumerate(todo):
                lb = all_labels[starts[i] : starts[i + 1]]
                g = generator(seed, "batch", i)
                t_batch = time.perf_counter()

                def on_step(
                    it: int,
                    s: dict[str, float],
                    k: int = k,
                    done: int = done_images,
                    size: int = len(lb),
                ) -> None:
                    if it % 10 == 0 or it == cfg.iterations - 1:
                        rate = (done * cfg.iterations + size * (it + 1)) / max(
                            time.perf_counter() - t0, 1e-9
                        )
                        bar.update(
                            batch=f"{k + 1}/{len(todo)}",
                            loss=s["loss"],
                            bn=s["bn_loss"],
                            ce=s["ce"],
                            img_it_s=rate,
                        )
                    bar.advance(1)

                try:
                    images, stats = inverter.run(lb, (len(lb), *shape), g, on_step)
                except FloatingPointError as exc:
                    where = f"batch {i}" + (f"; finished shards kept in {out}" if out else "")
                    raise FloatingPointError(f"{exc} ({where})") from exc
                stats["seconds"] = time.perf_counter() - t_batch
                done_images += len(lb)
                if out is not None:
                    save_atomic(
                        {"images": images, "labels": lb.clone(), "batch": i, "stats": stats},
                        out / shard_name(i),
                    )
                else:
                    kept_images[i], kept_stats[i] = images, stats
    if out is not None:
        if rt.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return SyntheticImages.load(out)
    order = sorted(kept_images)
    meta = {k: v for k, v in manifest.items() if k not in ("mean", "std")}
    meta["stats"] = [kept_stats[i] for i in order]
    return SyntheticImages(
        [kept_images[i] for i in order],
        [all_labels[starts[i] : starts[i + 1]] for i in order],
        mean=mean,
        std=std,
        meta=meta,
    )
