"""Knowledge distillation of the teacher into the pruned student on synthetic images.

:func:`recover` is a short driver: it borrows the teacher, prepares the student
(:mod:`recoverprune._calibrate`), then runs epochs of :func:`_train_epoch`, each step
summing the loss terms of :mod:`recoverprune._objectives`, with a checkpoint after each
epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from recoverprune._calibrate import recalibrate_bn, reconstruct
from recoverprune._checks import (
    architecture,
    check_free_space,
    check_key,
    check_writable,
    clean_stale,
    data_fingerprint,
    load_own,
)
from recoverprune._dataset import SyntheticImages
from recoverprune._evaluate import evaluate, resolve_data
from recoverprune._inversion import borrowed
from recoverprune._io import fingerprint, save_atomic, write_json_atomic
from recoverprune._objectives import (
    CrossEntropy,
    FeatureKD,
    LogitKD,
    LossTerm,
    StepOutputs,
    bind_objective,
    kd_loss,
)
from recoverprune._progress import Bar, console
from recoverprune._progress import progress as progress_bar
from recoverprune._prune import refresh_pruned, reselect_masks, sparsity
from recoverprune._runtime import Accel, Runtime, generator, resolve
from recoverprune._transfer import as_transfer_set

__all__ = [
    "CHECKPOINT",
    "DistillConfig",
    "augment",
    "default_objective",
    "kd_loss",
    "mix",
    "recover",
]

CHECKPOINT = "recover-checkpoint.pt"
FINAL = "student.pt"
#: synthetic images the layer-wise reconstruction fits on (every spatial position counts)
RECONSTRUCT_IMAGES = 256
BNMode = Literal["train", "frozen"]
MixMode = Literal["none", "mixup", "cutmix"]


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of the recovery (distillation) loop.

    Attributes:
        epochs: passes over the synthetic set.
        batch_size: images per step (per process when distributed).
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adamw"``.
        lr: peak learning rate (reached after warm-up, then cosine decay to 0).
        momentum: SGD momentum.
        weight_decay: decoupled for AdamW, L2 for SGD.
        warmup_fraction: fraction of all steps spent warming the learning rate up.
        temperature: KD softmax temperature ``T``; the loss is ``T² · KL``.
        ce_weight: weight of cross-entropy to the synthetic target labels (0 = pure KD).
        feature_weight: weight of feature distillation (:class:`FeatureKD`): the student's
            intermediate outputs matched to the teacher's at the same places (0 = off).
        feature_layers: where features are matched: ``"auto"``, ``"blocks"`` or ``"bn"``.
        recalibrate: re-estimate the student's BatchNorm statistics on the synthetic
            images before distillation (seconds).
        reconstruct: refit each pruned layer's kept weights by least squares so it
            reproduces the teacher layer's output on synthetic activations, before
            distillation (channel-pruned layers are left to distillation).
        gradual: fraction of the steps over which sparsity ramps from 0 to the
            student's sparsity (cubic schedule, masks re-selected by magnitude every
            step); 0 keeps the masks the student came with (one-shot).
        mix: ``"mixup"`` or ``"cutmix"`` pairs of synthetic images in each batch (the
            teacher labels the mixture through its logits); ``"none"``.
        augment: random crop (with ``crop_padding``) and, if ``flip``, horizontal flip.
        crop_padding: black padding (in pixel space) before the random crop.
        flip: random horizontal flips (turn off for digits and text).
        bn_mode: ``"train"`` updates the student's BatchNorm running statistics on the
            synthetic batches; ``"frozen"`` keeps the statistics it starts with
            (the affine parameters still learn).
        holdout: fraction of the synthetic set held out to report teacher–student
            agreement when no ``val_data`` is given (0, the default, trains on every
            image; :func:`~recoverprune.compress` measures agreement on an independently
            seeded check set instead, see ``check_quality``).

    The defaults (reconstruction, feature distillation with weight 10, CutMix) are the
    best combination of ``benchmarks/recipe_ablation.py``.

    Example:
        >>> DistillConfig(epochs=10).temperature
        4.0
    """

    epochs: int = 60
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.03
    temperature: float = 4.0
    ce_weight: float = 0.0
    feature_weight: float = 10.0
    feature_layers: Literal["auto", "blocks", "bn"] = "auto"
    recalibrate: bool = False
    reconstruct: bool = True
    gradual: float = 0.0
    mix: MixMode = "cutmix"
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    bn_mode: BNMode = "train"
    holdout: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "optimizer must be 'sgd' or 'adamw'": self.optimizer in ("sgd", "adamw"),
            "lr must be > 0": self.lr > 0,
            "temperature must be > 0": self.temperature > 0,
            "ce_weight must be >= 0": self.ce_weight >= 0,
            "feature_weight must be >= 0": self.feature_weight >= 0,
            "feature_layers must be 'auto', 'blocks' or 'bn'": self.feature_layers
            in ("auto", "blocks", "bn"),
            "gradual must be in [0, 1)": 0 <= self.gradual < 1,
            "mix must be 'none', 'mixup' or 'cutmix'": self.mix in ("none", "mixup", "cutmix"),
            "bn_mode must be 'train' or 'frozen'": self.bn_mode in ("train", "frozen"),
            "holdout must be in [0, 1)": 0 <= self.holdout < 1,
            "warmup_fraction must be in [0, 1)": 0 <= self.warmup_fraction < 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"{message} (DistillConfig: {self!r})")


