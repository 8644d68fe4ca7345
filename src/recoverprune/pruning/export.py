"""Export a pruned model to a file that runs without this library (ONNX, ``torch.export``)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from recoverprune.pruning.masks import finalize
from recoverprune.pruning.measure import example_input

__all__ = ["export"]


def export(model: nn.Module, path: str, *, example: torch.Tensor | None = None) -> str:
    """Write ``model`` as a file that runs without this library.

    ``*.onnx``: ONNX (dynamic batch size; needs ``pip install "recoverprune[export]"``),
    run it with onnxruntime. ``*.pt2``: ``torch.export`` program, ``torch.export.load``.
    Pruning masks are baked in first (:func:`recoverprune.finalize`).

    Example:
        >>> import tempfile, torch
        >>> from recoverprune.models import resnet20
        >>> from recoverprune.pruning.channels import ChannelConfig, channel_prune
        >>> small = channel_prune(resnet20(), ChannelConfig(amount=0.5)).eval()
        >>> path = export(small, tempfile.mkdtemp() + "/small.pt2")
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(torch.export.load(path).module()(x), small(x), atol=1e-5)
        True
    """
    plain = finalize(model).eval()
    x = example[:1] if example is not None else example_input(plain)
    if path.endswith(".onnx"):
        try:
            import onnx  # noqa: F401
        except ImportError as exc:
            raise ImportError('ONNX export needs onnx: pip install "recoverprune[export]"') from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                plain,
                (x,),
                path,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    elif path.endswith(".pt2"):
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(plain, (torch.cat([x, x]),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    else:
        raise ValueError(f"export writes *.onnx or *.pt2 files, got {path!r}")
    return path
