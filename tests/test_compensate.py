"""Channel pruning's repairs at prune time: the experimental compensation of removed
channels, and BatchNorm statistics re-estimated."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import recoverprune
from recoverprune import BlockConfig, Calibration, ChannelConfig, InputSpec, kept_channels, prune
from recoverprune.core.errors import explain
from recoverprune.core.io import fingerprint
from recoverprune.experimental.compensate import (
    ACTIVATIONS,
    CompensatedChannelConfig,
    compensate,
    expected_activation,
)
from recoverprune.models import resnet20
from recoverprune.pipeline.prune import calibration_source, recalibration_budget
from recoverprune.pruning.batchnorm import recalibrate_bn, shifted_bns

pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Chain(nn.Module):
    """Conv-BN-act-Conv(-BN) blocks: every pruned channel is read through one BatchNorm."""

    def __init__(self, act: str = "relu", bias: bool = False, bn_after: bool = True) -> None:
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(16) if bn_after else nn.Identity()
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn0(self.stem(x)))
        h = self.act(self.bn1(self.conv1(h)))
        h = self.act(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def _trained_like(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """A model built from ``seed``, with BN affine parameters away from (1, 0) and BN
    statistics of Gaussian images (the distribution the tests feed it)."""
    torch.manual_seed(seed)
    model = build()
    g = _gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.3, 1.5, generator=g)
                m.bias.normal_(0.0, 0.7, generator=g)
                m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(32, 3, 12, 12, generator=g))
    return model.eval()


#: the input of the small test models, which carry no size hint
SPEC = InputSpec(size=12)


def _cfg(compensate: bool = False, **kw) -> ChannelConfig | CompensatedChannelConfig:
    """Half the channels, the first layer too, no re-estimation; compensated when asked."""
    cfg = ChannelConfig(**{"amount": 0.5, "protect_first": False, "recalibrate": False, **kw})
    return CompensatedChannelConfig(cfg) if compensate else cfg


#: the head reads conv2's outputs through a mean over positions, which compensation does
#: not model: keep them, so that every removed channel is read through one BatchNorm
LAST = ["conv2"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _error(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((student(x) - teacher(x)).pow(2).mean())


# -- the expected activation ---------------------------------------------------------------
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_expected_activation_matches_sampling(act):
    mu = torch.tensor([-1.5, -0.2, 0.0, 0.4, 2.0])
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.3])
    z = mu + sigma * torch.randn(400_000, 5, generator=_gen(1))
    sampled = ACTIVATIONS[act](z).mean(0)
    torch.testing.assert_close(expected_activation(mu, sigma, act), sampled, atol=1e-2, rtol=0)


def test_relu_closed_form_and_degenerate_sigma():
    mu, sigma = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    got = expected_activation(mu, sigma, "relu")
    torch.testing.assert_close(got, torch.tensor([1 / math.sqrt(2 * math.pi), 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*known"):
        expected_activation(mu, sigma, "swish")


# -- compensation ---------------------------------------------------------------------------
def test_nothing_removed_changes_nothing():
    teacher = _trained_like(_Chain)
    same = prune(teacher, _cfg(compensate=True, amount=0.0), input=SPEC)
    assert fingerprint(same) == fingerprint(teacher)  # bitwise: every tensor as it was
    done = compensate(teacher, copy.deepcopy(teacher), {}, torch.randn(2, 3, 12, 12))
    assert done.corrected == {} and done.skipped == {}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("act", ["relu", "relu6", "silu", "identity"])
def test_compensated_student_is_closer_to_the_teacher(act, seed):
    teacher = _trained_like(lambda: _Chain(act), seed)
    x = torch.randn(64, 3, 12, 12, generator=_gen(100 + seed))  # the distribution BN fits
    plain = prune(teacher, _cfg(compensate=False), exclude=LAST, input=SPEC)
    fixed = prune(teacher, _cfg(compensate=True), exclude=LAST, input=SPEC)
    assert _error(teacher, fixed, x) < 0.7 * _error(teacher, plain, x)


@pytest.mark.parametrize(
    ("bias", "bn_after", "where"),
    [(False, True, "bn2"), (True, False, "bias"), (True, True, "bias")],
)
def test_correction_goes_to_the_next_bn_or_the_bias(bias, bn_after, where):
    x = torch.randn(2, 3, 12, 12, generator=_gen(3))
    teacher = _trained_like(lambda: _Chain(bias=bias, bn_after=bn_after))
    student = prune(teacher, _cfg(), input=SPEC)
    before = _state(student)
    done = compensate(teacher, student, kept_channels(student), x)
    assert done.corrected["conv2"] == where and "conv2" not in done.skipped
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"bn1.running_mean", "bn2.running_mean" if where == "bn2" else "conv2.bias"}


def test_a_layer_it_cannot_fold_into_is_named_and_left_as_it_is():
    teacher = _trained_like(lambda: _Chain(bias=False, bn_after=False))
    student = prune(teacher, _cfg(), input=SPEC)
    before = _state(student)
    done = compensate(teacher, student, kept_channels(student), torch.randn(2, 3, 12, 12))
    assert "no bias and no BatchNorm" in done.skipped["conv2"]
    assert "conv2" not in done.corrected and student.conv2.bias is None
    after = _state(student)
    assert after.keys() == before.keys()  # no bias made: the checkpoint keys stay
    assert {k for k in after if not torch.equal(after[k], before[k])} == {"bn1.running_mean"}


class _Residual(nn.Module):
    """A layer reading a residual sum: no single BatchNorm explains its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.head(self.conv3(h).mean((2, 3)))


