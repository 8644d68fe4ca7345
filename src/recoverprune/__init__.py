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

from recoverprune.core.version import __version__

if TYPE_CHECKING:
    from recoverprune.core.runtime import Accel
    from recoverprune.core.spec import InputSpec
    from recoverprune.data.evaluate import EvalResult, evaluate
    from recoverprune.data.synthetic import SyntheticImages
    from recoverprune.distill.config import DistillConfig
    from recoverprune.distill.loop import recover
    from recoverprune.pipeline.compress import compress
    from recoverprune.pipeline.presets import PRESETS, Preset
    from recoverprune.pipeline.prune import prune
    from recoverprune.pipeline.report import CompressResult
    from recoverprune.pruning.blocks import BlockConfig
    from recoverprune.pruning.channel_spec import channel_spec, kept_channels
    from recoverprune.pruning.channels import ChannelConfig
    from recoverprune.pruning.export import export
    from recoverprune.pruning.masks import finalize, is_pruned
    from recoverprune.pruning.sparsity import LayerSparsity, SparsityReport, sparsity
    from recoverprune.synthesis.config import InversionConfig
    from recoverprune.synthesis.generator import GeneratorConfig
    from recoverprune.synthesis.inversion import synthesize
    from recoverprune.synthesis.stream import StreamConfig, SyntheticStream

# Where each public name lives. Started as the ``recoverprune`` command (console script or
# ``python -m``), the package loads them on first use, so that ``recoverprune --help`` does
# not pay for torch; ``cli.main`` loads ``core.runtime`` before it joins a process group.
# Everywhere else ``import recoverprune`` loads them at once, which also imports
# ``torch._dynamo`` before a user's own ``init_process_group`` (see ``core.runtime``).
_WHERE = {
    "SyntheticImages": "data.synthetic",
    "DistillConfig": "distill.config",
    "recover": "distill.loop",
    "EvalResult": "data.evaluate",
    "evaluate": "data.evaluate",
    "InversionConfig": "synthesis.config",
    "synthesize": "synthesis.inversion",
    "GeneratorConfig": "synthesis.generator",
    "StreamConfig": "synthesis.stream",
    "SyntheticStream": "synthesis.stream",
    "PRESETS": "pipeline.presets",
    "CompressResult": "pipeline.report",
    "Preset": "pipeline.presets",
    "compress": "pipeline.compress",
    "LayerSparsity": "pruning.sparsity",
    "SparsityReport": "pruning.sparsity",
    "finalize": "pruning.masks",
    "is_pruned": "pruning.masks",
    "prune": "pipeline.prune",
    "sparsity": "pruning.sparsity",
    "Accel": "core.runtime",
    "InputSpec": "core.spec",
    "ChannelConfig": "pruning.channels",
    "BlockConfig": "pruning.blocks",
    "channel_spec": "pruning.channel_spec",
    "export": "pruning.export",
    "kept_channels": "pruning.channel_spec",
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
    "BlockConfig",
    "ChannelConfig",
    "CompressResult",
    "DistillConfig",
    "EvalResult",
    "GeneratorConfig",
    "InputSpec",
    "InversionConfig",
    "LayerSparsity",
    "Preset",
    "SparsityReport",
    "StreamConfig",
    "SyntheticImages",
    "SyntheticStream",
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
