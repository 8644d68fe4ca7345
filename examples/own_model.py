"""Bring your own model: a torchvision ResNet-18 (any BN classifier works the same way).

The network here is randomly initialised with BatchNorm statistics from random batches, so
the example is self-contained; put your own trained weights in its place.

    python examples/own_model.py --tiny
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from recoverprune import InputSpec, evaluate, prune, recover, sparsity, synthesize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    n, iterations, epochs = (16, 2, 1) if args.tiny else (512, 200, 30)

    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():  # stand-in for training: give BN layers running statistics
        teacher.train()
        for _ in range(3):
            teacher(torch.randn(32, 3, 32, 32))
    teacher.eval()

    # keep the stem and the classifier dense; the rest loses 75 % globally
    student = prune(teacher, 0.75, exclude=["conv1", "fc"])
    print(f"sparsity {sparsity(student).overall:.2%} over {sparsity(student).total:,} weights")

    # torchvision models carry no input-size hint: say it (channels and classes are inferred)
    synthetic = synthesize(
        teacher,
        n=n,
        input=InputSpec.of(teacher, image_size=32),
        iterations=iterations,
        batch_size=min(64, n),
        progress=not args.tiny,
    )
    print(
        f"synthesised {tuple(synthetic.images.shape)}; "
        f"teacher accuracy on its targets {synthetic.meta['stats'][0]['accuracy']:.2f}"
    )
    student = recover(teacher, student, synthetic, epochs=epochs, progress=not args.tiny)
    agree = evaluate(
        student,
        type(synthetic)(synthetic.images, teacher(synthetic.images).argmax(1)),
        progress=False,
    ).top1
    print(f"student agrees with the teacher on {agree:.1f} % of the synthetic images")


if __name__ == "__main__":
    main()
