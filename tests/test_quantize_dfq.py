"""Data-free first aid (BatchNorm folding, cross-layer equalization, bias correction) and
quantization-aware distillation before INT8 (``QuantConfig(equalize=..., bias_correction=...,
distill_steps=...)``), on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _nets import bn_resnet, calibrated, tiny_bn_net
from _nets import gaussian_images as _images
from recoverprune import QuantConfig, quantize
from recoverprune.data.transfer import as_source
from recoverprune.models import create_model, resnet20
from recoverprune.pipeline import qad
from recoverprune.pipeline.equalize import (
    correct_bias,
    equalize,
    fold_batchnorm,
    quantize_weight,
    weight_scale,
)
from recoverprune.pipeline.qad import distill_quantized, fake_quantized, unwrap

ort = pytest.importorskip("onnxruntime", reason='quantize needs pip install ".[export]"')
onnx = pytest.importorskip("onnx", reason='quantize needs pip install ".[export]"')
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _agreement(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    return float((_outputs(reference, x).argmax(1) == _outputs(model, x).argmax(1)).float().mean())


def _depthwise() -> nn.Module:
    """1x1 expand -> ReLU -> depthwise 3x3 -> ReLU -> 1x1 project; the expansion's channel 3
    100x larger and the depthwise filter 3 100x smaller (the same function, hostile to INT8)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 12, 1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12),
        nn.ReLU(),
        nn.Conv2d(12, 6, 1),
        nn.Flatten(),
        nn.LazyLinear(4),
    )
    net(_images(1))
    with torch.no_grad():
        net[0].weight[3].mul_(100)
        net[0].bias[3].mul_(100)
        net[2].weight[3].div_(100)
    return net.eval()


def _mobilenet() -> nn.Module:
    """The zoo's MobileNetV2 with random BatchNorm affine weights and statistics (8 px)."""
    torch.manual_seed(0)
    net = create_model("mobilenet_v2")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return calibrated(net, passes=2)


@pytest.mark.parametrize(
    "make, size", [(lambda: bn_resnet(resnet20()), 32), (_mobilenet, 8), (_depthwise, 8)]
)
def test_equalization_is_exact_in_fp32(make, size):
    net, x = make(), _images(4, size=size)
    folded, eq = fold_batchnorm(net), equalize(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in eq.modules())  # all folded
    assert _relative(_outputs(eq, x), _outputs(net, x)) < 1e-5
    weights = [(p, folded.get_parameter(n)) for n, p in eq.named_parameters() if "weight" in n]
    assert not all(torch.allclose(a, b) for a, b in weights)  # equalization did something


def test_equalization_balances_the_ranges_through_a_depthwise_conv():
    net = _depthwise()
    eq = equalize(net)
    for first, second in ((eq[0], eq[2]), (eq[2], eq[4])):
        r1 = first.weight.abs().flatten(1).amax(1)
        r2 = (
            second.weight.abs().amax(dim=(0, 2, 3))
            if second.groups == 1
            else second.weight.abs().flatten(1).amax(1)
        )
        assert torch.allclose(r1, r2, rtol=1e-2)
    assert float(eq[0].weight.abs().flatten(1).amax(1).max()) < 5  # the 100x channel is gone
    x = _images(64, seed=1)
    for per_channel in (True, False):  # it is what makes the INT8 model agree again
        cfg = QuantConfig(per_channel=per_channel)
        plain = quantize(net, x, config=cfg)
        fixed = quantize(net, x, config=QuantConfig(per_channel=per_channel, equalize=True))
        assert _relative(_outputs(fixed, x), _outputs(net, x)) < 0.5 * _relative(
            _outputs(plain, x), _outputs(net, x)
        )


def test_relu6_pairs_and_shared_outputs_are_left_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        net[0].weight[0].mul_(100)
    eq = equalize(net)
    assert all(torch.equal(a, b) for a, b in zip(eq.parameters(), net.parameters(), strict=True))


