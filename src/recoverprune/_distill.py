"""Knowledge distillation of the teacher into the pruned student on synthetic images."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from recoverprune._dataset import SyntheticImages
from recoverprune._evaluate import evaluate, resolve_data
from recoverprune._inversion import borrowed
from recoverprune._io import fingerprint, load_checkpoint, save_atomic, write_json_atomic
from recoverprune._progress import console
from recoverprune._progress import progress as progress_bar
from recoverprune._prune import refresh_pruned
from recoverprune._runtime import Accel, Runtime, generator, resolve

__all__ = ["CHECKPOINT", "DistillConfig", "augment", "kd_loss", "recover"]

CHECKPOINT = "recover-checkpoint.pt"
FINAL = "student.pt"
BNMode = Literal["train", "frozen"]


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
        augment: random crop (with ``crop_padding``) and horizontal flip.
        crop_padding: zero padding before the random crop.
        bn_mode: ``"train"`` updates the student's BatchNorm running statistics on the
            synthetic batches; ``"frozen"`` keeps the statistics inherited from the teacher
            (the affine parameters still learn).
        holdout: fraction of the synthetic set held out to report teacher–student
            agreement when no ``val_data`` is given (0 turns it off).

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
    augment: bool = True
    crop_padding: int = 4
    bn_mode: BNMode = "train"
    holdout: float = 0.05

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.bn_mode not in ("train", "frozen"):
            raise ValueError(f"bn_mode must be 'train' or 'frozen', got {self.bn_mode!r}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


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


def augment(x: Tensor, g: torch.Generator, padding: int = 4, flip: bool = True) -> Tensor:
    """Per-image random crop (after zero padding) and horizontal flip of a batch.

    Randomness comes from the CPU generator ``g`` only, so results are reproducible.

    Example:
        >>> import torch
        >>> augment(torch.randn(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    b, _, h, w = x.shape
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(x.device)
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=g) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


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
def _agreement(
    teacher: nn.Module,
    student: nn.Module,
    data: SyntheticImages,
    rt: Runtime,
    batch_size: int = 512,
) -> float:
    agree = 0
    for start in range(0, len(data), batch_size):
        x, _ = data.get_batch(torch.arange(start, min(start + batch_size, len(data))))
        x = rt.prepare_input(x)
        with rt.autocast():
            agree += int((teacher(x).argmax(1) == student(x).argmax(1)).sum())
    return 100.0 * agree / max(len(data), 1)


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


def recover(
    teacher: nn.Module,
    student: nn.Module,
    synthetic: SyntheticImages,
    *,
    config: DistillConfig | None = None,
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
        synthetic: the transfer set, e.g. from :func:`~recoverprune.synthesize`.
        config: hyper-parameters (:class:`DistillConfig`).
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
        >>> teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> data = SyntheticImages(torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,)))
        >>> student = recover(teacher, prune(teacher, 0.5), data, epochs=2, progress=False)
        >>> int((student[1].weight == 0).sum())
        18
    """
    cfg = config or DistillConfig()
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    if len(synthetic) == 0:
        raise ValueError("the synthetic set is empty: synthesize some images first")
    rt = resolve(device, accel)
    out = Path(out_dir) if out_dir is not None else None

    val_set = None
    if val_data is not None:
        if isinstance(val_data, (str, os.PathLike)):
            val_set = resolve_data(student, val_data)
        else:
            val_set = val_data
    train_set, held = synthetic, None
    if val_set is None and cfg.holdout > 0 and len(synthetic) >= 20:
        train_set, held = synthetic.split(cfg.holdout, seed)

    meta = {
        "config": asdict(cfg),
        "teacher": fingerprint(teacher),
        "n_synthetic": len(synthetic),
        "seed": seed,
    }
    teacher_device = next(teacher.parameters()).device
    student_device = next(student.parameters()).device
    with ExitStack() as stack:
        stack.enter_context(borrowed(teacher))
        rt.prepare_model(teacher)
        stack.callback(teacher.to, teacher_device)
        rt.prepare_model(student)
        stack.callback(student.to, student_device)
        _check_fit(teacher, student, synthetic, rt)

        state = _resume(out, meta, student) if out is not None else None
        if state is not None and state.get("done"):
            student.recovery_history = state["history"]  # type: ignore[assignment]
            refresh_pruned(student)
            return student.eval()

        optimizer = _make_optimizer(student, cfg)
        start_epoch, history, best = 0, [], None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history, best = state["epoch"], state["history"], state.get("best")

        model: nn.Module = student
        if rt.world_size > 1:
            model = DistributedDataParallel(
                student, device_ids=[rt.device] if rt.device.type == "cuda" else None
            )
        train_fwd: Callable[[Tensor], Tensor] = rt.maybe_compile(model)
        teacher_fwd: Callable[[Tensor], Tensor] = rt.maybe_compile(teacher)

        sampler = DistributedSampler(
            range(len(train_set)),
            num_replicas=rt.world_size,  # type: ignore[arg-type]
            rank=rt.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        t_start = time.perf_counter()
        seen = 0
        with progress_bar("Recovery", total_steps, progress and rt.is_main) as bar:
            bar.advance(start_epoch * steps_per_epoch)
            for epoch in range(start_epoch, cfg.epochs):
                sampler.set_epoch(epoch)
                order = torch.tensor(list(sampler))
                g = generator(seed, "augment", epoch, rt.rank)
                loss_sum, loss_n = 0.0, 0
                with _bn_mode(student, cfg.bn_mode):
                    for s in range(steps_per_epoch):
                        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                        x, y = train_set.get_batch(idx)
                        if cfg.augment:
                            x = augment(x, g, cfg.crop_padding)
                        x, y = rt.prepare_input(x), y.to(rt.device)
                        step = epoch * steps_per_epoch + s
                        for group in optimizer.param_groups:
                            group["lr"] = _lr_at(step, total_steps, cfg)
                        with torch.no_grad(), rt.autocast():
                            t_logits = teacher_fwd(x)
                        with rt.autocast():
                            s_logits = train_fwd(x)
                        loss = kd_loss(s_logits, t_logits, cfg.temperature)
                        if cfg.ce_weight:
                            loss = loss + cfg.ce_weight * F.cross_entropy(s_logits.float(), y)
                        if not torch.isfinite(loss):
                            where = f"epoch {epoch + 1}, step {s + 1}"
                            kept = f"; the last good checkpoint is in {out}" if out else ""
                            raise FloatingPointError(
                                f"non-finite distillation loss at {where}{kept}. Lower lr."
                            )
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        seen += len(idx)
                        loss_sum += float(loss.detach()) * len(idx)
                        loss_n += len(idx)
                        bar.advance(
                            1,
                            epoch=f"{epoch + 1}/{cfg.epochs}",
                            loss=loss_sum / loss_n,
                            img_s=seen / (time.perf_counter() - t_start),
                        )
                refresh_pruned(student)
                record: dict[str, float] = {
                    "epoch": epoch + 1,
                    "loss": loss_sum / max(loss_n, 1),
                    "lr": _lr_at(step, total_steps, cfg),
                }
                if val_set is not None:
                    res = evaluate(student, val_set, device=rt.device, progress=False)
                    record["val_top1"] = res.top1
                    if best is None or res.top1 > best["score"]:
                        best = {
                            "score": res.top1,
                            "epoch": epoch + 1,
                            "state": {
                                k: v.detach().clone() for k, v in student.state_dict().items()
                            },
                        }
                if held is not None:
                    student.eval()
                    record["agreement"] = _agreement(teacher, student, held, rt)
                    record["agreement_images"] = len(held)
                history.append(record)
                bar.update(
                    epoch=f"{epoch + 1}/{cfg.epochs}",
                    loss=record["loss"],
                    **{k: record[k] for k in ("val_top1", "agreement") if k in record},
                )
                if out is not None and rt.is_main:
                    save_atomic(
                        {
                            "epoch": epoch + 1,
                            "student": student.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "history": history,
                            "best": best,
                            "meta": meta,
                            "done": False,
                        },
                        out / CHECKPOINT,
                    )
        if best is not None and best["epoch"] != cfg.epochs:
            student.load_state_dict(best["state"])
            if rt.is_main and progress:
                console.print(
                    f"kept the best epoch ({best['epoch']}, val top-1 {best['score']:.2f}%)"
                )
        refresh_pruned(student)
        student.recovery_history = history  # type: ignore[assignment]
        if out is not None and rt.is_main:
            save_atomic(student.state_dict(), out / FINAL)
            save_atomic(
                {
                    "epoch": cfg.epochs,
                    "student": student.state_dict(),
                    "history": history,
                    "meta": meta,
                    "done": True,
                },
                out / CHECKPOINT,
            )
            write_json_atomic({"history": history, **meta}, out / "recover-history.json")
    return student.eval()


def _resume(out: Path, meta: dict[str, Any], student: nn.Module) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        return None
    state = load_checkpoint(path)
    old = state.get("meta", {})

    new = json.loads(json.dumps(meta, default=str))
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ValueError(
            f"{path} was made with different settings ({', '.join(diff)} differ); use a new "
            "out_dir or delete it to start over"
        )
    student.load_state_dict(state["student"])
    return state
