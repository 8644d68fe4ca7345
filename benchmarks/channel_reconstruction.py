"""Does least-squares reconstruction of channel-pruned layers help data-free recovery?

A negative result, kept rerunnable. ResNet-32 (the JPEG-fine-tuned teacher in
``runs/teachers/resnet32-jpeg.pt``, made by ``benchmarks/cifar10/run.py``) channel-pruned
to 3x fewer MACs, recovered on the quick budget (1,024 DeepInversion images x 200
iterations, 60 epochs of the default recipe) with or without refitting the channel-pruned
layers first. The refit lives in commit 1be6611 of ``src/recoverprune/_calibrate.py``
(taken out after this measurement), so check that file out first::

    git checkout 1be6611 -- src/recoverprune/_calibrate.py
    python benchmarks/channel_reconstruction.py synth 2         # the shared image set
    python benchmarks/channel_reconstruction.py norecon 1 &     # side by side, 1 thread each
    python benchmarks/channel_reconstruction.py recon 1
    python benchmarks/channel_reconstruction.py recon_d1 1      # 100x stronger ridge
    git checkout HEAD -- src/recoverprune/_calibrate.py

Measured on the 2-core development VM (torch 2.15.0, CPU): norecon 75.22, recon 70.33,
recon_d1 73.86 (JPEG CIFAR-10 test top-1).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import DATA, jpeg_teacher

import recoverprune.distill.repair as cal
from recoverprune import (
    ChannelConfig,
    DistillConfig,
    InversionConfig,
    evaluate,
    prune,
    recover,
    synthesize,
)
from recoverprune.data import load_split
from recoverprune.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["synth", "norecon", "recon", "recon_d1"])
    p.add_argument("threads", type=int, help="torch threads")
    args = p.parse_args()
    mode, threads = args.mode, args.threads
    if mode.startswith("recon") and not hasattr(cal, "_solve_dense"):
        raise SystemExit("this mode needs commit 1be6611's _calibrate.py (see the docstring)")
    if mode == "recon_d1":
        solve = cal._solve_dense
        cal._solve_dense = lambda h, c, w_t, w0, damp: solve(h, c, w_t, w0, 1.0)
    torch.set_num_threads(threads)
    teacher = load_model("resnet32", jpeg_teacher("resnet32")).eval()
    images = synthesize(
        teacher,
        1024,
        config=InversionConfig(iterations=200),
        batch_size=256,
        seed=0,
        progress=False,
        out_dir="runs/r32-quick-syn",
    )
    if mode == "synth":
        return
    student = prune(teacher, ChannelConfig(speedup=3))
    cfg = DistillConfig(epochs=60, reconstruct=mode.startswith("recon"))
    t0 = time.time()
    student = recover(teacher, student, images, config=cfg, seed=0, progress=False)
    seconds = time.time() - t0
    test = load_split(DATA, "test")
    top1 = evaluate(student, test, progress=False).top1
    print(
        json.dumps({"mode": mode, "top1": top1, "recover_s": seconds, "torch": torch.__version__})
    )


if __name__ == "__main__":
    main()
