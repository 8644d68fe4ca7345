"""recover(): KD on synthetic images keeps masks, leaves the teacher alone, resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _nets import random_synthetic, sharp_teacher, tiny_bn_net
from recoverprune import DistillConfig, SyntheticImages, prune, recover, sparsity
from recoverprune.core.io import fingerprint
from recoverprune.distill.augment import augment
from recoverprune.distill.loop import CHECKPOINT
from recoverprune.distill.objectives import kd_loss


def _net(num_classes: int = 4, seed: int = 0) -> nn.Module:
    return tiny_bn_net(num_classes, widths=(8, 16), seed=seed)


def _teacher() -> nn.Module:
    return sharp_teacher()


def _data(n: int = 64, seed: int = 1) -> SyntheticImages:
    return random_synthetic(n, seed)


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x).argmax(1) == b.eval()(x).argmax(1)).float().mean())


CFG = DistillConfig(epochs=8, batch_size=16, lr=0.05, holdout=0.0, augment=False)


def test_kd_loss_zero_for_equal_logits_and_positive_otherwise():
    z = torch.randn(8, 5)
    assert float(kd_loss(z, z, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z, torch.randn(8, 5), 4.0)) > 0
    # T^2 scaling: the gradient magnitude does not vanish with temperature
    s = torch.randn(8, 5, requires_grad=True)
    kd_loss(s, z, 8.0).backward()
    assert s.grad.abs().sum() > 1e-3


def test_augment_is_deterministic_and_crops_within_padding():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0), padding=2)
    b = augment(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(a, b)
    assert a.shape == x.shape
    # every non-zero output value exists in the same image of the input
    for i in range(2):
        vals = set(a[i][a[i] != 0].tolist())
        assert vals <= set(x[i].flatten().tolist())


def test_masks_intact_and_teacher_unchanged():
    teacher = _teacher()
    before = fingerprint(teacher)
    student = prune(teacher, 0.6)
    masks = {n: b.clone() for n, b in student.named_buffers() if n.endswith("weight_mask")}
    recover(teacher, student, _data(), config=CFG, progress=False)
    assert fingerprint(teacher) == before
    assert not teacher.training
    assert all(p.requires_grad for p in teacher.parameters())
    for name, buf in student.named_buffers():
        if name.endswith("weight_mask"):
            assert torch.equal(buf, masks[name])
    for m in student.modules():
        if hasattr(m, "weight_mask"):
            assert torch.all(m.weight[m.weight_mask == 0] == 0)
            assert torch.all((m.weight_orig * m.weight_mask)[m.weight_mask == 0] == 0)
    assert sparsity(student).zeros >= round(0.6 * sparsity(teacher).total)


def test_student_agreement_improves():
    teacher = _teacher()
    student = prune(teacher, 0.7)
    with torch.no_grad():  # damage it further so there is something to recover
        for m in student.modules():
            if hasattr(m, "weight_orig"):
                m.weight_orig.add_(0.3 * torch.randn_like(m.weight_orig))
    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(7))

    def kl() -> float:
        with torch.no_grad():
            return float(kd_loss(student.eval()(x), teacher(x), 1.0))

    before, agree_before = kl(), _agreement(teacher, student, x)
    cfg = DistillConfig(epochs=15, batch_size=32, lr=0.05, holdout=0.0)
    recover(teacher, student, _data(256), config=cfg, progress=False)
    after, agree_after = kl(), _agreement(teacher, student, x)
    assert after < 0.5 * before, (before, after)
    assert agree_after > agree_before, (agree_before, agree_after)


def test_dense_student_trains_densely():
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.add_(0.5 * torch.randn_like(student[0].weight))
    w0 = student[-1].weight.clone()
    recover(teacher, student, _data(), config=CFG, progress=False)
    assert not torch.equal(w0, student[-1].weight)
    assert sparsity(student).zeros == 0


def test_bn_modes():
    teacher = _teacher()
    for mode in ("train", "frozen"):
        student = prune(teacher, 0.5)
        stats = student[1].running_mean.clone()
        recover(
            teacher,
            student,
            _data(),
            config=DistillConfig(epochs=2, batch_size=16, holdout=0.0, bn_mode=mode, augment=False),
            progress=False,
        )
        changed = not torch.equal(stats, student[1].running_mean)
        assert changed == (mode == "train")
        assert not student.training


def test_holdout_reports_agreement_history():
    teacher = _teacher()
    student = recover(
        teacher,
        prune(teacher, 0.5),
        _data(80),
        config=DistillConfig(epochs=2, batch_size=16, holdout=0.25),
        progress=False,
    )
    hist = student.recovery_history
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(0 <= h["agreement"] <= 100 for h in hist)


def test_val_data_keeps_best_epoch():
    teacher = _teacher()
    val = _data(32, seed=5)
    # label the validation set with the teacher so accuracy is meaningful
    with torch.no_grad():
        val = SyntheticImages(val.images, teacher(val.images).argmax(1))
    student = recover(
        teacher, prune(teacher, 0.5), _data(), config=CFG, val_data=val, progress=False
    )
    hist = student.recovery_history
    assert all("val_top1" in h for h in hist)


def test_resume_continues_and_matches_uninterrupted(tmp_path, monkeypatch):
    teacher = _teacher()
    data = _data()
    cfg = DistillConfig(epochs=4, batch_size=16, lr=0.05, holdout=0.0)
    ref = recover(
        teacher, prune(teacher, 0.5), data, config=cfg, out_dir=tmp_path / "a", progress=False
    )

    # interrupt during epoch 3: the checkpoint holds epoch 2
    import recoverprune.distill.objectives as d

    calls = {"n": 0}
    real = d.kd_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 2:  # 4 steps per epoch, fail inside epoch 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(d, "kd_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        recover(
            teacher, prune(teacher, 0.5), data, config=cfg, out_dir=tmp_path / "b", progress=False
        )
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2 and not state["done"]
    monkeypatch.setattr(d, "kd_loss", real)
    resumed = recover(
        teacher, prune(teacher, 0.5), data, config=cfg, out_dir=tmp_path / "b", progress=False
    )
    assert [h["epoch"] for h in resumed.recovery_history] == [1, 2, 3, 4]
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # a finished directory returns at once with the same weights
    again = recover(
        teacher, prune(teacher, 0.5), data, config=cfg, out_dir=tmp_path / "b", progress=False
    )
    assert torch.equal(again[-1].weight_orig, ref[-1].weight_orig)


def test_out_dir_with_other_settings_is_refused(tmp_path):
    teacher = _teacher()
    recover(teacher, prune(teacher, 0.5), _data(), config=CFG, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        recover(
            teacher,
            prune(teacher, 0.5),
            _data(),
            config=DistillConfig(epochs=3),
            out_dir=tmp_path,
            progress=False,
        )


def test_bad_inputs():
    teacher = _teacher()
    student = prune(teacher, 0.5)
    with pytest.raises(ValueError, match="same classes"):
        recover(teacher, prune(_net(num_classes=5), 0.5), _data(), config=CFG, progress=False)
    with pytest.raises(ValueError, match="empty"):
        recover(
            teacher,
            student,
            SyntheticImages(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)),
            progress=False,
        )
    with pytest.raises(ValueError, match="do not fit"):
        lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        recover(
            lin,
            prune(lin, 0.5),
            SyntheticImages(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)),
            progress=False,
        )
    with pytest.raises(ValueError, match="epochs"):
        DistillConfig(epochs=0)
    with pytest.raises(ValueError, match="bn_mode"):
        DistillConfig(bn_mode="foo")  # type: ignore[arg-type]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    teacher = _teacher()
    data = _data()
    cfg = DistillConfig(epochs=3, batch_size=16, holdout=0.0)
    student = prune(teacher, 0.5)
    recover(
        teacher,
        student,
        data,
        config=DistillConfig(epochs=1, batch_size=16, holdout=0.0),
        progress=False,
    )
    bad = SyntheticImages(
        torch.full((16, 3, 8, 8), float("nan")), torch.zeros(16, dtype=torch.long)
    )
    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        recover(teacher, prune(teacher, 0.5), bad, config=cfg, out_dir=tmp_path, progress=False)


def test_recover_leaves_teacher_and_student_in_their_memory_format():
    from recoverprune import Accel

    teacher = sharp_teacher()
    ptrs = [p.data_ptr() for p in teacher.parameters()]
    student = prune(teacher, 0.5)
    cfg = DistillConfig(epochs=1, batch_size=16)
    accel = Accel(channels_last=True)  # what CUDA picks automatically
    out = recover(teacher, student, random_synthetic(), config=cfg, accel=accel, progress=False)
    assert [p.data_ptr() for p in teacher.parameters()] == ptrs  # the very same storage
    assert all(p.is_contiguous() for p in teacher.parameters())
    assert all(p.is_contiguous() for p in out.parameters())
    assert all(b.is_contiguous() for b in out.buffers())


class _Minimal:
    """Only the required members of the transfer-source protocol."""

    def __init__(self, data: SyntheticImages) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, epoch, batch_size, seed, rank, world_size):
        return list(torch.arange(len(self)).split(batch_size))

    def get_batch(self, idx):
        return self.data.get_batch(idx)

    def key(self) -> str:
        return "minimal"


def test_recover_reads_any_source_of_the_protocol_and_writes_one_student_format(tmp_path):
    teacher = _teacher()
    cfg = DistillConfig(epochs=2, batch_size=16, holdout=0.5)  # no split(): nothing held out
    student = recover(
        teacher, prune(teacher, 0.5), _Minimal(_data()), config=cfg, out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    assert [h["epoch"] for h in student.recovery_history] == [1, 2]
    assert "agreement" not in student.recovery_history[0]
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["meta"]["synthetic"] == "minimal" and state["done"]
    final = torch.load(tmp_path / "student.pt", weights_only=True)  # the format load_model reads
    assert torch.equal(final["state_dict"]["3.weight_orig"], student[3].weight_orig)
