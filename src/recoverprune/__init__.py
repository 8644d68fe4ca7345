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

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from recoverprune._version import __version__

if TYPE_CHECKING:
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
    from recoverprune._spec import InputSpec
    from recoverprune._structured import ChannelConfig, channel_spec, export, kept_channels

# Where each public name lives. Started as the ``recoverprune`` command (console script or
# ``python -m``), the package loads them on first use, so that ``recoverprune --help`` does
# not pay for torch; ``cli.main`` loads ``_runtime`` before it joins a process group.
# Everywhere else ``import recoverprune`` loads them at once, which also imports
# ``torch._dynamo`` before a user's own ``init_process_group`` (see ``_runtime``).
_WHERE = {
    "SyntheticImages": "_dataset",
    "DistillConfig": "_distill",
    "recover": "_distill",
    "EvalResult": "_evaluate",
    "evaluate": "_evaluate",
    "InversionConfig": "_inversion",
    "synthesize": "_inversion",
    "PRESETS": "_pipeline",
    "CompressResult": "_pipeline",
    "Preset": "_pipeline",
    "compress": "_pipeline",
    "LayerSparsity": "_prune",
    "SparsityReport": "_prune",
    "finalize": "_prune",
    "is_pruned": "_prune",
    "prune": "_prune",
    "sparsity": "_prune",
    "Accel": "_runtime",
    "InputSpec": "_spec",
    "ChannelConfig": "_structured",
    "channel_spec": "_structured",
    "export": "_structured",
    "kept_channels": "_structured",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'recoverprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"recoverprune.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if os.path.basename(sys.argv[0]) not in ("recoverprune", "recoverprune.exe", "-m"):
    for _name in _WHERE:
        __getattr__(_name)

__all__ = [
    "PRESETS",
    "Accel",
    "ChannelConfig",
    "CompressResult",
    "DistillConfig",
    "EvalResult",
    "InputSpec",
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
