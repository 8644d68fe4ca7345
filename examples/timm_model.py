"""A timm model through compress(), at its own input size (``pip install 'recoverprune[timm]'``).

The model is built with ``pretrained=False`` and BN statistics from random batches, so the
example is self-contained; load your own trained weights in its place (or use the CLI:
``recoverprune compress --arch timm:resnet18 --checkpoint my.pt``). Its input size and
normalisation come from timm's ``pretrained_cfg``.

    python examples/timm_model.py --tiny      # 64x64, tiny preset: seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile

import torch

from recoverprune import InputSpec, compress


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    if importlib.util.find_spec("timm") is None:
        print("timm is not installed: pip install 'recoverprune[timm]'")
        return
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10)
    spec = InputSpec.of(teacher)  # (3, 224, 224) and the ImageNet mean/std, from timm
    h, w = (64, 64) if args.tiny else spec.size
    with torch.no_grad():  # stand-in for training: give BN layers running statistics
        teacher.train()(torch.randn(8, 3, h, w))
    teacher.eval()

    res = compress(
        teacher,
        0.5,
        preset="tiny" if args.tiny else "quick",
        input=InputSpec.of(teacher, image_size=(h, w)),
        exclude=["conv1", "fc"],
        out_dir=tempfile.mkdtemp(prefix="recoverprune-timm-"),
        progress=not args.tiny,
    )
    print(f"timm resnet18 at {res.report['input']['size']}: sparsity {res.report['sparsity']:.2%}")


if __name__ == "__main__":
    main()