def default_objective(cfg: DistillConfig) -> list[LossTerm]:
    """The loss terms ``cfg`` asks for: logit KD, plus feature KD and CE when weighted.

    Example:
        >>> [t.name for t in default_objective(DistillConfig())]
        ['kd', 'feature']
        >>> [t.name for t in default_objective(DistillConfig(feature_weight=0, ce_weight=1))]
        ['kd', 'ce']
    """
    terms: list[LossTerm] = [LogitKD(temperature=cfg.temperature)]
    if cfg.feature_weight > 0:
        terms.append(FeatureKD(layers=cfg.feature_layers, weight=cfg.feature_weight))
    if cfg.ce_weight > 0:
        terms.append(CrossEntropy(weight=cfg.ce_weight))
    return terms


# --------------------------------------------------------------------------- batch transforms
def augment(
    x: Tensor,
    g: torch.Generator,
    padding: int = 4,
    flip: bool = True,
    fill: Sequence[float] | None = None,
) -> Tensor:
    """Per-image random crop (after padding) and horizontal flip of a batch.

    ``fill`` is the per-channel value the padding takes (e.g. black in the normalised
    space, ``-mean / std``); 0 by default. Randomness comes from the CPU generator ``g``
    only, so results are reproducible.

    Example:
        >>> import torch
        >>> augment(torch.randn(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    b, c, h, w = x.shape
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        padded = F.pad(x, (padding, padding, padding, padding))
        if fill is not None:
            border = torch.ones_like(padded[:1, :1])
            border[..., padding : padding + h, padding : padding + w] = 0
            value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
            padded = padded + border * value
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=g) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def mix(x: Tensor, g: torch.Generator, mode: MixMode) -> Tensor:
    """Mix each image with another of the batch (mixup: blend; cutmix: paste a box).

    The mixing ratio is uniform in [0, 1] per batch; labels are not needed because the
    teacher's logits on the mixture are the target. Deterministic given ``g``.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, 8, 8)
        >>> mix(x, torch.Generator().manual_seed(0), "cutmix").shape
        torch.Size([4, 3, 8, 8])
    """
    if mode == "none":
        return x
    perm = torch.randperm(len(x), generator=g).to(x.device)
    lam = float(torch.rand((), generator=g))
    if mode == "mixup":
        return lam * x + (1 - lam) * x[perm]
    h, w = x.shape[-2:]
    bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    top = int(torch.randint(0, h - bh + 1, (), generator=g))
    left = int(torch.randint(0, w - bw + 1, (), generator=g))
    out = x.clone()
    out[..., top : top + bh, left : left + bw] = x[perm][..., top : top + bh, left : left + bw]
    return out


# --------------------------------------------------------------------------- loop pieces
@contextmanager
def _bn_mode(model: nn.Module, mode: BNMode) -> Iterator[None]:
    """Training mode for ``model``; BatchNorm layers in eval mode when ``mode == "frozen"``."""
    model.train()
    if mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    try:
        yield
    finally:
        model.eval()


def _lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    warm = int(cfg.warmup_fraction * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def _sparsity_at(step: int, total: int, cfg: DistillConfig, target: float) -> float:
    """Cubic ramp (Zhu & Gupta 2017) from 0 to ``target`` over ``cfg.gradual`` of the steps."""
    ramp = cfg.gradual * total
    if step >= ramp:
        return target
    return target * (1 - (1 - step / ramp) ** 3)


def _make_optimizer(model: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


@torch.no_grad()
def agreement_and_kl(
    teacher: nn.Module,
    student: nn.Module,
    data: SyntheticImages,
    rt: Runtime,
    batch_size: int = 512,
) -> dict[str, float]:
    """Teacher–student top-1 agreement (%) and mean ``KL(teacher ‖ student)`` on ``data``.

    Both models are used as they are (call it in eval mode), on ``rt``'s device.
    """
    agree, kl = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, _ = data.get_batch(torch.arange(start, min(start + batch_size, len(data))))
        x = rt.prepare_input(x)
        with rt.autocast():
            t, s = teacher(x).float(), student(x).float()
        agree += int((t.argmax(1) == s.argmax(1)).sum())
        kl += float(F.kl_div(s.log_softmax(1), t.log_softmax(1), reduction="sum", log_target=True))
    n = max(len(data), 1)
    return {"images": len(data), "agreement": 100.0 * agree / n, "kl": round(kl / n, 6) + 0.0}


def _agreement(teacher: nn.Module, student: nn.Module, data: SyntheticImages, rt: Runtime) -> float:
    return agreement_and_kl(teacher, student, data, rt)["agreement"]


def _check_fit(teacher: nn.Module, student: nn.Module, data: SyntheticImages, rt: Runtime) -> None:
    x = rt.prepare_input(data.get_batch(torch.arange(min(2, len(data))))[0])
    outs = {}
    for name, model in (("teacher", teacher), ("student", student)):
        try:
            with torch.no_grad(), rt.autocast():
                outs[name] = model(x)
        except RuntimeError as exc:
            raise ValueError(
                f"synthetic images of shape {tuple(data.image_shape)} do not fit the {name} "
                f"({type(model).__name__}): {str(exc).splitlines()[0]}. Synthesize with the "
                "image size the models expect."
            ) from exc
    if outs["teacher"].shape != outs["student"].shape:
        raise ValueError(
            f"teacher and student outputs differ in shape ({tuple(outs['teacher'].shape[1:])} vs "
            f"{tuple(outs['student'].shape[1:])}): they must predict the same classes"
        )


def _prepare_student(
    teacher: nn.Module, student: nn.Module, data: SyntheticImages, cfg: DistillConfig, rt: Runtime
) -> dict[str, float]:
    """Repairs before the first epoch: reconstruction, then BN recalibration (timed)."""
    seconds: dict[str, float] = {}
    if not (cfg.reconstruct or cfg.recalibrate):
        return seconds
    images = data.get_batch(torch.arange(len(data)))[0]
    if cfg.reconstruct:
        t0 = time.perf_counter()
        reconstruct(teacher, student, images[:RECONSTRUCT_IMAGES], rt=rt)
        seconds["reconstruct_s"] = time.perf_counter() - t0
    if cfg.recalibrate:
        t0 = time.perf_counter()
        recalibrate_bn(student, images, rt=rt)
        seconds["recalibrate_s"] = time.perf_counter() - t0
    return seconds


@dataclass
class _Loop:
    """Everything one training step needs, built once per :func:`recover` call."""

    teacher_fwd: Callable[[Tensor], Tensor]
    student_fwd: Callable[[Tensor], Tensor]
    student: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[StepOutputs], dict[str, Tensor]]
    data: SyntheticImages
    cfg: DistillConfig
    rt: Runtime
    seed: int
    steps_per_epoch: int
    total_steps: int
    target_sparsity: float
    fill: tuple[float, ...] | None
    out: Path | None
    t_start: float = field(default_factory=time.perf_counter)
    seen: int = 0

    def batch(self, idx: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = self.data.get_batch(idx)
        if self.cfg.augment:
            x = augment(x, g, self.cfg.crop_padding, self.cfg.flip, self.fill)
        x = mix(x, g, self.cfg.mix)
        return self.rt.prepare_input(x), y.to(self.rt.device)

    def step(self, x: Tensor, y: Tensor, step: int) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(step, self.total_steps, self.cfg)
        if self.cfg.gradual > 0:
            target = _sparsity_at(step, self.total_steps, self.cfg, self.target_sparsity)
            reselect_masks(self.student, target)
        with torch.no_grad(), self.rt.autocast():
            t_logits = self.teacher_fwd(x)
        with self.rt.autocast():
            s_logits = self.student_fwd(x)
        loss = sum(self.loss_fn(StepOutputs(s_logits, t_logits, y)).values())
        assert isinstance(loss, Tensor)
        if not torch.isfinite(loss):
            epoch, s = divmod(step, self.steps_per_epoch)
            kept = f"; the last good checkpoint is in {self.out}" if self.out else ""
            raise FloatingPointError(
                f"non-finite distillation loss at epoch {epoch + 1}, step {s + 1}{kept}. Lower lr."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seen += len(x)
        return loss.detach()


def _train_epoch(loop: _Loop, epoch: int, sampler: DistributedSampler, bar: Bar) -> float:
    """One pass over the (shard of the) transfer set; returns the mean loss."""
    cfg = loop.cfg
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    g = generator(loop.seed, "augment", epoch, loop.rt.rank)
    loss_sum, loss_n = 0.0, 0
    with _bn_mode(loop.student, cfg.bn_mode):
        for s in range(loop.steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            x, y = loop.batch(idx, g)
            loss = float(loop.step(x, y, epoch * loop.steps_per_epoch + s))
            loss_sum += loss * len(idx)
            loss_n += len(idx)
            bar.advance(
                1,
                epoch=f"{epoch + 1}/{cfg.epochs}",
                loss=loss_sum / loss_n,
                img_s=loop.seen / (time.perf_counter() - loop.t_start),
            )
    refresh_pruned(loop.student)
    return loss_sum / max(loss_n, 1)


def _measure_epoch(
    teacher: nn.Module,
    student: nn.Module,
    val_set: Any,
    held: SyntheticImages | None,
    rt: Runtime,
) -> dict[str, float]:
    record: dict[str, float] = {}
    if val_set is not None:
        record["val_top1"] = evaluate(student, val_set, device=rt.device, progress=False).top1
    if held is not None:
        student.eval()
        record["agreement"] = _agreement(teacher, student, held, rt)
        record["agreement_images"] = len(held)
    return record


def _keep_best(best: dict[str, Any] | None, record: dict[str, float], student: nn.Module) -> Any:
    if "val_top1" not in record or (best is not None and record["val_top1"] <= best["score"]):
        return best
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    return {"score": record["val_top1"], "epoch": int(record["epoch"]), "state": state}


def _split(
    synthetic: SyntheticImages, val_data: Any, student: nn.Module, cfg: DistillConfig, seed: int
) -> tuple[SyntheticImages, SyntheticImages | None, Any]:
    """``(train set, held-out synthetic set, validation set)``."""
    val_set = val_data
    if isinstance(val_data, (str, os.PathLike)):
        val_set = resolve_data(student, val_data)
    if val_set is None and cfg.holdout > 0 and len(synthetic) >= 20:
        train, held = synthetic.split(cfg.holdout, seed)
        return train, held, None
    return synthetic, None, val_set


def recover(
    teacher: nn.Module,
    student: nn.Module,
    synthetic: SyntheticImages | Dataset[Any] | tuple[Tensor, Tensor],
    *,
    config: DistillConfig | None = None,
    objective: Sequence[LossTerm] | None = None,
    epochs: int | None = None,
    val_data: Dataset[Any] | str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
) -> nn.Module:
    """Distil ``teacher`` into ``student`` on synthetic images; pruned weights stay zero.

    The student is trained in place and returned in eval mode on its original device.
    Masks from :func:`~recoverprune.prune` are respected at every step (a student
    without masks trains densely). The teacher is never modified.

    Args:
        teacher: the trained (dense) network.
        student: the network to train, usually ``prune(teacher, ...)``.
        synthetic: the transfer set, e.g. from :func:`~recoverprune.synthesize`, or any
            labelled data: a Dataset of ``(image, label)``, a ``TensorDataset`` or
            ``(images, labels)`` tensors (images in the models' normalised input space).
        config: hyper-parameters (:class:`DistillConfig`).
        objective: the loss terms (default :func:`default_objective` of ``config``:
            logit KD, plus feature KD / CE when ``config`` weights them).
        epochs: shortcut overriding ``config.epochs``.
        val_data: optional labelled data (Dataset or ImageFolder/tar.gz path) to report
            top-1 each epoch and keep the best epoch.
        out_dir: checkpoint each epoch there (atomic) and resume from it.
        seed: data order and augmentation depend only on ``(seed, epoch)``.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        accel: GPU fast-path switches (default automatic).
        progress: show a rich progress bar.

    Returns:
        The trained student (the same object), with ``student.recovery_history``.

    Raises:
        ValueError: empty synthetic set, images that do not fit, teacher/student output
            shapes that differ, or an ``out_dir`` checkpoint made with other settings.
        FloatingPointError: the loss became non-finite (the last good checkpoint is kept).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from recoverprune import SyntheticImages, prune, recover
        >>> teacher = nn.Sequential(
        ...     nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)
        ... ).eval()
        >>> data = SyntheticImages(torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,)))
        >>> student = recover(teacher, prune(teacher, 0.5), data, epochs=2, progress=False)
        >>> int((student[1].weight == 0).sum() + (student[3].weight == 0).sum())
        45
    """
    cfg = replace(config or DistillConfig(), **({} if epochs is None else {"epochs": epochs}))
    synthetic = as_transfer_set(synthetic)
    if len(synthetic) == 0:
        raise ValueError("the synthetic set is empty: synthesize some images first")
    rt = resolve(device, accel)
    out = Path(out_dir) if out_dir is not None else None
    train_set, held, val_set = _split(synthetic, val_data, student, cfg, seed)
    terms = list(objective) if objective is not None else default_objective(cfg)
    meta = {
        "config": asdict(cfg),
        "objective": [repr(t) for t in terms],
        "teacher": fingerprint(teacher),
        "student": fingerprint(student),  # masks included: another amount is another student
        "student_arch": architecture(student),
        "synthetic": data_fingerprint(synthetic),
        "n_synthetic": len(synthetic),
        "seed": seed,
    }
    with ExitStack() as stack:
        _borrow_models(stack, teacher, student, rt)
        _check_fit(teacher, student, synthetic, rt)
        state = _resume(out, meta, student) if out is not None else None
        if state is not None and state.get("done"):
            return _finished(student, state["history"])
        history: list[dict[str, float]] = state["history"] if state else []
        prep = {} if state else _prepare_student(teacher, student, train_set, cfg, rt)
        optimizer = _make_optimizer(student, cfg)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        loss_fn = stack.enter_context(bind_objective(terms, teacher, student))
        loop, sampler = _build_loop(
            teacher, student, optimizer, loss_fn, train_set, cfg, rt, seed, out
        )
        best = state.get("best") if state else None
        start = state["epoch"] if state else 0
        with progress_bar("Recovery", loop.total_steps, progress and rt.is_main) as bar:
            bar.advance(start * loop.steps_per_epoch)
            for epoch in range(start, cfg.epochs):
                record: dict[str, float] = {"epoch": epoch + 1, **prep}
                record["loss"] = _train_epoch(loop, epoch, sampler, bar)
                record["lr"] = _lr_at((epoch + 1) * loop.steps_per_epoch - 1, loop.total_steps, cfg)
                record.update(_measure_epoch(teacher, student, val_set, held, rt))
                history.append(record)
                best = _keep_best(best, record, student)
                bar.update(**{k: v for k, v in record.items() if k != "lr"})
                if out is not None and rt.is_main:
                    _checkpoint(out, epoch + 1, student, optimizer, history, best, meta)
                prep = {}
        _restore_best(student, best, cfg, progress and rt.is_main)
        if out is not None and rt.is_main:
            _write_final(out, cfg, student, history, meta)
        return _finished(student, history)


def _borrow_models(stack: ExitStack, teacher: nn.Module, student: nn.Module, rt: Runtime) -> None:
    """Teacher frozen in eval mode; both on the device until the stack closes."""
    teacher_device = next(teacher.parameters()).device
    student_device = next(student.parameters()).device
    stack.enter_context(borrowed(teacher))
    rt.prepare_model(teacher)
    stack.callback(teacher.to, teacher_device)
    rt.prepare_model(student)
    stack.callback(student.to, student_device)


def _build_loop(
    teacher: nn.Module,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[StepOutputs], dict[str, Tensor]],
    data: SyntheticImages,
    cfg: DistillConfig,
    rt: Runtime,
    seed: int,
    out: Path | None,
) -> tuple[_Loop, DistributedSampler]:
    model: nn.Module = student
    if rt.world_size > 1:
        model = DistributedDataParallel(
            student, device_ids=[rt.device] if rt.device.type == "cuda" else None
        )
    sampler = DistributedSampler(
        range(len(data)),  # type: ignore[arg-type]
        num_replicas=rt.world_size,
        rank=rt.rank,
        shuffle=True,
        seed=seed,
        drop_last=False,
    )
    steps = math.ceil(len(sampler) / cfg.batch_size)
    loop = _Loop(
        teacher_fwd=rt.maybe_compile(teacher),
        student_fwd=rt.maybe_compile(model),
        student=student,
        optimizer=optimizer,
        loss_fn=loss_fn,
        data=data,
        cfg=cfg,
        rt=rt,
        seed=seed,
        steps_per_epoch=steps,
        total_steps=steps * cfg.epochs,
        target_sparsity=sparsity(student).overall if cfg.gradual > 0 else 0.0,
        fill=_black(data),
        out=out,
    )
    return loop, sampler


def _black(data: Any) -> tuple[float, ...] | None:
    """Black in the data's normalised space (``-mean / std``), if the data says its mean/std."""
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if mean is None or std is None or len(mean) != data.image_shape[0]:
        return None
    return tuple(-m / s for m, s in zip(mean, std, strict=True))


