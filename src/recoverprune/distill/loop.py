"""Knowledge distillation of the teacher into the pruned student, reading its data through the
transfer-source protocol only (:mod:`~recoverprune.distill.source`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from recoverprune.core.borrow import borrowed, placed
from recoverprune.core.files import check_free_space, check_writable, clean_stale
from recoverprune.core.io import fingerprint, load_own, save_atomic, save_model, write_json_atomic
from recoverprune.core.progress import Bar, console
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import Accel, Runtime, generator, resolve
from recoverprune.core.stages import architecture, check_key
from recoverprune.data.transfer import as_source
from recoverprune.distill.agreement import agreement
from recoverprune.distill.augment import augment, mix
from recoverprune.distill.config import BNMode, DistillConfig, default_objective
from recoverprune.distill.freeze import frozen_classifier
from recoverprune.distill.local import block_local
from recoverprune.distill.objectives import LossTerm, StepOutputs, bind_objective
from recoverprune.distill.repair import recalibrate_bn, reconstruct
from recoverprune.distill.source import TransferSource, hook
from recoverprune.evaluation.evaluate import evaluate, resolve_data
from recoverprune.pruning.batchnorm import bn_layers
from recoverprune.pruning.channel_spec import channel_spec
from recoverprune.pruning.masks import refresh_pruned, reselect_masks
from recoverprune.pruning.sparsity import sparsity

__all__ = ["CHECKPOINT", "FINAL", "HISTORY", "recover"]


CHECKPOINT = "recover-checkpoint.pt"
#: the recovered student (:func:`~recoverprune.core.io.save_model`'s format)
FINAL = "student.pt"
#: the per-epoch history (loss, agreement, top-1) of a recovery
HISTORY = "recover-history.json"


#: synthetic images the layer-wise reconstruction fits on (every spatial position counts)
RECONSTRUCT_IMAGES = 256


# --------------------------------------------------------------------------- loop pieces
@contextmanager
def _bn_mode(model: nn.Module, mode: BNMode) -> Iterator[None]:
    """Training mode for ``model``; BatchNorm layers in eval mode when ``mode == "frozen"``."""
    model.train()
    for m in bn_layers(model) if mode == "frozen" else []:
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
    return target if step >= ramp else target * (1 - (1 - step / ramp) ** 3)


def _make_optimizer(model: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sgd = {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0, "weight_decay": cfg.weight_decay}
    return torch.optim.SGD(params, lr=cfg.lr, **sgd)


def _check_fit(teacher: nn.Module, student: nn.Module, data: TransferSource, rt: Runtime) -> None:
    x = rt.prepare_input(data.get_batch(torch.arange(min(2, len(data))))[0])
    outs = {}
    for name, model in (("teacher", teacher), ("student", student)):
        try:
            with torch.no_grad(), rt.autocast():
                outs[name] = model(x)
        except RuntimeError as exc:
            raise ValueError(
                f"synthetic images of shape {tuple(x.shape[1:])} do not fit the {name} "
                f"({type(model).__name__}): {str(exc).splitlines()[0]}. Synthesize with the "
                "image size the models expect."
            ) from exc
    if outs["teacher"].shape != outs["student"].shape:
        raise ValueError(
            f"teacher and student outputs differ in shape ({tuple(outs['teacher'].shape[1:])} vs "
            f"{tuple(outs['student'].shape[1:])}): they must predict the same classes"
        )


def _prepare_student(
    teacher: nn.Module, student: nn.Module, data: TransferSource, cfg: DistillConfig, rt: Runtime
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


def _sync_grads(model: nn.Module, rt: Runtime) -> None:
    """Average gradients over ranks by hand (block-local steps call the student's blocks
    directly, outside DistributedDataParallel's forward)."""
    if rt.world_size > 1:
        for p in model.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= rt.world_size


class _Loop:
    """Everything one training step needs, built once per :func:`recover` call."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[StepOutputs], dict[str, Tensor]], data: TransferSource,
        cfg: DistillConfig, rt: Runtime, seed: int, out: Path | None,
        local_fn: Callable[[], Tensor] | None = None,
    ) -> None:
        model: nn.Module = student
        if rt.world_size > 1:
            ids = [rt.device] if rt.device.type == "cuda" else None
            model = DistributedDataParallel(student, device_ids=ids)
        self.teacher_fwd, self.student_fwd = rt.maybe_compile(teacher), rt.maybe_compile(model)
        self.student, self.optimizer, self.loss_fn, self.data = student, optimizer, loss_fn, data
        self.cfg, self.rt, self.seed, self.out = cfg, rt, seed, out
        self.fill: tuple[float, ...] | None = hook(data, "fill")
        self.target_sparsity = sparsity(student).overall if cfg.gradual > 0 else 0.0
        self.steps_per_epoch = len(self.order(0))  # every epoch deals as many batches
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.local_fn = local_fn
        self.local_steps = round(cfg.local_fraction * self.total_steps) if local_fn else 0
        self.t_start, self.seen = time.perf_counter(), 0

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
            t_logits = self.teacher_fwd(x)  # block-local: the teacher's block inputs, recorded
        local = self.local_fn if step < self.local_steps else None
        with self.rt.autocast():
            if local is not None:
                loss = local()
            else:
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
        if local is not None:
            _sync_grads(self.student, self.rt)
        self.optimizer.step()
        self.seen += len(x)
        return loss.detach()

    def order(self, epoch: int) -> list[Tensor]:
        """This rank's index batches of ``epoch``, as the source deals them."""
        rt = self.rt
        return self.data.batches(epoch, self.cfg.batch_size, self.seed, rt.rank, rt.world_size)


def _train_epoch(loop: _Loop, epoch: int, bar: Bar) -> float:
    """One pass over this rank's batches of the epoch; returns the mean loss."""
    cfg = loop.cfg
    g = generator(loop.seed, "augment", epoch, loop.rt.rank)
    loss_sum, loss_n = 0.0, 0
    with _bn_mode(loop.student, cfg.bn_mode):
        for s, idx in enumerate(loop.order(epoch)):
            x, y = loop.batch(idx, g)
            loss = float(loop.step(x, y, epoch * loop.steps_per_epoch + s))
            loss_sum += loss * len(idx)
            loss_n += len(idx)
            img_s = loop.seen / (time.perf_counter() - loop.t_start)
            bar.advance(1, epoch=f"{epoch + 1}/{cfg.epochs}", loss=loss_sum / loss_n, img_s=img_s)
    refresh_pruned(loop.student)
    return loss_sum / max(loss_n, 1)


def _measure_epoch(
    teacher: nn.Module, student: nn.Module, val_set: Any, held: Any, rt: Runtime
) -> dict[str, float]:
    record: dict[str, float] = {}
    if val_set is not None:
        record["val_top1"] = evaluate(student, val_set, device=rt.device, progress=False).top1
    if held is not None:
        student.eval()
        record["agreement"] = agreement(teacher, student, held, rt)
        record["agreement_images"] = len(held)
    return record


def _keep_best(best: dict[str, Any] | None, record: dict[str, float], student: nn.Module) -> Any:
    if "val_top1" not in record or (best is not None and record["val_top1"] <= best["score"]):
        return best
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    return {"score": record["val_top1"], "epoch": int(record["epoch"]), "state": state}


def _split(
    source: TransferSource, val_data: Any, student: nn.Module, cfg: DistillConfig, seed: int
) -> tuple[TransferSource, Any, Any]:
    """``(train source, held-out source, validation set)``; a source may hold nothing out."""
    path = isinstance(val_data, (str, os.PathLike))
    val_set = resolve_data(student, val_data) if path else val_data
    if val_set is None and cfg.holdout > 0 and len(source) >= 20:
        parts = hook(source, "split")(cfg.holdout, seed)
        if parts is not None:
            return parts[0], parts[1], None
    return source, None, val_set


def recover(
    teacher: nn.Module,
    student: nn.Module,
    source: TransferSource | Dataset[Any] | tuple[Tensor, Tensor] | Any,
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
        source: the transfer set, e.g. from :func:`~recoverprune.synthesize`, or any
            labelled data: a Dataset of ``(image, label)``, a ``TensorDataset`` or
            ``(images, labels)`` tensors (images in the models' normalised input space);
            or any object implementing :class:`~recoverprune.distill.source.TransferSource`
            (the experimental stream does: fresh images between epochs).
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
    source = as_source(source)
    rt = resolve(device, accel)
    out = Path(out_dir) if out_dir is not None else None
    terms = list(objective) if objective is not None else default_objective(cfg)
    meta = {
        "config": asdict(cfg),
        "objective": [repr(t) for t in terms],
        "teacher": fingerprint(teacher),
        "student": fingerprint(student),  # masks included: another amount is another student
        "student_arch": architecture(student),
        "synthetic": source.key(),
        "seed": seed,
    }
    with ExitStack() as stack:
        stack.enter_context(borrowed(teacher, runtime=rt))  # frozen, exactly restored
        stack.enter_context(placed(student, rt))  # trained in place, then back where it was
        state = _resume(out, meta, student) if out is not None else None
        if state is not None and state.get("done"):
            return _finished(student, state["history"])
        hook(source, "start")(teacher, rt, state.get("source") if state else None)
        train, held, val_set = _split(source, val_data, student, cfg, seed)
        _check_fit(teacher, student, source, rt)
        if cfg.freeze_classifier:
            stack.enter_context(frozen_classifier(student))
        prep = {} if state else _prepare_student(teacher, student, train, cfg, rt)
        optimizer = _make_optimizer(student, cfg)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        loss_fn = stack.enter_context(bind_objective(terms, teacher, student))
        local_fn = None
        if cfg.local_fraction > 0:  # weighted as feature KD (1 when that is off)
            local = block_local(teacher, student, cfg.feature_weight or 1.0)
            local_fn = stack.enter_context(local)
        loop = _Loop(teacher, student, optimizer, loss_fn, train, cfg, rt, seed, out, local_fn)
        state = state or {"epoch": 0, "history": [], "best": None}
        history, best = state["history"], state.get("best")
        with progress_bar("Recovery", loop.total_steps, progress and rt.is_main) as bar:
            bar.advance(state["epoch"] * loop.steps_per_epoch)
            for epoch in range(state["epoch"], cfg.epochs):
                bar.update(**(hook(source, "on_epoch")(student, epoch) or {}))
                record: dict[str, float] = {"epoch": epoch + 1, **prep}
                record["loss"] = _train_epoch(loop, epoch, bar)
                record["lr"] = _lr_at((epoch + 1) * loop.steps_per_epoch - 1, loop.total_steps, cfg)
                record.update(_measure_epoch(teacher, student, val_set, held, rt))
                history.append(record)
                best = _keep_best(best, record, student)
                bar.update(**{k: v for k, v in record.items() if k != "lr"})
                if out is not None and rt.is_main:
                    more = {"optimizer": optimizer.state_dict(), "best": best, "done": False}
                    more["source"] = hook(source, "state_dict")()
                    _checkpoint(out, epoch + 1, student, history, meta, **more)
                prep = {}
        _restore_best(student, best, cfg, progress and rt.is_main)
        if out is not None and rt.is_main:  # the final student, checkpoint and history
            refresh_pruned(student)
            save_model(student, out / FINAL, channel_spec=channel_spec(student))
            _checkpoint(out, cfg.epochs, student, history, meta, done=True)
            write_json_atomic({"history": history, **meta}, out / HISTORY)
        return _finished(student, history)


def _checkpoint(
    out: Path, epoch: int, student: nn.Module, history: list[Any], meta: dict[str, Any], **extra: Any
) -> None:
    """``recover-checkpoint.pt``: the training state after ``epoch`` (``done`` when final)."""
    state = {"epoch": epoch, "student": student.state_dict(), "history": history, "meta": meta}
    save_atomic({**extra, **state}, out / CHECKPOINT)


def _restore_best(student: nn.Module, best: Any, cfg: DistillConfig, verbose: bool) -> None:
    if best is None or best["epoch"] == cfg.epochs:
        return
    student.load_state_dict(best["state"])
    if verbose:
        console.print(f"kept the best epoch ({best['epoch']}, val top-1 {best['score']:.2f}%)")


def _finished(student: nn.Module, history: list[dict[str, float]]) -> nn.Module:
    refresh_pruned(student)
    student.recovery_history = history  # type: ignore[assignment]
    return student.eval()


def _resume(out: Path, meta: dict[str, Any], student: nn.Module) -> dict[str, Any] | None:
    """The checkpoint in ``out`` if it was made from exactly these inputs, else ``None``
    (:class:`StageMismatch` for a recovery of another student, teacher, data or config)."""
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
