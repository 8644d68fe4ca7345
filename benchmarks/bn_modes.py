"""Student BatchNorm handling during recovery: ``train`` vs ``frozen``, measured.

Distils a pruned teacher on an existing synthetic set once per BN mode and reports top-1
on the CIFAR-10 (JPEG q75 copy) test split, plus diagnostics that explain the difference:
how far the pruned student's BN inputs drift from the running statistics it inherited.

    python benchmarks/bn_modes.py --synthetic runs/quick/synthetic --amount 0.75
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from _common import DATA, machine
from torch import nn

from recoverprune import DistillConfig, SyntheticImages, evaluate, prune, recover
from recoverprune.data import load_split
from recoverprune.models import default_teacher, load_model
from recoverprune.pruning.batchnorm import bn_layers


@torch.no_grad()
def bn_drift(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over BN layers of |log(batch var / running var)| of the layer inputs."""
    drifts: list[float] = []

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        v = inp[0].var(dim=(0, 2, 3), unbiased=False)
        drifts.append(float((v.clamp_min(1e-8) / m.running_var.clamp_min(1e-8)).log().abs().mean()))

    handles = [m.register_forward_hook(hook) for m in bn_layers(model)]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return sum(drifts) / len(drifts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--synthetic", required=True)
    p.add_argument("--arch", default=None, help="with --checkpoint; default: embedded teacher")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--modes", nargs="+", default=["train", "frozen"])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--lr", type=float, default=None, help="override DistillConfig.lr")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    teacher = load_model(args.arch, args.checkpoint) if args.checkpoint else default_teacher()
    synthetic = SyntheticImages.load(args.synthetic)
    test = load_split(args.data, "test")
    x = synthetic.get_batch(torch.arange(min(256, len(synthetic))))[0]
    pruned = prune(teacher, args.amount)
    out = {
        **machine(),
        "amount": args.amount,
        "n_synthetic": len(synthetic),
        "teacher_top1": evaluate(teacher, test, progress=False).top1,
        "pruned_top1": evaluate(pruned, test, progress=False).top1,
        "bn_drift_teacher": bn_drift(teacher, x),
        "bn_drift_pruned": bn_drift(pruned, x),
        "modes": {},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "modes"}), flush=True)
    for mode in args.modes:
        cfg = replace(DistillConfig(), epochs=args.epochs, bn_mode=mode)
        if args.lr is not None:
            cfg = replace(cfg, lr=args.lr)
        t0 = time.perf_counter()
        try:
            student = recover(teacher, prune(teacher, args.amount), synthetic, config=cfg)
        except FloatingPointError as exc:  # a measured outcome, not a crash of the script
            out["modes"][mode] = {
                "diverged": str(exc),
                "seconds": time.perf_counter() - t0,
                "config": asdict(cfg),
            }
            print(json.dumps({mode: {"diverged": str(exc)}}), flush=True)
            continue
        out["modes"][mode] = {
            "top1": evaluate(student, test, progress=False).top1,
            "seconds": time.perf_counter() - t0,
            "bn_drift_after": bn_drift(student, x),
            "final_agreement": student.recovery_history[-1].get("agreement"),
            "config": asdict(cfg),
        }
        print(
            json.dumps({mode: {k: v for k, v in out["modes"][mode].items() if k != "config"}}),
            flush=True,
        )
    print(json.dumps({k: v for k, v in out.items() if k != "modes"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