def test_a_residual_reader_is_skipped_with_its_reason():
    teacher = _trained_like(_Residual)
    student = prune(teacher, _cfg(), input=SPEC)
    before = _state(student)
    done = compensate(teacher, student, kept_channels(student), torch.randn(2, 3, 12, 12))
    assert "residual add" in done.skipped["conv3"] and "conv3" not in done.corrected
    assert torch.equal(student.conv3.bias, before["conv3.bias"])


def test_compensation_keeps_widths_and_the_teacher():
    teacher = _trained_like(resnet20, seed=4)
    before = fingerprint(teacher)
    cfg = ChannelConfig(amount=0.5, recalibrate=False)
    plain, fixed = prune(teacher, cfg), prune(teacher, CompensatedChannelConfig(cfg))
    assert fingerprint(teacher) == before
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (plain, fixed)]
    assert shapes[0] == shapes[1]
    assert kept_channels(plain).keys() == kept_channels(fixed).keys()
    assert all(torch.equal(kept_channels(plain)[k], v) for k, v in kept_channels(fixed).items())
    # only running means moved: the layer2.x.conv2 outputs feed bn2, conv weights untouched
    moved = {k for k, v in fixed.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    assert moved and all(k.endswith("bn2.running_mean") for k in moved)


# -- BatchNorm statistics -------------------------------------------------------------------
def test_only_shifted_bns_are_re_estimated():
    teacher = _trained_like(_Chain)
    student = prune(teacher, _cfg(protect_first=True), input=SPEC)
    probe = torch.randn(2, 3, 12, 12, generator=_gen(5))
    shifted = shifted_bns(teacher, student, kept_channels(student), probe)
    assert shifted == ["bn2"]  # stem, conv1 still read the teacher's inputs: bn0, bn1 exact
    cfg = _cfg(protect_first=True, recalibrate=True)
    images = torch.randn(8, 3, 12, 12, generator=_gen(6))
    fixed = prune(teacher, cfg, data=images, input=SPEC)
    kept = kept_channels(fixed)
    assert torch.equal(fixed.bn1.running_var, teacher.bn1.running_var[kept["bn1"]])
    assert not torch.equal(fixed.bn2.running_var, student.bn2.running_var)
    want = copy.deepcopy(student)
    recalibrate_bn(want, images, layers=["bn2"])
    assert torch.equal(fixed.bn2.running_mean, want.bn2.running_mean)


def test_images_are_made_only_when_a_statistic_shifted():
    teacher = _trained_like(_Chain)
    calls = []

    def make():
        calls.append(1)
        return torch.randn(4, 3, 12, 12)

    prune(teacher, _cfg(recalibrate=True, amount=0.0), data=make, input=SPEC)
    assert calls == []  # nothing pruned: no images
    prune(teacher, _cfg(recalibrate=True), data=make, input=SPEC)
    assert calls == [1]


def test_re_estimation_lifts_a_pruned_resnet_towards_its_teacher():
    teacher = _trained_like(resnet20, seed=7)
    x = torch.randn(64, 3, 12, 12, generator=_gen(8))
    plain = prune(teacher, ChannelConfig(amount=0.5, recalibrate=False), input=SPEC)
    fixed = prune(teacher, ChannelConfig(amount=0.5), data=torch.randn(64, 3, 12, 12), input=SPEC)
    assert _error(teacher, fixed, x) < _error(teacher, plain, x)


def test_calibration_source_makes_what_is_needed():
    assert calibration_source(nn.Sequential(nn.Conv2d(3, 4, 1)), [ChannelConfig()]) is None
    assert calibration_source(resnet20(), [ChannelConfig(recalibrate=False)]) is None
    assert calibration_source(resnet20(), [0.5]) is None  # masks need no images
    tiny = Calibration(images=4, iterations=1, taylor_images=3, taylor_iterations=1)
    made = calibration_source(resnet20(), [ChannelConfig()], tiny)
    assert made is not None and made().images.shape == (4, 3, 32, 32)
    taylor = calibration_source(resnet20(), [ChannelConfig("taylor", recalibrate=False)], tiny)
    assert taylor is not None and taylor().images.shape == (3, 3, 32, 32)
    # blocks are scored on the re-estimation budget, also without any BatchNorm
    net = nn.Sequential(nn.Conv2d(3, 4, 1))
    steps = [BlockConfig(), CompensatedChannelConfig(ChannelConfig("taylor", speedup=2))]
    assert calibration_source(net, steps, tiny, InputSpec(size=4)) is not None


def test_the_automatic_budget_shrinks_for_heavy_models_only():
    from recoverprune.models.builders import build_model

    assert recalibration_budget(resnet20(), Calibration()) == (64, 50)  # the measured one
    heavy = build_model("torchvision:resnet18", num_classes=10)  # 1.8 G MACs at 224x224
    assert recalibration_budget(heavy, Calibration()) == (16, 10)
    assert recalibration_budget(heavy, Calibration(images=64)) == (64, 10)
    cfg = Calibration(images=64, iterations=50)
    assert recalibration_budget(heavy, cfg) == (64, 50)  # explicit: paid as asked


def test_a_model_without_batchnorm_prunes_without_synthesis():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(2)
    )
    net(torch.zeros(1, 3, 8, 8))
    small = prune(net, ChannelConfig(amount=0.5, protect_first=False), input=InputSpec(size=8))
    assert small[0].out_channels == 4


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": -1}, "images must be a number of images"),
        ({"images": 1}, "BatchNorm statistics need 2"),
        ({"images": True}, "images must be"),
        ({"iterations": 0}, "iterations must be a number of steps >= 1"),
        ({"taylor_iterations": 2.5}, "taylor_iterations must be"),
    ],
)
def test_bad_settings_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        Calibration(**kwargs)
    assert explain(info.value) is not None  # the CLI reports it without a traceback
    with pytest.raises(ValueError, match="recalibrate must be True or False"):
        ChannelConfig(recalibrate="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel takes a ChannelConfig"):
        CompensatedChannelConfig(0.5)  # type: ignore[arg-type]