class _Branchy(nn.Module):
    """conv1's output feeds conv2 and the output: not a pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.conv2(torch.relu(y)) + y


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if x.sum() > -1e9 else -self.body(x)  # data-dependent: fx fails


def test_a_model_that_cannot_be_traced_is_quantized_without_first_aid_with_a_warning():
    net = calibrated(_Untraceable())
    x = _images(16)
    with pytest.warns(UserWarning, match="cannot be traced by torch.fx.*skipped"):
        eq = equalize(net)
    assert _relative(_outputs(eq, x), _outputs(net, x)) == 0
    with pytest.warns(UserWarning, match="cannot be traced"):
        q = quantize(net, x, config=QuantConfig(equalize=True))
    assert _relative(_outputs(q, x), _outputs(net, x)) < 0.1
    branchy = _Branchy().eval()
    assert all(
        torch.equal(a, b)
        for a, b in zip(equalize(branchy).parameters(), branchy.parameters(), strict=True)
    )


@pytest.mark.parametrize("per_channel", [True, False])
def test_the_weight_simulation_is_what_onnxruntime_writes(tmp_path, per_channel):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 5)
    )
    with torch.no_grad():
        net[2].weight[1] = 0.0  # a pruned channel: onnxruntime's scale is 1 there
        net[0].weight[2].mul_(30)
    q = quantize(net.eval(), _images(16), config=QuantConfig(per_channel=per_channel))
    model = onnx.load(q.path)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and init.get(n.input[0]) is not None
        and init[n.input[0]].dtype.name == "int8"
    ]
    layers = [net[0], net[2], net[4]]
    assert len(dq) == len(layers)
    for node, layer in zip(dq, layers, strict=True):
        w = layer.weight.detach()
        scale = torch.from_numpy(init[node.input[1]].copy())
        assert torch.equal(
            scale,
            weight_scale(w, per_channel).flatten()
            if per_channel
            else weight_scale(w, False).reshape(()),
        )
        dequantized = torch.from_numpy(init[node.input[0]].astype("float32")) * scale.view(
            -1, *[1] * (w.dim() - 1)
        )
        assert torch.equal(dequantized, quantize_weight(w, per_channel))


def test_bias_correction_removes_the_mean_output_shift_of_weight_quantization(monkeypatch):
    import recoverprune.pipeline.equalize as eq

    monkeypatch.setattr(eq, "weight_levels", lambda: 127)  # the 8-bit grid on every CPU
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, groups=2),
        nn.Flatten(),
        nn.Linear(216, 5),
    ).eval()
    with torch.no_grad():
        net[2].weight[0].mul_(40)  # per tensor, the other channels round coarsely
    x = _images(256) + 1.0  # inputs with a mean: the rounding error does not average out

    def shift(model: nn.Module) -> float:
        sim = copy.deepcopy(model)
        for m in sim.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.data = quantize_weight(m.weight.data, per_channel=False)
        return float((_outputs(sim, x) - _outputs(net, x)).mean(0).abs().mean())

    fixed = correct_bias(net, x, per_channel=False)
    assert shift(fixed) < 0.3 * shift(net)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fixed.get_parameter("2.weight"), net[2].weight, strict=True)
    )


def _hostile() -> nn.Module:
    """conv2's output channel 0 100x larger than the others: per-tensor INT8 weights
    round the other channels to a few levels."""
    net = calibrated(tiny_bn_net(10, widths=(8, 16)))
    with torch.no_grad():
        net[3].weight[0].mul_(100)
    return net


def test_qad_recovers_the_agreement_that_plain_ptq_lost():
    net, cal, test = _hostile(), _images(128), _images(512, seed=1)
    plain = quantize(net, cal, config=QuantConfig(per_channel=False))
    recovered = quantize(net, cal, config=QuantConfig(per_channel=False, distill_steps=50))
    before, after = _agreement(net, plain, test), _agreement(net, recovered, test)
    assert before < 0.92 and after >= before + 0.05


@pytest.mark.parametrize("per_channel", [True, False])
def test_the_int8_file_agrees_with_the_fake_quant_model(per_channel):
    net, cal = _hostile(), _images(128)
    fq = fake_quantized(net, cal, per_channel=per_channel)
    plain = unwrap(copy.deepcopy(fq))  # the same weights: the same MinMax ranges in the file
    q = quantize(plain, cal, config=QuantConfig(per_channel=per_channel))
    x = _images(512, seed=2)
    ref, out = _outputs(fq, x), _outputs(q, x)
    # what is left is what the fake-quant model does not model: int32 biases, and onnxruntime
    # rounding x / scale where torch multiplies by 1 / scale (ties): a tenth of the
    # quantization error the model does model, and within a step of the logits' uint8 grid
    assert _relative(out, ref) < 0.2 * _relative(ref, _outputs(net, x))
    step = _logits_scale(q.path)
    assert float((out - ref).abs().max()) <= 1.01 * step
    assert _agreement(fq, q, x) >= 0.97


def _logits_scale(path: str) -> float:
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    return float(init["logits_scale"])


def test_qad_is_deterministic_for_a_seed_and_leaves_the_process_as_found():
    net, cal = _hostile(), _images(64)
    src, state = (
        as_source((cal, torch.zeros(64, dtype=torch.long))),
        copy.deepcopy(net.state_dict()),
    )
    net.train()
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    with torch.no_grad():
        runs = [distill_quantized(net, src, net, images=cal, steps=3, seed=s) for s in (0, 0, 1)]
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    a, b, c = (r.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_qad_with_a_zero_learning_rate_changes_nothing(monkeypatch):
    net, cal = _hostile(), _images(64)
    src = as_source((cal, torch.zeros(64, dtype=torch.long)))
    monkeypatch.setattr(qad, "LR", 0.0)
    out = distill_quantized(net, src, net, images=cal, steps=3)
    folded = fold_batchnorm(net).state_dict()
    assert out.state_dict().keys() == folded.keys()
    assert all(torch.equal(v, folded[k]) for k, v in out.state_dict().items())


@pytest.mark.parametrize(
    "cfg",
    [QuantConfig(equalize=True), QuantConfig(bias_correction=True), QuantConfig(distill_steps=2)],
    ids=["equalize", "bias_correction", "distill"],
)
def test_calibration_is_deterministic_for_a_seed_with_each_option(tmp_path, cfg):
    net, cal = _hostile(), _images(48)
    paths = [tmp_path / f"{name}.int8.onnx" for name in ("a", "b", "c", "plain")]
    for path, seed in zip(paths[:3], (0, 0, 1), strict=True):
        quantize(net, cal, config=cfg, path=path, seed=seed)
    quantize(net, cal, path=paths[3])
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] and data[0] != data[3]  # same seed, same bytes; the option acts
    assert (data[2] != data[0]) == (cfg.distill_steps > 0)  # only QAD draws random numbers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_the_file_is_written_atomically(tmp_path, monkeypatch):
    from onnxruntime import quantization as ortq

    out = tmp_path / "net.int8.onnx"
    out.write_bytes(b"the previous file")

    def killed(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ortq, "quantize_static", killed)
    with pytest.raises(KeyboardInterrupt):
        quantize(_hostile(), _images(8), path=out)
    assert out.read_bytes() == b"the previous file" and list(tmp_path.iterdir()) == [out]


def test_the_new_config_fields_are_checked():
    with pytest.raises(ValueError, match="distill_steps must be >= 0 and an integer"):
        QuantConfig(distill_steps=-1)
    with pytest.raises(ValueError, match="distill_steps"):
        QuantConfig(distill_steps=1.5)  # type: ignore[arg-type]
