"""The recovery recipe's pieces: feature KD, BN recalibration, reconstruction, gradual
pruning, mixing — masks stay exact, the teacher stays untouched, resume stays exact."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from _nets import calibrated, random_synthetic, sharp_teacher, tiny_bn_net
from recoverprune import DistillConfig, SyntheticImages, prune, recover, sparsity
from recoverprune.core.io import fingerprint
from recoverprune.distill.augment import mix
from recoverprune.distill.loop import CHECKPOINT
from recoverprune.distill.objectives import (
    FeatureKD,
    LogitKD,
    StepOutputs,
    bind_objective,
    feature_layers,
)
from recoverprune.distill.repair import recalibrate_bn, reconstruct
from recoverprune.models import resnet20
from recoverprune.pruning.masks import reselect_masks


def _teacher() -> nn.Module:
    return sharp_teacher()


def _data(n: int = 64, seed: int = 1) -> SyntheticImages:
    return random_synthetic(n, seed)


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("weight_mask")}


def _pruned_zero(model: nn.Module) -> bool:
    return all(
        torch.all(m.weight[m.weight_mask == 0] == 0)
        for m in model.modules()
        if hasattr(m, "weight_mask")
    )


def _feature_loss(teacher: nn.Module, student: nn.Module, layers: str, x: torch.Tensor) -> float:
    with bind_objective([FeatureKD(layers=layers)], teacher, student) as loss_fn:
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        return float(loss_fn(StepOutputs(s, t, t.argmax(1)))["feature"].detach())


@pytest.mark.parametrize("layers", ["auto", "blocks", "bn"])
def test_feature_loss_zero_for_identical_and_positive_for_pruned(layers):
    teacher = calibrated(resnet20(), size=32).eval()
    x = torch.randn(4, 3, 32, 32)
    assert _feature_loss(teacher, copy.deepcopy(teacher), layers, x) == 0.0
    assert _feature_loss(teacher, prune(teacher, 0.5).eval(), layers, x) > 1e-3


def test_feature_layers_found_and_hooks_removed():
    net = resnet20()
    assert feature_layers(net, "blocks") == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    assert len(feature_layers(net, "bn")) == 19
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # no blocks: auto -> BN
    assert feature_layers(seq) == ["1"]
    with pytest.raises(ValueError, match="not modules"):
        feature_layers(net, ["nope"])
    with bind_objective([FeatureKD(), LogitKD()], net, copy.deepcopy(net)):
        assert any(m._forward_hooks for m in net.modules())
    assert not any(m._forward_hooks for m in net.modules())


def test_feature_kd_warns_and_falls_back_when_nothing_matches():
    teacher, other = tiny_bn_net(), nn.Sequential(nn.Flatten(), nn.LazyLinear(4))
    with (
        pytest.warns(UserWarning, match="no module"),
        bind_objective([FeatureKD(layers="bn")], teacher, other) as fn,
    ):
        z = torch.randn(2, 4)
        assert float(fn(StepOutputs(z, z, torch.zeros(2, dtype=torch.long)))["feature"]) == 0


def test_recalibration_keeps_masks_and_matches_data_statistics():
    teacher = _teacher()
    student = prune(teacher, 0.6)
    masks = _masks(student)
    x = torch.randn(128, 3, 8, 8) * 3 + 1
    recalibrate_bn(student, x, batch_size=32)
    assert not student.training
    bn = student[1]
    with torch.no_grad():
        pre = student[0](x)
    assert torch.allclose(bn.running_mean, pre.mean((0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.1
    assert all(torch.equal(b, masks[n]) for n, b in _masks(student).items())
    assert _pruned_zero(student)


def test_reconstruction_keeps_masks_and_brings_outputs_closer():
    teacher = _teacher()
    student = prune(teacher, 0.7)
    masks = _masks(student)
    before = fingerprint(teacher)
    x = torch.randn(256, 3, 8, 8)

    def err() -> float:
        with torch.no_grad():
            return float((student(x) - teacher(x)).pow(2).mean())

    e0 = err()
    assert reconstruct(teacher, student, x) == ["0", "3", "8"]
    assert err() < 0.5 * e0
    assert fingerprint(teacher) == before
    assert all(torch.equal(b, masks[n]) for n, b in _masks(student).items())
    assert _pruned_zero(student)


def test_reselect_masks_exact_count():
    net = prune(resnet20(), 0.75)
    total = sparsity(net).total
    for amount in (0.1, 0.5, 0.9, 0.75):
        reselect_masks(net, amount)
        assert sparsity(net).zeros == round(amount * total)
        assert _pruned_zero(net)


def test_gradual_pruning_ends_at_exact_target_with_masks_zero():
    teacher = _teacher()
    student = prune(teacher, 0.6)
    target = sparsity(student).zeros
    cfg = DistillConfig(epochs=4, batch_size=16, holdout=0.0, gradual=0.5, augment=False)
    seen: list[int] = []
    real = reselect_masks

    def spy(model: nn.Module, amount: float) -> None:
        real(model, amount)
        seen.append(sparsity(model).zeros)
        assert _pruned_zero(model)

    import recoverprune.distill.loop as d

    d.reselect_masks, saved = spy, d.reselect_masks
    try:
        recover(teacher, student, _data(), config=cfg, progress=False)
    finally:
        d.reselect_masks = saved
    assert seen[0] < target // 2 and seen[-1] == target  # ramps up, ends exact
    assert sparsity(student).zeros == target
    assert _pruned_zero(student)


def test_mix_is_deterministic_and_keeps_shape():
    x = torch.randn(8, 3, 8, 8)
    for mode in ("mixup", "cutmix"):
        a = mix(x, torch.Generator().manual_seed(0), mode)
        b = mix(x, torch.Generator().manual_seed(0), mode)
        assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert mix(x, torch.Generator(), "none") is x


FULL = DistillConfig(
    epochs=4,
    batch_size=16,
    holdout=0.0,
    feature_weight=1.0,
    recalibrate=True,
    reconstruct=True,
    gradual=0.3,
    mix="cutmix",
)


def test_full_recipe_teacher_unchanged_no_hooks_masks_exact():
    teacher = _teacher()
    before = fingerprint(teacher)
    student = prune(teacher, 0.6)
    target = sparsity(student).zeros
    recover(teacher, student, _data(), config=FULL, progress=False)
    assert fingerprint(teacher) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert sparsity(student).zeros == target and _pruned_zero(student)


def test_full_recipe_resume_after_kill_is_exact(tmp_path, monkeypatch):
    teacher = _teacher()
    ref = recover(
        teacher, prune(teacher, 0.6), _data(), config=FULL, out_dir=tmp_path / "a", progress=False
    )
    import recoverprune.distill.objectives as o

    calls = {"n": 0}
    real = o.kd_loss

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 2:  # inside epoch 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(o, "kd_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        recover(
            teacher,
            prune(teacher, 0.6),
            _data(),
            config=FULL,
            out_dir=tmp_path / "b",
            progress=False,
        )
    monkeypatch.setattr(o, "kd_loss", real)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = recover(
        teacher, prune(teacher, 0.6), _data(), config=FULL, out_dir=tmp_path / "b", progress=False
    )
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
@pytest.mark.parametrize("layers", ["blocks", "bn"])
def test_feature_loss_indexes_channel_pruned_students(layers):
    pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')
    from recoverprune import ChannelConfig, kept_channels
    from recoverprune.distill.objectives import kept_indices

    teacher = calibrated(resnet20(), size=32).eval()
    student = prune(teacher, ChannelConfig(amount=0.5)).eval()
    names = feature_layers(teacher, layers)
    kept, recorded = kept_indices(student, names), kept_channels(student)
    for n in names:  # every layer is matched: a block by its last BN (the residual stream)
        own = recorded.get(n + ".bn2", recorded.get(n))
        if own is not None:
            assert torch.equal(kept[(n, len(own))], own)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "found no module ... to match" would fail here
        loss = _feature_loss(teacher, student, layers, torch.randn(4, 3, 32, 32))
    assert 1e-3 < loss < 10


@pytest.mark.slow
@pytest.mark.parametrize("residual", [True, False])
def test_reconstruction_leaves_channel_pruned_layers_to_distillation(residual):
    # measured: refitting them lowered the recovered top-1 (docs/channel-pruning.md)
    pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')
    from recoverprune import ChannelConfig

    teacher = calibrated(resnet20(), size=32).eval()
    cfg = ChannelConfig(speedup=2.5, residual=residual)
    student = prune(teacher, cfg).eval()
    before = fingerprint(student)
    assert reconstruct(teacher, student, torch.randn(16, 3, 32, 32)) == []
    assert fingerprint(student) == before


@pytest.mark.slow
def test_reconstruction_leaves_layers_both_channel_pruned_and_masked():
    pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')
    from recoverprune import ChannelConfig

    teacher = calibrated(resnet20(), size=32).eval()
    student = prune(teacher, [ChannelConfig(amount=0.3), 0.5])  # channels, then sparsity
    masks = _masks(student)
    names = reconstruct(teacher, student, torch.randn(32, 3, 32, 32))
    t_mods = dict(teacher.named_modules())
    shrunk = [
        n
        for n, m in student.named_modules()
        if hasattr(m, "weight_mask")
        and hasattr(t_mods.get(n), "weight")
        and m.weight_orig.shape != t_mods[n].weight.shape
    ]
    assert shrunk and not set(shrunk) & set(names)
    assert all(torch.equal(b, masks[n]) for n, b in _masks(student).items())
    assert _pruned_zero(student)
