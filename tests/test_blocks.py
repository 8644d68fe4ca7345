"""Block dropping: which blocks qualify, the greedy choice, budgets, the teacher left as it
was, BatchNorm re-estimation, save/load, compress and the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from _nets import bn_resnet
from recoverprune import (
    BlockConfig,
    Calibration,
    ChannelConfig,
    channel_spec,
    compress,
    kept_channels,
    prune,
)
from recoverprune.core.io import fingerprint, save_atomic
from recoverprune.models import load_model, mobilenet_v2, resnet18, resnet20, vgg11_bn
from recoverprune.pruning.blocks import drop_blocks, droppable_blocks
from recoverprune.pruning.channel_spec import dropped_blocks
from recoverprune.pruning.measure import count_macs

X = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))

#: MACs of one ResNet-20 block: two 3x3 convolutions, 16x32x32, 32x16x16 or 64x8x8 outputs
BLOCK_MACS = 2 * 16 * 32 * 32 * 16 * 9
#: the ResNet-20 blocks whose shortcut is the identity: all but the first of stages 2 and 3
RESNET20_IDENTITY = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1"]
RESNET20_IDENTITY += ["layer3.2"]




def _identities(model: nn.Module) -> list[str]:
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.Identity) and "shortcut" not in n
    ]


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        p, q = F.log_softmax(teacher(x), 1), F.log_softmax(student(x), 1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


def _without(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy with the named blocks replaced by hand (the test's own surgery)."""
    import copy

    out = copy.deepcopy(model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent), attr, nn.Identity())
    return out


# -- which blocks qualify -----------------------------------------------------------------
def test_resnet20_candidates_are_its_identity_shortcut_blocks():
    model = resnet20()
    by_architecture = [
        f"{stage}.{i}"
        for stage in ("layer1", "layer2", "layer3")
        for i, block in enumerate(getattr(model, stage))
        if isinstance(block.shortcut, nn.Identity)
    ]
    assert by_architecture == RESNET20_IDENTITY  # option-A shortcuts: layer2.0, layer3.0
    assert droppable_blocks(model) == RESNET20_IDENTITY


def _tv_resnet(block: str) -> nn.Module:
    from torchvision.models import resnet

    kind = resnet.BasicBlock if block == "basic" else resnet.Bottleneck
    return torchvision.models.ResNet(kind, [2, 1, 2, 1], num_classes=10)


@pytest.mark.parametrize(
    "build, expected",
    [
        (resnet18, ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
        (lambda: _tv_resnet("basic"), ["layer1.0", "layer1.1", "layer3.1"]),
        (lambda: _tv_resnet("bottleneck"), ["layer1.1", "layer3.1"]),
        (vgg11_bn, []),
    ],
    ids=["zoo-resnet18", "tv-basicblock", "tv-bottleneck", "vgg"],
)
def test_candidates_of_resnets_follow_their_shortcuts(build, expected):
    assert droppable_blocks(build().eval(), torch.zeros(1, 3, 32, 32)) == expected


@pytest.mark.parametrize("which", ["zoo", "torchvision"])
def test_mobilenet_candidates_are_the_residual_inverted_blocks(which):
    if which == "zoo":
        model, flag = mobilenet_v2(), "use_residual"
    else:
        model = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10)
        flag = "use_res_connect"
    expected = [n for n, m in model.named_modules() if getattr(m, flag, False) is True]
    assert len(expected) >= 10
    assert droppable_blocks(model.eval(), torch.zeros(1, 3, 32, 32)) == expected