def _checkpoint(
    out: Path,
    epoch: int,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    best: Any,
    meta: dict[str, Any],
) -> None:
    state = {
        "epoch": epoch,
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "best": best,
        "meta": meta,
        "done": False,
    }
    save_atomic(state, out / CHECKPOINT)


def _restore_best(student: nn.Module, best: Any, cfg: DistillConfig, verbose: bool) -> None:
    if best is None or best["epoch"] == cfg.epochs:
        return
    student.load_state_dict(best["state"])
    if verbose:
        console.print(f"kept the best epoch ({best['epoch']}, val top-1 {best['score']:.2f}%)")


def _write_final(
    out: Path,
    cfg: DistillConfig,
    student: nn.Module,
    history: list[dict[str, float]],
    meta: dict[str, Any],
) -> None:
    refresh_pruned(student)
    save_atomic(student.state_dict(), out / FINAL)
    final = {
        "epoch": cfg.epochs,
        "student": student.state_dict(),
        "history": history,
        "meta": meta,
        "done": True,
    }
    save_atomic(final, out / CHECKPOINT)
    write_json_atomic({"history": history, **meta}, out / "recover-history.json")


def _finished(student: nn.Module, history: list[dict[str, float]]) -> nn.Module:
    refresh_pruned(student)
    student.recovery_history = history  # type: ignore[assignment]
    return student.eval()


def _resume(out: Path, meta: dict[str, Any], student: nn.Module) -> dict[str, Any] | None:
    """The checkpoint in ``out`` if it was made from exactly these inputs, else ``None``.

    Raises:
        StageMismatch: ``out`` holds a recovery of another student, teacher, data or config.
    """
    path = out / CHECKPOINT
    check_writable(out)  # before any compute, not at the end of the first epoch
    clean_stale(out)
    size = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    check_free_space(out, 6 * size)  # checkpoint with optimizer state, student.pt, temps
    if not path.is_file():
        return None
    state = load_own(path)
    check_key(state.get("meta", {}), meta, path)
    student.load_state_dict(state["student"])
    return state
