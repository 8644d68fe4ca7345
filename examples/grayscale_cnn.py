"""Your own 1-channel CNN (28x28, e.g. Fashion-MNIST) through compress() and the CLI.

The constructor below is what ``--arch module:grayscale_cnn:gray_cnn`` names: any
importable function that builds your model (taking ``num_classes`` if it can) works.

    python examples/grayscale_cnn.py --tiny
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from recoverprune import InputSpec, compress

MEAN, STD = 0.286, 0.353  # Fashion-MNIST's; use the values your model was trained with


def gray_cnn(num_classes: int = 10) -> nn.Module:
    """conv-BN-ReLU x2, pooling, linear head; 1-channel input."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def gray_folder(root: Path) -> Path:
    """A stand-in for your grayscale test images: <root>/test/<class>/<image>.png."""
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / "test" / str(c)).mkdir(parents=True)
        px = torch.randint(0, 256, (28, 28), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(px, mode="L").save(root / "test" / str(c) / "0.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    preset = "tiny" if args.tiny else "quick"
    d = Path(tempfile.mkdtemp(prefix="recoverprune-gray-"))
    torch.manual_seed(0)
    teacher = gray_cnn()
    with torch.no_grad():  # stand-in for training: give BN layers running statistics
        teacher.train()(torch.randn(64, 1, 28, 28))
    teacher.eval()
    data = gray_folder(d / "data")  # read as grayscale: the model's first conv takes 1 channel

    # Python API: the normalisation is one value (or one per channel)
    spec = InputSpec.of(teacher, image_size=28, mean=MEAN, std=STD)
    res = compress(teacher, 0.75, input=spec, preset=preset,
                   eval_data=data, out_dir=d / "api", progress=not args.tiny)  # fmt: skip
    print(f"API: top-1 {res.report['top1']} (random stand-in data), input {res.report['input']}")

    # CLI: the same, naming the constructor above
    torch.save(teacher.state_dict(), d / "teacher.pt")
    cmd = [sys.executable, "-m", "recoverprune", "compress", "--arch", "module:grayscale_cnn:gray_cnn",
           "--checkpoint", str(d / "teacher.pt"), "--image-size", "28", "--mean", str(MEAN),
           "--std", str(STD), "--preset", preset, "--eval-data", str(data), "--out", str(d / "cli")]  # fmt: skip
    print("$ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd + (["--no-progress"] if args.tiny else []), check=True,
                   cwd=Path(__file__).resolve().parent)  # fmt: skip
    print(f"grayscale CNN compressed: {d / 'cli' / 'student.pt'}")


if __name__ == "__main__":
    main()