def test_compensation_is_experimental_and_off_the_main_configs():
    assert "CompensatedChannelConfig" not in recoverprune.__all__
    with pytest.raises(TypeError, match="compensate"):
        ChannelConfig(compensate=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="CompensatedChannelConfig needs a budget"):
        prune(resnet20(), CompensatedChannelConfig(ChannelConfig()))


def test_bad_recalibration_input_is_refused_before_any_pass():
    net = _trained_like(_Chain)
    with pytest.raises(ValueError, match="at least 2 images"):
        recalibrate_bn(net, torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="no layer 'bn9'"):
        recalibrate_bn(net, torch.randn(4, 3, 12, 12), layers=["bn9"])


def test_compensation_benchmark_tiny(shared_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "compensation.json"
    cmd = [sys.executable, "benchmarks/channel_compensation.py", "--tiny", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| resnet20 (untrained, tiny) |" in proc.stdout and "settings:" in proc.stdout
    results = json.loads(out.read_text())
    row = results["rows"][0]
    for column in ("teacher", "today", "bias", "bn", "both", "bn-all"):
        assert 0.0 <= row["top1"][column] <= 100.0
    assert all(row["seconds"][c] > 0 for c in ("today", "bias", "bn", "both", "bn-all"))
    assert {"machine", "threads", "torch"} <= results["settings"].keys()
    assert row["macs"][0] / row["macs"][1] >= 2.0
