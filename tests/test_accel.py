"""The CPU bf16 fast path: chosen only where the CPU has native bf16, switchable, and the
whole pipeline runs under it (BatchNorm statistics and losses kept in float32);
``evaluate`` measures in the model's own precision on every CPU.

The capability is mocked both ways (torch's own probes), so every test here means the same
on a CPU with native bf16 (AMX, AVX512-BF16) and on one without (AVX2 only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _nets import calibrated, tiny_bn_net
from recoverprune import Accel, InputSpec, SyntheticImages, evaluate, prune, recover, synthesize
from recoverprune.core.runtime import cpu_has_native_bf16, resolve


def _pretend(monkeypatch, native: bool) -> None:
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
    assert cpu_has_native_bf16() is native


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch) -> bool:
    """Each test twice: on a CPU with native bf16, and on one without."""
    _pretend(monkeypatch, request.param)
    return request.param


@pytest.fixture
def native_bf16(monkeypatch):
    _pretend(monkeypatch, True)


def test_the_automatic_cpu_choice_follows_the_capability(native):
    rt = resolve("cpu")
    expected = (torch.bfloat16, True) if native else (None, False)
    assert (rt.amp_dtype, rt.channels_last, rt.compile) == (*expected, False)
    assert rt.describe()["amp"] == ("bfloat16" if native else "off")
    assert resolve("cpu", Accel(amp="bf16")).amp_dtype is torch.bfloat16  # asked for: kept


def _close_call() -> tuple[nn.Module, SyntheticImages]:
    """A linear classifier whose two outputs differ by less than bf16 can tell apart,
    and data labelled with its float32 answers."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(48, 2)
    with torch.no_grad():
        model.weight[1] = model.weight[0] + 1e-3 * torch.randn(48, generator=g)
        model.bias.zero_()
    x = torch.randn(512, 48, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, SyntheticImages(x.view(512, 3, 4, 4), labels)


def test_evaluate_measures_in_the_models_own_precision(native):
    model, data = _close_call()
    flat = nn.Sequential(nn.Flatten(), model)
    assert evaluate(flat, data, progress=False).top1 == 100.0  # its float32 answers
    # asked for, mixed precision is used, and here it changes answers (any CPU can emulate it)
    amp = evaluate(flat, data, amp=True, progress=False).top1
    assert amp < 100.0 if native else amp == 100.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = flat(data.images).float().argmax(1)
    assert (bf16 != data.labels).any()  # the data tells float32 and bf16 apart


def test_switches_win_over_the_automatic_cpu_choice(native_bf16):
    off = resolve("cpu", Accel(amp="off"))
    assert (off.amp_dtype, off.channels_last) == (None, False)
    assert resolve("cpu", Accel(channels_last=False)).channels_last is False


def test_synthesis_and_recovery_run_under_cpu_bf16_and_leave_the_teacher_as_it_was():
    torch.manual_seed(0)
    teacher = calibrated(tiny_bn_net())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    accel = Accel(amp="bf16", channels_last=True)
    data = synthesize(
        teacher, 8, iterations=3, batch_size=4, input=InputSpec(3, 8), accel=accel, progress=False
    )
    assert data.images.dtype == torch.float32 and torch.isfinite(data.images).all()
    assert all(torch.isfinite(torch.tensor(st["loss"])) for st in data.meta["stats"])
    student = recover(teacher, prune(teacher, 0.5), data, epochs=1, accel=accel, progress=False)
    assert all(p.dtype == torch.float32 for p in student.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(v.is_contiguous() for v in after.values())  # memory format restored


@pytest.mark.slow
def test_the_bundled_teacher_scores_its_float32_top1(shared_dir, tmp_path):
    """The issue's case: 87.65 % under bf16 autocast where float32 gives 87.72 %."""
    from recoverprune.data import ImageTensorDataset, load_split
    from recoverprune.models import default_teacher

    full = load_split(shared_dir / "datasets" / "cifar10-jpeg.tar.gz", cache_dir=tmp_path)
    every5th = (full.images[::5].clone(), full.labels[::5].clone())  # 2,000 images
    test = ImageTensorDataset(*every5th, full.classes, full.mean, full.std)
    x, y = test.batch(torch.arange(len(test)))
    teacher = default_teacher()
    with torch.inference_mode():
        fp32 = torch.cat([teacher(batch) for batch in x.split(500)]).argmax(1)
    assert evaluate(teacher, test, progress=False).top1 == 100.0 * int((fp32 == y).sum()) / len(y)
