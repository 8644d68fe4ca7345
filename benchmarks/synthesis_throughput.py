"""Throughput of DeepInversion synthesis per device and precision.

Times ``synthesize()`` at a fixed batch size and iteration count (one batch by default)
and reports images/s and image-iterations/s (images x Adam steps per second):

* CPU: float32 eager;
* CUDA (when available): eager fp32, bf16 autocast, + channels_last, + torch.compile,
  using the ``accel=Accel(...)`` switches of ``synthesize``.

Each variant first runs once untimed (warm-up: cuDNN autotuning, allocator, compilation);
its extra time over a timed run is reported as the compile/warm-up overhead. The timed
figure is the median of ``--repeats`` runs. Quality is compared at the same seed: the final
BatchNorm loss and the teacher's accuracy on its own images against the target labels. On
CUDA the achieved TFLOP/s (matrix products and convolutions, counted by
``FlopCounterMode``) is reported as a fraction of the GPU's datasheet bf16 peak and of the
bf16 matrix-product rate measured on the spot. The model is a zoo architecture with random
weights (BatchNorm statistics refreshed on noise; throughput does not depend on them) or
a checkpoint.

    python benchmarks/synthesis_throughput.py --arch resnet20 --batch-size 256 --iterations 20
    python benchmarks/synthesis_throughput.py --checkpoint ../shared/teachers/resnet20-12fca82f.th
"""

from __future__ import annotations

import argparse
import sys
import time

import _throughput as tp
from torch import nn

from recoverprune import Accel, synthesize


def _timed(
    model: nn.Module, device: str, accel: Accel, args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    tp.synchronize(device)
    t0 = time.perf_counter()
    ds = synthesize(
        model,
        args.n,
        batch_size=args.batch_size,
        iterations=args.iterations,
        device=device,
        accel=accel,
        seed=args.seed,
        progress=False,
    )
    tp.synchronize(device)
    seconds = time.perf_counter() - t0
    stats = ds.meta["stats"][-1]
    return seconds, {k: stats[k] for k in ("bn_loss_first", "bn_loss_final", "accuracy")}


def flops_per_image_iteration(model: nn.Module) -> float:
    """Counted FLOPs of one Adam step on one image (forward + backward to the pixels)."""

    def run(iterations: int) -> object:
        return synthesize(
            model,
            2,
            batch_size=2,
            iterations=iterations,
            device="cpu",
            accel=tp.FP32,
            progress=False,
        )

    return tp.counted_flops(run, 1, 2) / 2


#: the throughput column (image-iterations per second) and the quality columns
RATE = ("img-it/s", "image_iterations_per_second", ".1f")
QUALITY = [("bn final", "bn_loss_final", ".2f"), ("target acc", "accuracy", ".1%")]
NOTE = (
    "s/run: median wall time of one synthesize() call; bn final and target acc: final "
    "BatchNorm loss and teacher accuracy on its images, same seed"
)


def main(argv: list[str] | None = None) -> int:
    p = tp.parser(__doc__)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="images per run (default: one batch)")
    p.add_argument("--iterations", type=int, default=20)
    args = tp.parse(p, argv)
    args.n = args.n or args.batch_size
    model = tp.model_from(args)
    flops = flops_per_image_iteration(model)
    config = {
        "benchmark": "synthesis",
        "model": tp.model_description(args),
        "n": args.n,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "gflops_per_image_iteration": flops / 1e9,
    }
    units = {"images_per_second": args.n, "image_iterations_per_second": args.n * args.iterations}

    def timed(device: str, accel: Accel) -> tuple[float, dict[str, float]]:
        return _timed(model, device, accel, args)

    return tp.run(args, config, timed, units, flops, RATE, QUALITY, NOTE)


if __name__ == "__main__":
    sys.exit(main())
