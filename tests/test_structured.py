"""Channel pruning: smaller dense models, exact widths, kept indices, save/load, export."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from recoverprune import (
    Calibration,
    ChannelConfig,
    InputSpec,
    export,
    kept_channels,
    prune,
    sparsity,
)
from recoverprune.core.io import fingerprint, save_atomic
from recoverprune.experimental.compensate import CompensatedChannelConfig
from recoverprune.models import create_model, list_models, load_model, resnet20, resnet32
from recoverprune.pruning.channel_spec import channel_spec
from recoverprune.pruning.measure import count_macs

pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _channels(compensate: bool = False, **kw) -> ChannelConfig | CompensatedChannelConfig:
    """A ChannelConfig, wrapped in the experimental compensation when asked."""
    cfg = ChannelConfig(**kw)
    return CompensatedChannelConfig(cfg) if compensate else cfg


def _calibrated(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so pruned channels matter in the outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


def _tiny_torchvision() -> dict[str, nn.Module]:
    from torchvision.models.resnet import BasicBlock

    return {
        "tv_resnet": torchvision.models.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10),
        "tv_mobilenet_v2": torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10),
        "tv_densenet": torchvision.models.DenseNet(
            growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
        ),
    }


@pytest.mark.parametrize("name", [*list_models(), *_tiny_torchvision()])
def test_every_model_gets_smaller_and_still_runs(name):
    model = create_model(name) if name in list_models() else _tiny_torchvision()[name]
    model.eval()
    cfg = _channels(compensate=True, amount=0.5)  # + BN statistics on X: no synthesis
    small = prune(model, cfg, data=X, input=InputSpec.of(model, image_size=32))
    with torch.no_grad():
        assert small(X).shape == model(X).shape
        assert torch.isfinite(small(X)).all()
    assert _params(small) < 0.8 * _params(model)
    assert count_macs(small, X) < 0.8 * count_macs(model, X)
    assert all(type(m) in (nn.Module, type(m)) for m in small.modules())  # plain modules


def test_exact_channel_counts_resnet20():
    small = prune(resnet20(), ChannelConfig(amount=0.5), data=X)
    for stage, width in (("layer1", 16), ("layer2", 32), ("layer3", 64)):
        stream = 16 if stage == "layer1" else width // 2  # layer1's stream is conv1's: protected
        for block in getattr(small, stage):
            assert block.conv1.out_channels == block.bn1.num_features == width // 2
            assert block.conv2.in_channels == width // 2
            assert block.conv2.out_channels == block.bn2.num_features == stream
    assert small.conv1.out_channels == 16 and small.linear.in_features == 32
    assert small.linear.out_features == 10
    # the option-A shortcuts became 1x1 selection convolutions between the pruned streams
    assert (small.layer2[0].shortcut.in_channels, small.layer2[0].shortcut.out_channels) == (16, 16)
    assert (small.layer3[0].shortcut.in_channels, small.layer3[0].shortcut.out_channels) == (16, 32)


def test_residual_false_prunes_only_inside_blocks():
    cfg = ChannelConfig(amount=0.5, residual=False)
    small = prune(resnet20(), cfg, data=X)
    for stage, width in (("layer1", 16), ("layer2", 32), ("layer3", 64)):
        for block in getattr(small, stage):
            assert block.conv1.out_channels == width // 2 and block.conv2.out_channels == width
    assert small.linear.in_features == 64
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in small.modules())


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("compensate", [True, False])
def test_amount_zero_computes_the_teacher_function(residual, compensate):
    teacher = _calibrated(resnet32())
    cfg = _channels(compensate, amount=0.0, residual=residual)  # BN re-estimation is on
    same = prune(teacher, cfg)  # and makes no images
    with torch.no_grad():
        torch.testing.assert_close(same(X), teacher(X), atol=1e-5, rtol=1e-5)


def test_round_to_keeps_multiples():
    small = prune(resnet20(), ChannelConfig(amount=0.6, round_to=4), data=X)
    assert all(b.conv1.out_channels % 4 == 0 for b in small.layer1)


def test_kept_channels_are_the_teacher_slices():
    teacher = _calibrated(resnet20())
    cfg = ChannelConfig(amount=0.5, recalibrate=False)  # the teacher's statistics, sliced
    small = prune(teacher, cfg)
    kept = kept_channels(small)
    idx, stream = kept["layer2.1.conv1"], kept["layer2.1.conv2"]
    assert torch.equal(kept["layer2.1.bn1"], idx) and len(idx) == 16 and len(stream) == 16
    # one residual stream: the same channels in every layer that writes to it
    assert torch.equal(kept["layer2.0.bn2"], stream)
    assert torch.equal(kept["layer2.0.shortcut"], stream)
    t, s = teacher.layer2[1], small.layer2[1]
    assert torch.equal(s.conv1.weight, t.conv1.weight[idx][:, stream])
    assert torch.equal(s.bn1.running_var, t.bn1.running_var[idx])
    assert torch.equal(s.conv2.weight, t.conv2.weight[stream][:, idx])
    assert torch.equal(small.linear.weight, teacher.linear.weight[:, kept["layer3.0.conv2"]])
    assert "layer1.0.conv2" not in kept and kept_channels(teacher) is None


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_teacher_bitwise_unchanged(importance):
    teacher = _calibrated(resnet20())
    before, flags = fingerprint(teacher), [p.requires_grad for p in teacher.parameters()]
    cfg = _channels(True, importance=importance, amount=0.5)
    budget = Calibration(images=8, iterations=2, taylor_images=8, taylor_iterations=2)
    prune(teacher, cfg, calibration=budget)
    assert fingerprint(teacher) == before and not teacher.training
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())


def test_taylor_on_given_images_differs_from_magnitude():
    teacher = _calibrated(resnet20())
    images = torch.randn(16, 3, 32, 32)
    taylor = prune(teacher, ChannelConfig("taylor", amount=0.5), data=images)
    magnitude = prune(teacher, ChannelConfig(amount=0.5), data=images)
    a, b = kept_channels(taylor), kept_channels(magnitude)
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_speedup_budget_is_met_closely(speedup):
    teacher = resnet32()
    cfg = ChannelConfig(speedup=speedup)
    small = prune(teacher, cfg, data=X)
    ratio = count_macs(teacher, X) / count_macs(small, X)
    assert speedup <= ratio < speedup * 1.1


def test_target_macs_and_unreachable_budget():
    teacher = resnet20()
    goal = count_macs(teacher, X) // 2
    cfg = ChannelConfig(target_macs=goal)
    small = prune(teacher, cfg, data=X)
    assert count_macs(small, X) <= goal
    with pytest.raises(ValueError, match="cannot reach"):
        prune(teacher, ChannelConfig(speedup=50))


def test_channel_then_unstructured_in_one_call():
    cfg = ChannelConfig(amount=0.5, unstructured=0.5)
    small = prune(resnet20(), cfg, data=X)
    assert small.layer1[0].conv1.out_channels == 8
    report = sparsity(small)
    layers = [la for la in report.layers if not la.name.endswith("shortcut")]
    assert abs(sum(la.zeros for la in layers) / sum(la.numel for la in layers) - 0.5) < 1e-3
    assert kept_channels(small) is not None


@pytest.mark.parametrize("compensate", [True, False])
def test_save_load_round_trip_weights_only(tmp_path, compensate):
    cfg = _channels(compensate, amount=0.5, unstructured=0.3)
    teacher = _calibrated(resnet20())
    small = prune(teacher, cfg, data=torch.randn(8, 3, 32, 32))
    path = tmp_path / "small.pt"
    save_atomic({"state_dict": small.state_dict(), "channel_spec": channel_spec(small)}, path)
    loaded = load_model("resnet20", path)  # torch.load(weights_only=True) inside
    with torch.no_grad():
        assert torch.equal(loaded(X), small(X))
    assert loaded.layer3[1].conv1.out_channels == 32
    assert {k: v.tolist() for k, v in kept_channels(loaded).items()} == {
        k: v.tolist() for k, v in kept_channels(small).items()
    }
    torch.load(path, weights_only=True)  # plain data only


def test_export_matches_eager(tmp_path):
    small = _calibrated(prune(resnet20(), ChannelConfig(amount=0.5), data=X))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = small(x)
    program = torch.export.load(export(small, str(tmp_path / "s.pt2")))
    torch.testing.assert_close(program.module()(x), want, atol=1e-5, rtol=1e-5)
    ort = pytest.importorskip("onnxruntime", reason='ONNX check needs pip install ".[export]"')
    pytest.importorskip("onnx", reason='ONNX export needs pip install ".[export]"')
    session = ort.InferenceSession(export(small, str(tmp_path / "s.onnx")))
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


class _FunctionalPad(nn.Module):
    """A residual add whose shortcut pads channels in forward(), not in a module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.conv(h) + F.pad(h, (0, 0, 0, 0, 4, 4))
        return self.head(y.mean((2, 3)))


