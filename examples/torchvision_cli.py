"""A torchvision classifier by name, from the command line.

Saves a torchvision ShuffleNetV2 with a 10-class head as a plain ``state_dict`` (put your
own fine-tuned weights there), then compresses it with

    recoverprune compress --arch torchvision:shufflenet_v2_x1_0 --num-classes 10 \
        --checkpoint teacher.pt --image-size 224 --out runs/shufflenet

and evaluates the student on labelled images resized to the model's input, as the original
work did with CIFAR-10 upsampled to 224x224 (``--resize 224``).

    python examples/torchvision_cli.py --tiny     # 32x32, tiny preset: seconds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from PIL import Image


def run(*args: str) -> None:
    print("$ recoverprune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "recoverprune", *args], check=True)


def labelled_folder(root: Path, size: int = 32) -> Path:
    """A stand-in for your test images: <root>/test/<class>/<image>.png."""
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / "test" / str(c)).mkdir(parents=True)
        px = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(px).save(root / "test" / str(c) / "0.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    size, preset = ("32", "tiny") if args.tiny else ("224", "quick")
    d = Path(tempfile.mkdtemp(prefix="recoverprune-tv-"))

    torch.manual_seed(0)
    teacher = torchvision.models.shufflenet_v2_x1_0(num_classes=10)  # weights=None: no download
    with torch.no_grad():  # stand-in for fine-tuning: give BN layers running statistics
        teacher.train()(torch.randn(8, 3, int(size), int(size)))
    torch.save(teacher.state_dict(), d / "teacher.pt")

    # --tiny: the stand-in teacher is untrained, and with train-mode BatchNorm the feature
    # term drives its 32-px student to non-finite outputs, which evaluate refuses to score;
    # frozen BatchNorm keeps the smoke run finite. A trained teacher needs no such flag.
    quiet = ["--no-progress"] if args.tiny else []
    smoke = ["--kd-bn-mode", "frozen"] if args.tiny else []
    arch = ["--arch", "torchvision:shufflenet_v2_x1_0", "--num-classes", "10"]
    run(
        "compress",
        *arch,
        "--checkpoint",
        str(d / "teacher.pt"),
        "--image-size",
        size,
        "--preset",
        preset,
        "--exclude",
        "conv1.*",
        "fc",
        "--out",
        str(d / "out"),
        *quiet,
        *smoke,
    )
    # student.pt remembers the input description (size, mean, std): no need to repeat it
    run(
        "evaluate",
        *arch,
        "--checkpoint",
        str(d / "out" / "student.pt"),
        "--data",
        str(labelled_folder(d / "data")),
        "--resize",
        size,
        "--cache-dir",
        str(d / "c"),
        *quiet,
    )
    print(f"done: {d / 'out' / 'student.pt'}")


if __name__ == "__main__":
    main()
