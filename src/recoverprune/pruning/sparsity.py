"""How sparse a model is: per-layer and total zeros of the prunable weights."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from recoverprune.pruning.masks import DEFAULT_LAYER_TYPES, effective_weight, is_masked

__all__ = ["LayerSparsity", "SparsityReport", "sparsity"]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one layer's weight.

    Example:
        >>> LayerSparsity("conv1", (16, 3, 3, 3), 432, 108).sparsity
        0.25
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Global and per-layer sparsity of a model's prunable weights.

    ``print(report)`` or ``rich.print(report.table())`` shows a table.

    Example:
        >>> from torch import nn
        >>> from recoverprune import prune
        >>> report = sparsity(prune(nn.Linear(8, 8), 0.5))
        >>> report.total, report.zeros, report.overall
        (64, 32, 0.5)
    """

    layers: tuple[LayerSparsity, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        """Number of prunable weights."""
        return sum(layer.numel for layer in self.layers)

    @property
    def zeros(self) -> int:
        """Number of zero weights among them."""
        return sum(layer.zeros for layer in self.layers)

    @property
    def overall(self) -> float:
        """Global fraction of zero weights."""
        return self.zeros / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "overall": self.overall,
            "total": self.total,
            "zeros": self.zeros,
            "layers": {
                la.name: {"shape": list(la.shape), "numel": la.numel, "zeros": la.zeros}
                for la in self.layers
            },
        }

    def table(self, title: str | None = "Sparsity") -> Table:
        """A rich table: layer, shape, weights, zeros, sparsity."""
        t = Table(title=title)
        for col in ("layer", "shape", "weights", "zeros", "sparsity"):
            t.add_column(col, justify="left" if col in ("layer", "shape") else "right")
        for la in self.layers:
            shape = "x".join(map(str, la.shape))
            t.add_row(la.name, shape, f"{la.numel:,}", f"{la.zeros:,}", f"{la.sparsity:.1%}")
        t.add_section()
        t.add_row("total", "", f"{self.total:,}", f"{self.zeros:,}", f"{self.overall:.2%}")
        return t

    def __str__(self) -> str:
        console = Console(width=100, file=io.StringIO())
        console.print(self.table())
        return console.file.getvalue()  # type: ignore[attr-defined]


def sparsity(
    model: nn.Module, layer_types: Iterable[type[nn.Module]] = DEFAULT_LAYER_TYPES
) -> SparsityReport:
    """Fraction of zero weights in the prunable layers of ``model``.

    Counts every layer of ``layer_types`` (Conv/Linear) and every layer carrying a mask.

    Example:
        >>> from recoverprune import prune, sparsity
        >>> from torch import nn
        >>> round(sparsity(prune(nn.Linear(100, 10), 0.25)).overall, 2)
        0.25
    """
    types = tuple(layer_types)
    rows = []
    for name, m in model.named_modules():
        if (isinstance(m, types) or is_masked(m)) and isinstance(
            getattr(m, "weight_orig", getattr(m, "weight", None)), torch.Tensor
        ):
            w = effective_weight(m)
            zeros = int((w == 0).sum())
            rows.append(LayerSparsity(name or "<root>", tuple(w.shape), w.numel(), zeros))
    return SparsityReport(tuple(rows))
