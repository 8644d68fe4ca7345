"""Recovery techniques for structured students: depth-weighted feature KD, a frozen
classifier, block-local recovery first (hooks removed, flags restored, indices right)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _nets import calibrated, random_synthetic, sharp_teacher
from recoverprune import DistillConfig, prune, recover
from recoverprune.core.io import fingerprint
from recoverprune.distill.freeze import classifier_name, frozen_classifier
from recoverprune.distill.local import block_local, local_blocks
from recoverprune.distill.objectives import FeatureKD, StepOutputs, bind_objective
from recoverprune.models import resnet20


def _channel_student(teacher: nn.Module, amount: float) -> nn.Module:
    pytest.importorskip("torch_pruning", reason='channel pruning needs pip install ".[channel]"')
    from recoverprune import ChannelConfig

    return prune(teacher, ChannelConfig(amount=amount, recalibrate=False)).eval()


class _Two(nn.Module):
    """Two named blocks whose feature errors are set by hand."""

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.BatchNorm2d(1)), nn.Sequential(nn.BatchNorm2d(1))
        )
        for bn, s in zip(self.blocks, scale, strict=True):
            nn.init.constant_(bn[0].weight, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))


@pytest.mark.parametrize(("depth", "expected"), [(False, 0.5), (True, (0 + 2 * 1) / 3)])
def test_depth_weighting_counts_the_ith_layer_i_times(depth, expected):
    teacher, student = _Two((1.0, 1.0)).eval(), _Two((1.0, 2.0)).eval()
    x = torch.randn(4, 1, 3, 3)
    term = FeatureKD(layers="blocks", depth_weighted=depth)
    with bind_objective([term], teacher, student) as loss_fn:
        with torch.no_grad():
            t, s = teacher(x), student(x)
        got = float(loss_fn(StepOutputs(s, t, t.argmax(1)))["feature"])
    # block 1 matches exactly; block 2 is twice the teacher's: relative error exactly 1
    assert got == pytest.approx(expected, rel=1e-5)


def test_frozen_classifier_restores_flags_on_error_and_names_the_last_linear():
    net = resnet20()
    net.linear.bias.requires_grad_(False)  # a flag the user set: kept as it was
    with pytest.raises(RuntimeError), frozen_classifier(net) as name:
        assert name == "linear" and not net.linear.weight.requires_grad
        raise RuntimeError
    assert net.linear.weight.requires_grad and not net.linear.bias.requires_grad
    with pytest.raises(ValueError, match="freeze_classifier=False"):
        classifier_name(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_recover_with_frozen_classifier_keeps_it_and_trains_the_rest():
    teacher = sharp_teacher()
    student = prune(teacher, 0.5)
    head = classifier_name(student)
    before = {k: v.clone() for k, v in student.get_submodule(head).state_dict().items()}
    body = fingerprint(student)
    cfg = DistillConfig(epochs=2, freeze_classifier=True)
    recover(teacher, student, random_synthetic(64, 1), config=cfg, progress=False)
    after = student.get_submodule(head).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert fingerprint(student) != body  # the rest learned
    assert all(p.requires_grad for n, p in student.named_parameters() if "mask" not in n)


def test_no_frozen_classifier_without_a_linear_fails_before_training():
    net = calibrated(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()))
    cfg = DistillConfig(epochs=1, freeze_classifier=True)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        recover(net, prune(net, 0.5), random_synthetic(16, 1), config=cfg, progress=False)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_local_fraction_is_a_fraction(bad):
    with pytest.raises(ValueError, match="local_fraction"):
        DistillConfig(local_fraction=bad)


def test_block_local_is_zero_for_the_teacher_itself_and_removes_its_hooks():
    teacher = calibrated(resnet20(), size=32).eval()
    with block_local(teacher, teacher) as local, torch.no_grad():
        teacher(torch.randn(4, 3, 32, 32))
        assert float(local()) == 0.0
    assert not any(m._forward_hooks for m in teacher.modules())


def test_block_local_reads_the_stream_channels_the_student_kept():
    from recoverprune import kept_channels

    teacher = calibrated(resnet20(), size=32).eval()
    student = _channel_student(teacher, 0.5)
    blocks, recorded = local_blocks(teacher, student), kept_channels(student)
    assert len(blocks) == 9
    for name, idx in blocks.items():
        stage, i = name.split(".")
        prev = f"{stage}.{int(i) - 1}.bn2" if i != "0" else None
        if idx is not None and prev is not None:  # inside a stage: the stream's channels
            assert torch.equal(idx, recorded[prev])
    assert any(idx is not None for idx in blocks.values())


def test_block_local_first_fits_blocks_better_than_end_to_end_and_leaves_teacher_alone():
    from recoverprune.pruning.masks import copy_model

    torch.manual_seed(0)
    teacher = calibrated(resnet20(), size=32).eval()
    pruned = _channel_student(teacher, 0.5)
    t_before = fingerprint(teacher)
    data = random_synthetic(64, 2, num_classes=10, size=32)
    x = data.images[:16]

    def local_error(student: nn.Module) -> float:  # on batch statistics, as the steps fit
        student.train()
        with block_local(teacher, student) as local, torch.no_grad():
            teacher(x)
            error = float(local())
        student.eval()
        return error

    errors = {}
    for fraction in (0.0, 0.95):  # the same 16 steps: end-to-end, or 15 block-local first
        cfg = DistillConfig(epochs=4, batch_size=16, local_fraction=fraction, mix="none")
        student = recover(teacher, copy_model(pruned), data, config=cfg, progress=False)
        errors[fraction] = local_error(student)
    assert errors[0.95] < errors[0.0] < local_error(pruned)
    assert fingerprint(teacher) == t_before
    assert not any(m._forward_hooks for m in (*teacher.modules(), *student.modules()))
