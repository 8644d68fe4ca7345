"""The CPU bf16 fast path: chosen only where the CPU has native bf16, switchable, and the
whole pipeline runs under it (BatchNorm statistics and losses kept in float32)."""

from __future__ import annotations

import pytest
import torch

from _nets import calibrated, tiny_bn_net
from recoverprune import Accel, prune, recover, synthesize
from recoverprune.core import runtime as _runtime
from recoverprune.core.runtime import cpu_has_native_bf16, resolve


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has AMX (the development machine is an AVX2-only AMD)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16()


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(_runtime, "cpu_has_native_bf16", lambda: False)


def test_native_bf16_cpu_turns_on_bf16_autocast_and_channels_last(native_bf16):
    rt = resolve("cpu")
    assert (rt.amp_dtype, rt.channels_last, rt.compile) == (torch.bfloat16, True, False)
    assert rt.describe()["amp"] == "bfloat16"


def test_switches_win_over_the_automatic_cpu_choice(native_bf16):
    off = resolve("cpu", Accel(amp="off"))
    assert (off.amp_dtype, off.channels_last) == (None, False)
    assert resolve("cpu", Accel(channels_last=False)).channels_last is False


def test_cpu_without_native_bf16_stays_float32(no_native_bf16):
    rt = resolve("cpu")
    assert (rt.amp_dtype, rt.channels_last, rt.compile) == (None, False, False)
    assert resolve("cpu", Accel(amp="bf16")).amp_dtype is torch.bfloat16  # asked for: kept


def test_synthesis_and_recovery_run_under_cpu_bf16_and_leave_the_teacher_as_it_was():
    torch.manual_seed(0)
    teacher = calibrated(tiny_bn_net())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    accel = Accel(amp="bf16", channels_last=True)
    data = synthesize(
        teacher, 8, iterations=3, batch_size=4, image_size=8, accel=accel, progress=False
    )
    assert data.images.dtype == torch.float32 and torch.isfinite(data.images).all()
    assert all(torch.isfinite(torch.tensor(st["loss"])) for st in data.meta["stats"])
    student = recover(teacher, prune(teacher, 0.5), data, epochs=1, accel=accel, progress=False)
    assert all(p.dtype == torch.float32 for p in student.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(v.is_contiguous() for v in after.values())  # memory format restored
