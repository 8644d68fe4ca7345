"""Quantization-aware distillation: a fake-quantized copy of the model, quantized as
onnxruntime will run it, distilled from the fp32 teacher on the synthetic images; the result
is an ordinary fp32 model (BatchNorm folded) that :func:`~recoverprune.quantize` exports."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recoverprune.core.borrow import borrowed
from recoverprune.core.modules import set_submodule
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import generator
from recoverprune.distill.augment import augment, mix
from recoverprune.distill.config import DistillConfig
from recoverprune.distill.objectives import LogitKD, StepOutputs
from recoverprune.distill.source import hook
from recoverprune.pipeline.equalize import (
    fold_batchnorm,
    input_statistics,
    quantize_weight,
    rectified,
    run_hooked,
)

__all__ = ["FakeQuant", "activation_qparams", "distill_quantized", "fake_quantized", "unwrap"]

#: Adam's peak learning rate (cosine decay to zero) and the batch size of the distillation
LR, BATCH = 1e-4, 64


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """onnxruntime's uint8 asymmetric scale and zero point for the range ``[lo, hi]``
    (``quant_utils.compute_scale_zp``: the range widened to hold 0, computed in float64,
    the scale stored as float32).

    Example:
        >>> activation_qparams(-1.0, 3.0)
        (0.01568627543747425, 64)
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    if scale < torch.finfo(torch.float32).tiny:
        return 1.0, 0
    return float(torch.tensor(scale, dtype=torch.float32)), round(-lo / scale)


class FakeQuant(nn.Module):
    """A Conv2d or Linear ``layer`` as onnxruntime runs it in the INT8 file: its input and
    output quantized to uint8 with frozen ranges (``(lo, hi)`` each; a rectified output's
    from 0, its ReLU fused as onnxruntime does), its weight to int8 per output channel or
    per tensor, all with a straight-through gradient."""

    def __init__(
        self, layer: nn.Module, ranges: tuple[tuple[float, float], ...], per_channel: bool
    ) -> None:
        super().__init__()
        self.layer, self.per_channel = layer, per_channel
        params = [activation_qparams(lo, hi) for lo, hi in ranges]
        self.register_buffer("scale", torch.tensor([p[0] for p in params]))
        self.register_buffer("zero_point", torch.tensor([p[1] for p in params], dtype=torch.int32))

    def _round(self, x: Tensor, i: int) -> Tensor:
        scale, zero_point = self.scale[i], self.zero_point[i]
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    def forward(self, x: Tensor) -> Tensor:
        x, w = self._round(x, 0), self.layer.weight
        w = w + (quantize_weight(w, self.per_channel) - w).detach()
        if isinstance(self.layer, nn.Linear):
            return self._round(F.linear(x, w, self.layer.bias), 1)
        return self._round(self.layer._conv_forward(x, w, self.layer.bias), 1)


def _output_ranges(
    model: nn.Module, layers: list[nn.Module], images: Tensor
) -> list[tuple[float, float]]:
    """The smallest and largest output of each layer over ``images`` (hooks removed after)."""
    lo, hi = [math.inf] * len(layers), [-math.inf] * len(layers)

    def record(i: int, y: Tensor) -> None:
        lo[i], hi[i] = min(lo[i], float(y.min())), max(hi[i], float(y.max()))

    hooks = [
        m.register_forward_hook(lambda _m, _a, y, i=i: record(i, y)) for i, m in enumerate(layers)
    ]
    run_hooked(model, images, hooks)
    return list(zip(lo, hi, strict=True))


def fake_quantized(model: nn.Module, images: Tensor, *, per_channel: bool = True) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded and every Conv2d and Linear layer wrapped in
    :class:`FakeQuant`, ranges the minimum and maximum over ``images`` (MinMax).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> fq = fake_quantized(net, torch.randn(8, 3, 6, 6))
        >>> [type(m).__name__ for m in fq]
        ['FakeQuant', 'Identity', 'ReLU']
    """
    student = fold_batchnorm(model)
    named = [
        (n, m) for n, m in student.named_modules() if n and isinstance(m, nn.Conv2d | nn.Linear)
    ]
    layers, relu = [m for _, m in named], rectified(student)
    inputs = input_statistics(student, layers, images)
    outputs = _output_ranges(student, layers, images)
    for (name, layer), (_, *x), (lo, hi) in zip(named, inputs, outputs, strict=True):
        y = (max(lo, 0.0), hi) if layer in relu else (lo, hi)
        set_submodule(student, name, FakeQuant(layer, (tuple(x), y), per_channel))
    return student


def unwrap(student: nn.Module) -> nn.Module:
    """``student`` (in place) with each :class:`FakeQuant` replaced by the layer it wraps."""
    wrapped = [n for n, m in student.named_modules() if isinstance(m, FakeQuant)]
    for name in wrapped:
        set_submodule(student, name, student.get_submodule(name).layer)
    return student


def distill_quantized(
    model: nn.Module,
    source: Any,
    teacher: nn.Module,
    *,
    images: Tensor,
    steps: int,
    per_channel: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """``model`` (BatchNorm folded, a copy) after ``steps`` of quantization-aware distillation:
    its :func:`fake_quantized` copy (ranges from ``images``) learns the ``teacher``'s softened
    logits (:class:`~recoverprune.distill.objectives.LogitKD`) on batches of 64 from every
    image of ``source`` (a transfer source), augmented as :func:`~recoverprune.recover`
    does; Adam, learning rate ``LR`` with cosine decay. Randomness comes from ``seed`` alone.

    Example:
        >>> from recoverprune.data.transfer import as_source
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
        >>> x = torch.randn(16, 3, 8, 8); _ = net(x)
        >>> out = distill_quantized(net, as_source((x, torch.zeros(16).long())), net, images=x, steps=2)
        >>> type(out[0]).__name__
        'Conv2d'
    """
    student = fake_quantized(model, images, per_channel=per_channel)
    params = [p.requires_grad_() for p in student.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    g, cfg, fill = generator(seed, "qad"), DistillConfig(), hook(source, "fill")
    loss_fn, step, epoch = LogitKD(temperature=cfg.temperature), 0, 0
    with (
        borrowed(teacher),
        torch.enable_grad(),
        progress_bar("QAD", steps, enabled=progress) as bar,
    ):
        while step < steps:
            for idx in source.batches(epoch, BATCH, seed, 0, 1)[: steps - step]:
                x, y = source.get_batch(idx)
                x = mix(augment(x, g, cfg.crop_padding, cfg.flip, fill), g, cfg.mix)
                with torch.no_grad():
                    target = teacher(x)
                loss = loss_fn(StepOutputs(student(x), target, y))
                for group in optimizer.param_groups:
                    group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / steps))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.advance(1, loss=f"{float(loss.detach()):.3g}")
            epoch += 1
    return unwrap(student).eval()