def test_unresolvable_coupling_names_the_layers():
    with pytest.raises(ValueError, match=r"'conv'.*'stem'.*exclude=\['conv', 'stem'\]"):
        prune(
            _FunctionalPad(),
            ChannelConfig(amount=0.5, protect_first=False),
            input=InputSpec(size=8),
        )


def test_option_a_stream_kept_whole_without_residual_even_unprotected():
    cfg = ChannelConfig(amount=0.5, protect_first=False, residual=False)
    small = prune(resnet20(), cfg, data=X)
    assert small.conv1.out_channels == 16 and small.layer3[2].conv2.out_channels == 64
    cfg = ChannelConfig(amount=0.5, protect_first=False)
    small = prune(resnet20(), cfg, data=X)
    assert small.conv1.out_channels == 8 and small.layer1[0].conv2.out_channels == 8


def test_exclude_keeps_a_layer_whole():
    small = prune(resnet20(), ChannelConfig(amount=0.5), exclude=["layer1.0.conv1"], data=X)
    assert small.layer1[0].conv1.out_channels == 16 and small.layer1[1].conv1.out_channels == 8


def test_clear_import_error_without_torch_pruning(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"recoverprune\[channel\]"):
        prune(resnet20(), ChannelConfig(amount=0.5))


def test_bad_config():
    with pytest.raises(ValueError, match="speedup"):
        ChannelConfig(speedup=0.5)
    with pytest.raises(ValueError, match="amount"):
        ChannelConfig(amount=1.5)
    with pytest.raises(ValueError, match="give one of amount, speedup and target_macs"):
        ChannelConfig(amount=0.5, speedup=2.0)
    with pytest.raises(ValueError, match="needs a budget"):
        prune(resnet20(), ChannelConfig())
    with pytest.raises(ValueError, match="images"):
        Calibration(images=1)


