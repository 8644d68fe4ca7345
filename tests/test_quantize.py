"""INT8 static quantization in onnxruntime (``recoverprune.quantize``), on tiny BN CNNs."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from _nets import bn_resnet, calibrated, tiny_bn_net
from _nets import gaussian_images as _images
from recoverprune import (
    BlockConfig,
    ChannelConfig,
    QuantConfig,
    SyntheticImages,
    evaluate,
    export,
    prune,
    quantize,
)
from recoverprune.models import resnet20
from recoverprune.pipeline import quantize as quantize_module

ort = pytest.importorskip("onnxruntime", reason='quantize needs pip install ".[export]"')
onnx = pytest.importorskip("onnx", reason='quantize needs pip install ".[export]"')
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _sharp() -> nn.Module:
    """Wide enough that the weights outweigh the QDQ nodes; logits well separated."""
    net = calibrated(tiny_bn_net(10, widths=(32, 64)))
    with torch.no_grad():
        net[-1].weight.mul_(20.0)
    return net


def _resnet20(seed: int = 0) -> nn.Module:
    """ResNet-20 with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return bn_resnet(resnet20(), seed=None)


def _agreement(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((reference(x).argmax(1) == model(x).argmax(1)).float().mean())


def test_the_int8_file_runs_in_onnxruntime_agrees_and_is_smaller(tmp_path):
    net = _sharp()
    q = quantize(net, _images(64), path=tmp_path / "net.int8.onnx")
    assert q.path == str(tmp_path / "net.int8.onnx")
    assert q.bytes == (tmp_path / q.path).stat().st_size
    x = _images(512, seed=1)
    session = ort.InferenceSession(q.path, providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert (logits.argmax(1) == net(x).argmax(1)).float().mean() >= 0.9
    ops = {n.op_type for n in onnx.load(q.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in onnx.load(q.path).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 3  # the two convolutions' and the head's weights
    fp32 = export(net, str(tmp_path / "net.onnx"), example=x)
    assert q.bytes < 0.5 * (tmp_path / fp32).stat().st_size
    assert torch.equal(q(x), logits)  # the module runs the same file


def test_evaluate_works_on_the_quantized_model():
    net = _sharp()
    x = _images(256, seed=2)
    with torch.no_grad():
        labels = net(x).argmax(1)
    q = quantize(net, SyntheticImages(_images(32), torch.zeros(32, dtype=torch.long)))
    result = evaluate(q, (x, labels), progress=False)
    assert result.n == 256 and result.top1 == pytest.approx(100 * _agreement(net, q, x))
    assert result.top1 >= 90.0


def test_calibration_is_deterministic_and_reads_only_the_first_images(tmp_path):
    net, cal = _sharp(), _images(48)
    cfg = QuantConfig(calibration_images=32)
    paths = [tmp_path / f"{name}.int8.onnx" for name in "abcd"]
    quantize(net, cal, config=cfg, path=paths[0])
    quantize(net, (cal, torch.zeros(48, dtype=torch.long)), config=cfg, path=paths[1])
    quantize(net, torch.cat([cal[:32], 5 * _images(16, seed=9)]), config=cfg, path=paths[2])
    quantize(net, 5 * _images(48, seed=9), config=cfg, path=paths[3])  # other images
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] == data[2] and data[3] != data[0]


@pytest.mark.parametrize("how", ["masked", "channel", "block"])
def test_pruned_models_quantize(how):
    x = _images(16, size=32)
    teacher = _resnet20()
    if how == "masked":
        student = prune(teacher, 0.75)
    elif how == "channel":
        student = prune(teacher, ChannelConfig(speedup=2), data=x)
    else:
        student = prune(teacher, BlockConfig(drop=2), data=x)
    q = quantize(student, x)
    int8 = onnx.TensorProto.INT8
    weights = [t for t in onnx.load(q.path).graph.initializer if t.data_type == int8]
    test = _images(64, size=32, seed=3)
    with torch.no_grad():
        ref = student(test)
    assert float((q(test) - ref).norm() / ref.norm()) < 0.1
    assert _agreement(student, q, test) >= 0.9
    if how == "masked":  # the masks are baked in: three in four weights are INT8 zeros
        zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in weights)
        total = sum(onnx.numpy_helper.to_array(t).size for t in weights)
        assert zeros / total >= 0.7


def test_without_onnxruntime_an_install_hint_comes_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)

    def no_work(*args, **kwargs):
        raise AssertionError("worked before checking the install")

    monkeypatch.setattr(quantize_module, "finalize", no_work)
    monkeypatch.setattr(quantize_module, "export", no_work)
    with pytest.raises(ImportError, match=r'pip install "recoverprune\[export\]"'):
        quantize(_sharp(), _images(8))


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)  # no ONNX symbolic


def test_a_model_onnx_cannot_express_is_refused_before_calibration_naming_the_layer(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), _Bessel()), nn.Flatten())
    from onnxruntime import quantization as ortq

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated a model that cannot be exported")

    monkeypatch.setattr(ortq, "quantize_static", no_calibration)
    with pytest.raises(ValueError, match=r"layer 1\.1 \(_Bessel\).*aten::i0"):
        quantize(net.eval(), _images(8))


def test_config_is_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        QuantConfig(method="mse")
    with pytest.raises(ValueError, match="calibration_images must be >= 1 and an integer"):
        QuantConfig(calibration_images=0)
    with pytest.raises(ValueError, match="empty"):
        quantize(_sharp(), _images(0))
    with pytest.raises(ValueError, match="float"):
        quantize(_sharp(), (255 * _images(4)).to(torch.uint8))


def test_the_quantize_command_writes_the_file_the_library_writes(tmp_path, capsys):
    from recoverprune.cli import main
    from recoverprune.models import load_model

    torch.save({"state_dict": _resnet20().state_dict()}, tmp_path / "student.pt")
    x = _images(24, size=32)
    SyntheticImages(x, torch.zeros(24, dtype=torch.long)).save(tmp_path / "synthetic")
    common = ["--arch", "resnet20", "--checkpoint", str(tmp_path / "student.pt")]
    common += ["--synthetic", str(tmp_path / "synthetic"), "--calibration-images", "16"]
    out = tmp_path / "q" / "student.int8.onnx"
    assert main(["quantize", *common, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_model("resnet20", tmp_path / "student.pt")
    same = quantize(model, x, config=QuantConfig(calibration_images=16), path=tmp_path / "lib.onnx")
    assert out.read_bytes() == (tmp_path / "lib.onnx").read_bytes()
    assert _agreement(model, same, _images(64, size=32, seed=4)) >= 0.9
    assert main(["quantize", *common, "--out", str(tmp_path / "student.pt")]) == 2
    assert "is the same file as --checkpoint" in capsys.readouterr().err
    assert main(["quantize", *common, "--out", str(tmp_path / "student.int8.pt")]) == 2
    assert "ONNX file" in capsys.readouterr().err
