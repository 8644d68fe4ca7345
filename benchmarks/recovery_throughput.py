"""Throughput of distillation (``recover()``) per device and precision.

Times ``recover()`` of a 75 %-pruned student from its teacher over a fixed set of images
and epochs, and reports images/s (student forward + backward + teacher forward per
image), for the same variants as ``synthesis_throughput.py``:

* CPU: float32 eager;
* CUDA (when available): eager fp32, bf16 autocast, + channels_last, + torch.compile, and
  the automatic default, using the ``accel=Accel(...)`` switches of ``recover``.

Each variant first runs once untimed (warm-up: cuDNN autotuning, compilation); the timed
figure is the median of ``--repeats`` runs, each from the same freshly pruned student and
seed. Quality at the same seed: the final distillation loss and the top-1 agreement of
student and teacher on the images. Images are Gaussian noise (throughput does not depend
on their content). Achieved TFLOP/s is counted with ``FlopCounterMode`` and, on CUDA,
reported against the GPU's bf16 datasheet peak and the matrix-product rate measured here.

    python benchmarks/recovery_throughput.py --arch resnet20 --n 4096 --epochs 2
    python benchmarks/recovery_throughput.py --checkpoint ../shared/teachers/resnet20-12fca82f.th
"""

from __future__ import annotations

import argparse
import sys
import time

import _throughput as tp
import torch
from torch import nn

from recoverprune import Accel, DistillConfig, SyntheticImages, prune, recover
from recoverprune.core.runtime import resolve
from recoverprune.distill.agreement import agreement


def _images(model: nn.Module, n: int, seed: int) -> SyntheticImages:
    g = torch.Generator().manual_seed(seed)
    shape = model.pretrained_cfg["input_size"]
    num_classes = model.pretrained_cfg["num_classes"]
    return SyntheticImages(
        torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    )


def _timed(
    teacher: nn.Module,
    data: SyntheticImages,
    device: str,
    accel: Accel,
    args: argparse.Namespace,
) -> tuple[float, dict[str, float]]:
    cfg = DistillConfig(epochs=args.epochs, batch_size=args.batch_size, holdout=0.0)
    student = prune(teacher, args.amount)
    tp.synchronize(device)
    t0 = time.perf_counter()
    recover(
        teacher, student, data, config=cfg, device=device, accel=accel, seed=args.seed,
        progress=False,
    )  # fmt: skip
    tp.synchronize(device)
    seconds = time.perf_counter() - t0
    student.cpu()
    quality = {
        "final_loss": student.recovery_history[-1]["loss"],  # type: ignore[index]
        # the recovery loop's own held-out measure, as a fraction, on the CPU in float32
        "agreement": agreement(teacher, student, data, resolve("cpu", tp.FP32)) / 100,
    }
    return seconds, quality


def flops_per_image_epoch(teacher: nn.Module, amount: float, batch_size: int) -> float:
    """Counted FLOPs of one distillation step on one image (dense kernels, as executed)."""
    data = _images(teacher, batch_size, 0)

    def run(epochs: int) -> object:
        cfg = DistillConfig(epochs=epochs, batch_size=batch_size, holdout=0.0)
        return recover(
            teacher, prune(teacher, amount), data, config=cfg, device="cpu", accel=tp.FP32,
            progress=False,
        )  # fmt: skip

    return tp.counted_flops(run, 1, 2) / batch_size


#: the throughput column (images x epochs per second) and the quality columns
RATE = ("images/s", "images_per_second", ".1f")
QUALITY = [("final loss", "final_loss", ".4f"), ("agreement", "agreement", ".1%")]
NOTE = (
    "s/run: median wall time of one recover() call; images/s: images x epochs per "
    "second; final loss and teacher-student agreement, same seed"
)


def main(argv: list[str] | None = None) -> int:
    p = tp.parser(__doc__)
    p.add_argument("--n", type=int, default=4096, help="images in the transfer set")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amount", type=float, default=0.75, help="sparsity of the student")
    args = tp.parse(p, argv)
    teacher = tp.model_from(args)
    data = _images(teacher, args.n, args.seed)
    flops = flops_per_image_epoch(teacher, args.amount, min(args.batch_size, 8))
    config = {
        "benchmark": "recovery",
        "model": tp.model_description(args),
        "amount": args.amount,
        "n": args.n,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "gflops_per_image": flops / 1e9,
    }
    units = {"images_per_second": args.n * args.epochs}

    def timed(device: str, accel: Accel) -> tuple[float, dict[str, float]]:
        return _timed(teacher, data, device, accel, args)

    return tp.run(args, config, timed, units, flops, RATE, QUALITY, NOTE)


if __name__ == "__main__":
    sys.exit(main())