def test_cli_prune_channel_round_trip(tmp_path, capsys):
    from recoverprune.cli import main

    teacher = _calibrated(resnet20())
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    out = tmp_path / "s.pt"
    rc = main(
        [
            "prune",
            "--arch",
            "resnet20",
            "--checkpoint",
            str(tmp_path / "t.pt"),
            "--amount",
            "0.5",
            "--structure",
            "channel",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "MACs" in capsys.readouterr().out
    assert load_model("resnet20", out).layer2[0].conv1.out_channels == 16


@pytest.mark.slow
def test_compress_channel_saves_loads_and_resumes(tmp_path):
    from recoverprune import compress

    teacher = _calibrated(resnet20())
    kwargs = dict(preset="tiny", out_dir=tmp_path, progress=False)
    res = compress(teacher, ChannelConfig(amount=0.5), **kwargs)
    assert res.report["structure"] == "channel"
    assert res.student.layer2[0].conv1.out_channels == 16
    loaded = load_model("resnet20", tmp_path / "student.pt")
    with torch.no_grad():
        assert torch.equal(loaded(X), res.student.eval()(X))
    again = compress(teacher, ChannelConfig(amount=0.5), **kwargs)  # resumes: same widths
    assert again.student.layer3[0].shortcut.out_channels == 32


def _bench(tmp_path, *extra: str) -> dict:
    import json
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "benchmarks/channel_pruning.py", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, *extra], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| resnet20 | 2x MACs |" in proc.stdout
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_channel_benchmark_tiny_latency(tmp_path):
    row = _bench(tmp_path)["rows"][0]
    assert row["macs"][0] / row["macs"][1] >= 2.0 and row["params"][1] < row["params"][0]
    assert {lat["backend"] for lat in row["latency"]} >= {"eager"}
    assert all(lat["ratio"] > 0 for lat in row["latency"])


@pytest.mark.slow
def test_channel_benchmark_tiny_recovery(shared_dir, tmp_path):
    row = _bench(tmp_path, "--recover")["rows"][0]
    for col in ("teacher", "pruned", "deepinversion", "noise"):
        assert 0.0 <= row["top1"][col] <= 100.0
    assert row["top1"]["teacher"] > 80.0
    assert "deepinversion" in row["unstructured"]["top1"]


def test_train_mode_teacher_keeps_its_statistics():
    teacher = _calibrated(resnet20()).train()
    small = prune(teacher, ChannelConfig(amount=0.5), data=X)  # BN statistics re-estimated ...
    kept = kept_channels(small)["layer1.0.bn1"]
    assert small.training  # mode of the input is kept ...
    # ... but only where pruning changed a BatchNorm's input: not in layer1.0.bn1
    assert torch.equal(small.layer1[0].bn1.running_mean, teacher.layer1[0].bn1.running_mean[kept])
    kept = kept_channels(small)["layer2.1.bn1"]
    assert not torch.equal(
        small.layer2[1].bn1.running_mean, teacher.layer2[1].bn1.running_mean[kept]
    )


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_frozen_teacher_gives_a_whole_student(importance):
    # the graph is traced through autograd: a frozen teacher once gave a student whose
    # residual stream was pruned in the shortcut but not in the blocks
    frozen = _calibrated(resnet20()).requires_grad_(False)
    cfg = ChannelConfig(importance, amount=0.5, recalibrate=False)  # the student never runs
    small = prune(frozen, cfg, data=torch.randn(8, 3, 32, 32))
    assert not any(p.requires_grad for p in small.parameters())  # the flags are kept
    assert not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        assert small(X).shape == (2, 10)
    assert small.layer2[0].bn2.num_features == small.layer2[0].shortcut.out_channels < 32
