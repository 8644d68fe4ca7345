"""Quickstart: prune the embedded CIFAR-10 teacher, synthesise images from it, recover.

python examples/quickstart.py           # the quick budget (~15 min on 2 CPU cores)
python examples/quickstart.py --tiny    # seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from recoverprune import evaluate, prune, recover, sparsity, synthesize
from recoverprune.models import default_teacher

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    n, iterations, epochs = (32, 3, 1) if args.tiny else (1024, 200, 60)
    out = Path(args.out or tempfile.mkdtemp(prefix="recoverprune-quickstart-"))

    teacher = default_teacher()
    student = prune(teacher, 0.75)
    print(f"pruned: {sparsity(student).overall:.2%} of the prunable weights are zero")

    synthetic = synthesize(
        teacher,
        n=n,
        iterations=iterations,
        batch_size=min(256, n),
        out_dir=out / "synthetic",
        progress=not args.tiny,
    )
    synthetic.save_grid(out / "grid.png")
    print(
        f"synthesised {len(synthetic)} images -> {out / 'synthetic'} (preview {out / 'grid.png'})"
    )

    student = recover(
        teacher, student, synthetic, epochs=epochs, out_dir=out / "recover", progress=not args.tiny
    )
    print(f"recovered; sparsity still {sparsity(student).overall:.2%}")
    if DATA.is_file():  # real images only to measure
        test = DATA
        if args.tiny:
            from recoverprune.data import ImageTensorDataset, load_split

            full = load_split(DATA, "test")
            test = ImageTensorDataset(full.images[:500], full.labels[:500], full.classes)
        for name, model in (("teacher", teacher), ("recovered", student)):
            print(f"top-1 {name}: {evaluate(model, test, progress=False).top1:.2f} %")


if __name__ == "__main__":
    main()
