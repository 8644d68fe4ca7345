"""recoverprune: prune a trained image classifier and recover its accuracy without real data.

The three calls:

```python
from recoverprune import prune, synthesize, recover
student = prune(teacher, amount=0.75)
synthetic = synthesize(teacher, n=10_000)
student = recover(teacher, student, synthetic)
```
"""

from __future__ import annotations

from recoverprune._dataset import SyntheticImages
from recoverprune._distill import DistillConfig, recover
from recoverprune._evaluate import EvalResult, evaluate
from recoverprune._inversion import InversionConfig, synthesize
from recoverprune._pipeline import PRESETS, CompressResult, Preset, compress
from recoverprune._prune import (
    LayerSparsity,
    SparsityReport,
    finalize,
    is_pruned,
    prune,
    sparsity,
)
from recoverprune._runtime import Accel
from recoverprune._structured import ChannelConfig, channel_spec, export, kept_channels
from recoverprune._version import __version__

__all__ = [
    "PRESETS",
    "Accel",
    "ChannelConfig",
    "CompressResult",
    "DistillConfig",
    "EvalResult",
    "InversionConfig",
    "LayerSparsity",
    "Preset",
    "SparsityReport",
    "SyntheticImages",
    "__version__",
    "channel_spec",
    "compress",
    "evaluate",
    "export",
    "finalize",
    "is_pruned",
    "kept_channels",
    "prune",
    "recover",
    "sparsity",
    "synthesize",
]
