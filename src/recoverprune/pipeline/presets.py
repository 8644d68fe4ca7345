"""Named budgets of :func:`~recoverprune.compress` (``tiny``, ``quick``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from recoverprune.core.validate import check_fields
from recoverprune.distill.config import DistillConfig

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A compute budget for :func:`compress`.

    Attributes:
        n: synthetic images.
        iterations: DeepInversion steps per batch.
        batch_size: synthesis batch size.
        epochs: distillation epochs.
        check_n: images of the independently seeded check set (the report's quality signal).
        distill: the preset's distillation settings (``None``: the :class:`DistillConfig`
            defaults); an explicit ``compress(distill=...)`` wins.

    Example:
        >>> PRESETS["quick"].n, PRESETS["quick"].iterations
        (2048, 50)
        >>> Preset(n=4096, iterations=500, batch_size=256, epochs=80).n
        4096
    """

    n: int
    iterations: int
    batch_size: int
    epochs: int
    check_n: int = 128
    distill: DistillConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, 1, "n", "iterations", "batch_size", "epochs", integer=True)
        check_fields(self, 2, "check_n", integer=True)


#: ``quick``: meant for a CPU (its measured time: the README); the split of synthesis against
#: distillation that recovered the most within ten minutes in ``benchmarks/quick_budget.py``
#: (2,048 images x 50 iterations, 56 epochs = 896 steps of 128). ``paper``: the reference
#: budget (2,000 iterations per batch of 256), meant for a GPU. ``tiny``: seconds, for tests.
#: ``seed``: the recipe of the work this project started from (1,024 images, 200 iterations,
#: synthesis batch 32, 15 epochs of SGD lr 1e-3 momentum 0.9, T = 3, student BN frozen).
PRESETS: dict[str, Preset] = {
    "tiny": Preset(n=32, iterations=4, batch_size=16, epochs=2, check_n=16),
    "quick": Preset(n=2048, iterations=50, batch_size=256, epochs=56),
    "paper": Preset(n=20_480, iterations=2000, batch_size=256, epochs=100, check_n=1024),
    "seed": Preset(
        n=1024,
        iterations=200,
        batch_size=32,
        epochs=15,
        distill=DistillConfig(
            epochs=15,
            batch_size=32,
            optimizer="sgd",
            lr=1e-3,
            momentum=0.9,
            weight_decay=0.0,
            temperature=3.0,
            bn_mode="frozen",
            feature_weight=0.0,
            reconstruct=False,
            mix="none",
        ),
    ),
}
