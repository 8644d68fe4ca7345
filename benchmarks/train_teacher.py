"""Train or fine-tune a model on the CIFAR-10 (JPEG q75 copy) training split.

``--arch`` takes any model spec: a zoo name, or ``torchvision:NAME`` (a torchvision
architecture with a 10-class head, randomly initialised: weights are never downloaded), as
the original work's teachers (resnet18, mobilenet_v2, shufflenet_v2_x1_0, ...)::

    python benchmarks/train_teacher.py --arch torchvision:resnet18 --image-size 32 \
        --epochs 30 --lr 0.1 --out runs/tv-resnet18-jpeg.pt

``--image-size`` defaults to the model's own input size (32 for the zoo, 224 for
torchvision); images are resized to it. 32 keeps a CPU run affordable.

This is how the embedded default teacher and the benchmark teachers were made; anyone
can rerun it. Real images are used here only because this script *makes teachers*:
synthesize()/recover() never read them.

    python benchmarks/train_teacher.py --arch resnet20 \
        --init ../shared/teachers/resnet20-12fca82f.th --epochs 2 --lr 0.05 \
        --out runs/resnet20-jpeg.pt

Prints the configuration, per-epoch loss, wall time and the measured top-1 on the
JPEG test split, and writes a checkpoint holding ``state_dict``, ``arch``, ``top1`` and
the exact configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from _common import DATA, machine

from recoverprune import InputSpec, evaluate
from recoverprune.core.io import save_atomic
from recoverprune.core.runtime import generator, resolve
from recoverprune.data import load_split
from recoverprune.distill.augment import augment
from recoverprune.models import create_model, load_model


def train(args: argparse.Namespace) -> dict:
    rt = resolve(args.device)
    torch.manual_seed(args.seed)
    if args.init:
        model = load_model(args.arch, args.init, num_classes=args.num_classes)
    else:
        model = create_model(args.arch, num_classes=args.num_classes)
    spec = InputSpec.of(model, image_size=args.image_size)
    spec.attach(model)
    size = None if spec.size == (32, 32) else spec.size  # CIFAR is stored at 32: no resize
    read = {"mean": spec.mean, "std": spec.std, "image_size": size, "channels": spec.channels}
    train_set = load_split(args.data, "train", **read)
    test_set = load_split(args.data, "test", **read)
    if args.limit:
        keep = torch.randperm(len(train_set), generator=generator(args.seed, "limit"))[: args.limit]
    else:
        keep = torch.arange(len(train_set))
    rt.prepare_model(model)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    steps_per_epoch = math.ceil(len(keep) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=total, pct_start=args.warmup
    )
    t0 = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        model.train()
        g = generator(args.seed, "epoch", epoch)
        order = keep[torch.randperm(len(keep), generator=g)]
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * args.batch_size : (s + 1) * args.batch_size]
            x, y = train_set.batch(idx)
            x = rt.prepare_input(augment(x, g, 4))
            with rt.autocast():
                loss = F.cross_entropy(model(x).float(), y.to(rt.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        rec = {
            "epoch": epoch + 1,
            "loss": loss_sum / len(keep),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        print(json.dumps(rec), flush=True)
    train_seconds = time.perf_counter() - t0
    res = evaluate(model.eval(), test_set, device=rt.device, progress=False)
    report = {
        "arch": args.arch,
        "input": spec.to_dict(),
        "top1": res.top1,
        "test_loss": res.loss,
        "init": args.init,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "seed": args.seed,
        "train_images": len(keep),
        "train_seconds": train_seconds,
        "history": history,
        **machine(),
        "device": str(rt.device),
        "data": "CIFAR-10 (JPEG q75 copy)",
        "command": " ".join(sys.argv),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if args.half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_atomic(
        {"state_dict": state, **{k: v for k, v in report.items() if k != "history"}}, args.out
    )
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="resnet20", help="zoo name or torchvision:NAME")
    p.add_argument(
        "--image-size", type=int, default=None, help="train/test size (default: the model's)"
    )
    p.add_argument("--init", default=None, help="checkpoint to fine-tune (default: from scratch)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.15, help="one-cycle warm-up fraction")
    p.add_argument("--limit", type=int, default=0, help="train on this many images (0 = all)")
    p.add_argument("--half", action="store_true", help="store weights in float16 (compact)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return train(p.parse_args(argv))


if __name__ == "__main__":
    main()