class _Flagged(nn.Module):
    """Claims a residual connection, but its output has another shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.use_residual = True
        self.conv = nn.Conv2d(4, 4, 3, stride, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Stage(nn.Module):
    """A stage with an identity ``downsample`` and an identity ``shortcut`` it never adds."""

    def __init__(self) -> None:
        super().__init__()
        self.downsample = nn.Identity()
        self.shortcut = nn.Identity()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.downsample(x)) + self.shortcut(torch.ones_like(x))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shortcut = nn.Sequential()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


def test_only_shape_keeping_blocks_with_a_real_identity_shortcut_qualify():
    net = nn.Sequential(_Flagged(1), _Flagged(2), _Stage(), _Residual(), nn.Conv2d(4, 2, 1))
    assert droppable_blocks(net, torch.zeros(1, 4, 8, 8)) == ["0", "3"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_exclude_keeps_blocks_and_must_match_a_module():
    model = resnet20()
    assert droppable_blocks(model, exclude=["layer1"]) == RESNET20_IDENTITY[3:]
    without_last = ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert droppable_blocks(model, exclude=["layer*.2"]) == without_last
    with pytest.raises(ValueError, match="'nosuch' matches no module"):
        droppable_blocks(model, exclude=["nosuch"])
    teacher = bn_resnet(resnet20())
    with torch.no_grad():  # the greedy choice, were layer3.1 not excluded
        teacher.layer3[1].bn2.weight.zero_()
        teacher.layer3[1].bn2.bias.zero_()
    cfg = BlockConfig(drop=1, exclude=("layer1", "layer2"))  # and prune's own exclude= adds
    short = prune(teacher, cfg, exclude=["layer3.1"], data=X)
    assert dropped_blocks(short) == ["layer3.2"]


# -- what dropping does -------------------------------------------------------------------
def test_drop_two_removes_exactly_two_blocks_and_their_macs():
    teacher = bn_resnet(resnet20())
    short = prune(teacher, BlockConfig(drop=2), data=X)
    dropped = dropped_blocks(short)
    assert len(dropped) == 2 and set(dropped) <= set(RESNET20_IDENTITY)
    assert _identities(short) == dropped
    with torch.no_grad():
        assert short(X).shape == teacher(X).shape
    assert count_macs(teacher, X) - count_macs(short, X) == 2 * BLOCK_MACS
    block_params = sum(p.numel() for n in dropped for p in teacher.get_submodule(n).parameters())
    params = [sum(p.numel() for p in m.parameters()) for m in (teacher, short)]
    assert params[0] - params[1] == block_params


@pytest.mark.parametrize("speedup", [1.1, 1.5, 3.0])
def test_speedup_is_met_with_the_fewest_blocks(speedup):
    teacher = bn_resnet(resnet20())
    short = prune(teacher, BlockConfig(speedup=speedup), data=X)
    full, left = count_macs(teacher, X), count_macs(short, X)
    assert left <= full / speedup < left + BLOCK_MACS  # one block fewer would not do


@pytest.mark.parametrize(
    "build", [mobilenet_v2, lambda: torchvision.models.mobilenet_v2(width_mult=0.25)]
)
def test_mobilenets_keep_their_output_shape(build):
    teacher = bn_resnet(build())
    short = prune(teacher, BlockConfig(drop=2), data=X)
    with torch.no_grad():
        out = short(X)
    assert out.shape == teacher(X).shape and torch.isfinite(out).all()
    assert len(dropped_blocks(short)) == 2 and count_macs(short, X) < count_macs(teacher, X)


def test_the_greedy_choice_is_a_block_whose_branch_is_zeroed():
    teacher = bn_resnet(resnet20())
    with torch.no_grad():  # layer2.2 now computes relu(0 + x) = x: removing it changes nothing
        teacher.layer2[2].bn2.weight.zero_()
        teacher.layer2[2].bn2.bias.zero_()
    short = prune(teacher, BlockConfig(drop=1), data=X)
    assert dropped_blocks(short) == ["layer2.2"]
    with torch.no_grad():  # nothing shifted: no BatchNorm re-estimated, same function
        torch.testing.assert_close(short(X), teacher(X), rtol=1e-5, atol=1e-5)


def test_each_greedy_step_takes_the_least_damaging_block():
    teacher = bn_resnet(resnet20())
    short = prune(teacher, BlockConfig(drop=2, recalibrate=False), data=X)
    first = min(RESNET20_IDENTITY, key=lambda n: _kl(teacher, _without(teacher, [n]), X))
    rest = [n for n in RESNET20_IDENTITY if n != first]
    second = min(rest, key=lambda n: _kl(teacher, _without(teacher, [first, n]), X))
    assert dropped_blocks(short) == [n for n in RESNET20_IDENTITY if n in (first, second)]
    with torch.no_grad():
        assert torch.equal(short(X), _without(teacher, [first, second])(X))


def test_batchnorm_statistics_are_re_estimated_after_the_first_dropped_block_only():
    teacher = bn_resnet(resnet20())
    cfg = BlockConfig(drop=1, exclude=("layer1", "layer2.1", "layer3"))
    short = prune(teacher, cfg, data=X)
    assert dropped_blocks(short) == ["layer2.2"]
    t_bns = dict(teacher.named_modules())
    after = 0
    for name, bn in short.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        same = torch.equal(bn.running_mean, t_bns[name].running_mean)
        if name.startswith("layer3"):  # run after layer2.2
            assert not same, name
            after += 1
        else:
            assert same, name
    assert after == 6  # the six BatchNorm layers of stage 3
    kept = prune(teacher, BlockConfig(drop=1, recalibrate=False), data=X)
    for name, bn in kept.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            assert torch.equal(bn.running_var, t_bns[name].running_var), name


def test_deterministic_for_fixed_inputs():
    teacher = bn_resnet(resnet20())
    a, b = (prune(teacher, BlockConfig(drop=3), data=X) for _ in "ab")
    assert dropped_blocks(a) == dropped_blocks(b)
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize("data", ["given", "synthesised"])
def test_teacher_bitwise_unchanged(data):
    teacher = bn_resnet(resnet20()).train()
    teacher.bn1.eval()  # a mixed mode, as a frozen BatchNorm leaves it
    teacher.conv1.weight.requires_grad_(False)
    before = fingerprint(teacher)
    modes = [m.training for m in teacher.modules()]
    flags = [p.requires_grad for p in teacher.parameters()]
    cfg, budget = BlockConfig(drop=2), Calibration(images=4, iterations=2)
    short = prune(teacher, cfg, data=X if data == "given" else None, calibration=budget)
    assert fingerprint(teacher) == before
    assert [m.training for m in teacher.modules()] == modes
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())
    assert dropped_blocks(teacher) is None and len(dropped_blocks(short)) == 2
    assert short.training and not short.bn1.training and not short.conv1.weight.requires_grad


# -- save, load, compress, the command line -------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path):
    short = prune(bn_resnet(resnet20()), BlockConfig(drop=2), data=X).eval()
    path = tmp_path / "short.pt"
    save_atomic({"state_dict": short.state_dict(), "channel_spec": channel_spec(short)}, path)
    torch.load(path, weights_only=True)  # plain data only
    loaded = load_model("resnet20", path)
    with torch.no_grad():
        assert torch.equal(loaded(X), short(X))
    assert dropped_blocks(loaded) == dropped_blocks(short) and kept_channels(loaded) is None
    assert fingerprint(loaded) == fingerprint(short)


def test_bad_settings_are_refused_with_what_to_pass():
    for kwargs, message in [
        ({"drop": 0}, "drop is a number of blocks >= 1"),
        ({"drop": True}, "drop is a number"),
        ({"speedup": 1.0}, "speedup is a MAC ratio"),
        ({"drop": 2, "speedup": 2.0}, "not both"),
        ({"exclude": "layer1"}, "tuple of glob patterns"),
        ({"recalibrate": 0}, "recalibrate must be True or False"),
    ]:
        with pytest.raises(ValueError, match=message):
            BlockConfig(**kwargs)
    for kwargs, message in [
        ({"images": 1}, "BatchNorm statistics need 2"),
        ({"iterations": 0}, "iterations must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            Calibration(**kwargs)
    assert BlockConfig(exclude=["layer1"]).exclude == ("layer1",)  # type: ignore[arg-type]


def _never() -> None:
    raise AssertionError("images were made before the settings were checked")


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        (resnet20, {"drop": 8}, r"drop=8 asks for more blocks .*\(7: layer1.0.*pass drop<=7"),
        (resnet20, {"speedup": 10.0}, r"5.39x at most. Pass speedup<=5.39"),
        (
            vgg11_bn,
            {},
            r"VGG has no residual block that can be dropped.*Prune channels \(ChannelConfig\)",
        ),
        (resnet20, {"exclude": ("layer*",)}, r"outside exclude=\['layer\*'\].*exclude fewer"),
    ],
    ids=["too-many", "unreachable-speedup", "no-block", "all-excluded"],
)
def test_models_and_budgets_out_of_reach_are_refused_before_any_images(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        drop_blocks(model(), BlockConfig(**kwargs), _never)


def test_data_is_refused_by_name():
    with pytest.raises(ValueError, match="pass data="):
        drop_blocks(resnet20(), BlockConfig(), None)


def test_compress_drops_blocks_saves_loads_and_resumes(tmp_path, monkeypatch):
    teacher = bn_resnet(resnet20())
    cfg, budget = BlockConfig(drop=2), Calibration(images=4, iterations=2)
    kwargs = dict(preset="tiny", out_dir=tmp_path, progress=False, calibration=budget)
    res = compress(teacher, cfg, **kwargs)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["structure"] == "block" and report["amount"] is None
    assert report["dropped_blocks"] == dropped_blocks(res.student) and report["block"]["drop"] == 2
    loaded = load_model("resnet20", tmp_path / "student.pt")
    with torch.no_grad():
        assert torch.equal(loaded(X), res.student.eval()(X))

    def no_pruning(*args, **kw):
        raise AssertionError("the pruned stage was recomputed instead of resumed")

    monkeypatch.setattr("recoverprune.pipeline.compress.prune", no_pruning)
    again = compress(teacher, cfg, **kwargs)
    assert dropped_blocks(again.student) == report["dropped_blocks"]
    with pytest.raises(ValueError, match=r"block \("):
        compress(teacher, BlockConfig(drop=3), **kwargs)


def test_cli_prune_and_compress_with_structure_block(tmp_path, capsys):
    from recoverprune.cli import main

    torch.save({"state_dict": bn_resnet(resnet20()).state_dict()}, tmp_path / "t.pt")
    model = ["--arch", "resnet20", "--checkpoint", str(tmp_path / "t.pt")]
    block = ["--structure", "block", "--recalibrate-images", "4"]
    out = tmp_path / "s.pt"
    assert main(["prune", *model, *block, "--drop-blocks", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "without blocks" in text and "40,551,040 -> 31,113,856 MACs" in text
    assert len(dropped_blocks(load_model("resnet20", out))) == 2

    argv = ["compress", *model, *block, "--preset", "tiny", "--no-progress"]
    argv += ["--out", str(tmp_path / "out"), "--block-speedup", "1.3"]
    assert main(argv) == 0
    assert "blocks dropped" in "".join(capsys.readouterr())
    student = load_model("resnet20", tmp_path / "out" / "student.pt")
    assert count_macs(student, X) <= count_macs(resnet20(), X) / 1.3
    assert main(argv) == 0  # resumed
    assert main([*argv, "--block-speedup", "2"]) == 2
    assert "block (" in capsys.readouterr().err
    assert main([*argv, "--amount", "0.5"]) == 2
    assert "takes no --amount" in capsys.readouterr().err
    assert main(["prune", *model, "--drop-blocks", "2", "--out", str(tmp_path / "x.pt")]) == 2
    assert "need --structure block" in capsys.readouterr().err
    assert main(["prune", *model, "--out", str(tmp_path / "x.pt")]) == 2
    assert "prune needs --amount" in capsys.readouterr().err


def test_blocks_then_channels_multiply_their_mac_ratios_and_round_trip(tmp_path):
    teacher = bn_resnet(resnet20())
    before = fingerprint(teacher)
    block, channel = BlockConfig(drop=2), ChannelConfig(speedup=1.3)
    short = prune(teacher, block, data=X)
    both = prune(teacher, [block, channel], data=X)
    assert dropped_blocks(both) == dropped_blocks(short)  # the same blocks go first
    kept = kept_channels(both)
    assert kept and not any(k.startswith(tuple(dropped_blocks(both))) for k in kept)
    assert count_macs(both, X[:1]) <= count_macs(short, X[:1]) / 1.3
    assert count_macs(both, X[:1]) > count_macs(short, X[:1]) / 1.3 * 0.9  # not far past it
    save_atomic(
        {"state_dict": both.state_dict(), "channel_spec": channel_spec(both)}, tmp_path / "s.pt"
    )
    loaded = load_model("resnet20", tmp_path / "s.pt")
    with torch.no_grad():
        assert torch.equal(loaded(X), both.eval()(X))
    assert fingerprint(teacher) == before  # left as it was


def test_blocks_then_channels_needs_a_channel_budget_before_any_images():
    def no_images():
        raise AssertionError("images were made before the settings were checked")

    with pytest.raises(ValueError, match=r"needs a budget after a BlockConfig"):
        prune(resnet20(), [BlockConfig(), ChannelConfig()], data=no_images)


def test_a_sequence_makes_its_images_once_for_every_step():
    made = []

    def images():
        made.append(1)
        return X

    both = prune(
        bn_resnet(resnet20()), [BlockConfig(drop=1), ChannelConfig(speedup=1.25)], data=images
    )
    assert made == [1] and dropped_blocks(both) and kept_channels(both)


def test_cli_structure_block_with_speedup_prunes_the_remaining_channels(tmp_path, capsys):
    from recoverprune.cli import main

    torch.save({"state_dict": bn_resnet(resnet20()).state_dict()}, tmp_path / "t.pt")
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(tmp_path / "t.pt")]
    argv += ["--structure", "block", "--recalibrate-images", "4", "--drop-blocks", "1"]
    assert main([*argv, "--speedup", "1.25", "--out", str(tmp_path / "s.pt")]) == 0
    assert ", channel-pruned:" in capsys.readouterr().out
    student = load_model("resnet20", tmp_path / "s.pt")
    assert len(dropped_blocks(student)) == 1 and kept_channels(student)
