"""INT8 post-training quantization in onnxruntime (static, QDQ), calibrated on the images
this library makes: :func:`quantize` writes a ``.int8.onnx`` file a user deploys."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recoverprune.core.spec import InputSpec
from recoverprune.core.validate import check_number
from recoverprune.data.transfer import as_source
from recoverprune.pruning.export import export
from recoverprune.pruning.masks import finalize

__all__ = ["QuantConfig", "QuantizedModel", "quantize"]

_HINT = 'INT8 quantization needs onnx and onnxruntime: pip install "recoverprune[export]"'
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`quantize` quantizes (onnxruntime static quantization, QDQ format):
    ``per_channel`` int8 weights, uint8 activations whose ranges ``method`` calibrates
    (``"minmax"``, ``"entropy"`` or ``"percentile"``) on the first ``calibration_images``."""

    per_channel: bool = True
    method: str = "minmax"
    calibration_images: int = 256

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {self.method!r}")
        check_number(self.calibration_images, "calibration_images", 1, integer=True)


class QuantizedModel(nn.Module):
    """An INT8 ONNX file (``path``, ``bytes`` in size) run by onnxruntime on the CPU, as a
    module: ``forward(images)`` returns the logits, so :func:`recoverprune.evaluate` works."""

    def __init__(self, path: str, spec: InputSpec) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        spec.attach(self)

    @property
    def bytes(self) -> int:
        return os.path.getsize(self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {"input": x.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0]).to(x.device)


def _images(calibration: Any, n: int) -> torch.Tensor:
    """The first ``n`` images of a tensor, an ``(x, y)`` pair, a SyntheticImages or a dataset."""
    if isinstance(calibration, torch.Tensor):  # images alone: the labels do not matter here
        calibration = (calibration.detach(), torch.zeros(len(calibration), dtype=torch.long))
    source = as_source(calibration)  # checked: (N, C, H, W) float images, not empty
    return source.get_batch(torch.arange(min(n, len(source))))[0].float().cpu()


def _failing_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The first leaf module (in call order) that the ONNX exporter refuses on its own."""
    seen: list[tuple[str, nn.Module, tuple[Any, ...]]] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: seen.append((n, m, a)))
        for n, m in model.named_modules()
        if n and not list(m.children())  # the leaves
    ]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x)
            for name, module, args in seen:
                try:
                    torch.onnx.export(module, args, io.BytesIO(), dynamo=False)
                except Exception:
                    return f"{name} ({type(module).__name__})"
    except Exception:  # the forward fails: the exporter's own message is reported anyway
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return None


def _export(plain: nn.Module, path: str, x: torch.Tensor) -> None:
    try:
        export(plain, path, example=x)
    except Exception as exc:
        layer = _failing_layer(plain, x)
        where = f"layer {layer}" if layer else "the model's own forward"
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ValueError(
            f"the model cannot be exported to ONNX, so it cannot be quantized ({where}): "
            f"{first}. Replace that layer with one ONNX supports."
        ) from exc


def quantize(
    model: nn.Module,
    calibration: Any,
    *,
    config: QuantConfig | None = None,
    input: InputSpec | None = None,
    path: str | os.PathLike[str] | None = None,
) -> QuantizedModel:
    """INT8 ``model``: masks baked in, exported to ONNX, quantized statically by onnxruntime
    (QDQ, per-channel int8 weights, uint8 activations) with activation ranges calibrated on
    the first ``config.calibration_images`` of ``calibration``; written to ``path``
    (``*.int8.onnx``; a temporary directory when ``None``). The same images give the same file.

    Args:
        model: the classifier, dense, masked, channel- or block-pruned (not modified).
        calibration: images in the model's input space: an ``(N, C, H, W)`` tensor, an
            ``(images, labels)`` pair, a :class:`~recoverprune.SyntheticImages` or a dataset.
        config: a :class:`QuantConfig` (default: MinMax calibration on 256 images).
        input: the :class:`~recoverprune.InputSpec` recorded on the result (default: the model's).

    Raises:
        ImportError: onnx or onnxruntime is missing (the message says what to install).
        ValueError: the model cannot be exported to ONNX (the message names the layer).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> q = quantize(net.eval(), torch.randn(8, 3, 8, 8))
        >>> q(torch.randn(2, 3, 8, 8)).shape, q.path.endswith(".int8.onnx")
        (torch.Size([2, 2]), True)
    """
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization as ortq
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    cfg = config or QuantConfig()
    images = _images(calibration, cfg.calibration_images)
    out = str(path) if path is not None else os.path.join(tempfile.mkdtemp(), "model.int8.onnx")
    plain = finalize(model).cpu().float().eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "model.onnx")
        _export(plain, fp32, images[:1])
        batches = iter([{"input": b.numpy()} for b in images.split(32)])

        class _Reader(ortq.CalibrationDataReader):
            def get_next(self) -> dict[str, Any] | None:
                return next(batches, None)

        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        method = getattr(ortq.CalibrationMethod, _METHODS[cfg.method])
        ortq.quantize_static(
            fp32, out, _Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=cfg.per_channel,
            activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
            calibrate_method=method,
        )
    return QuantizedModel(out, input or InputSpec.of(model))
