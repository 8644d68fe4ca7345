"""recoverprune: prune a trained image classifier and recover its accuracy without real data.

The three calls:

```python
from recoverprune import prune, synthesize, recover
student = prune(teacher, 0.75)
synthetic = synthesize(teacher, n=10_000)
student = recover(teacher, student, synthetic)
```

Each public name loads on first use, so that ``import recoverprune`` (and the command's
``--help``) does not pay for torch. Features measured worse live in
``recoverprune.experimental``, outside ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recoverprune.core.version import __version__

if TYPE_CHECKING:  # the one list of the public names: type checkers and docs read it here,
    # and it yields ``__all__`` and the lazy loader below (scientific-python's SPEC 1 idea)
    from recoverprune.core.runtime import Accel
    from recoverprune.core.spec import InputSpec
    from recoverprune.data.synthetic import SyntheticImages
    from recoverprune.distill.config import DistillConfig
    from recoverprune.distill.loop import recover
    from recoverprune.distill.source import TransferSource
    from recoverprune.evaluation.evaluate import EvalResult, evaluate
    from recoverprune.pipeline.compress import compress
    from recoverprune.pipeline.presets import PRESETS, Preset
    from recoverprune.pipeline.prune import Calibration, prune
    from recoverprune.pipeline.quantize import QuantConfig, quantize
    from recoverprune.pipeline.report import CompressResult
    from recoverprune.pruning.blocks import BlockConfig
    from recoverprune.pruning.channel_spec import channel_spec, kept_channels
    from recoverprune.pruning.channels import ChannelConfig
    from recoverprune.pruning.export import export
    from recoverprune.pruning.masks import UnstructuredConfig, finalize, is_pruned
    from recoverprune.pruning.sparsity import LayerSparsity, SparsityReport, sparsity
    from recoverprune.synthesis.config import InversionConfig
    from recoverprune.synthesis.inversion import synthesize


def _public_names() -> dict[str, str]:
    """Each public name and its module, read from the ``TYPE_CHECKING`` imports above."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If))  # ``if TYPE_CHECKING:``
    imports = [n for n in block.body if isinstance(n, ast.ImportFrom)]
    return {alias.name: str(n.module) for n in imports for alias in n.names}


_WHERE = _public_names()
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'recoverprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
