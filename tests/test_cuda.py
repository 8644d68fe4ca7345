"""CUDA fast paths (bf16 autocast, channels_last, torch.compile). Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recoverprune import Accel, DistillConfig, evaluate, prune, recover, synthesize
from recoverprune.core.runtime import resolve

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _teacher() -> nn.Module:
    from recoverprune.models import resnet20

    torch.manual_seed(0)
    net = resnet20()
    with torch.no_grad():
        net.train()
        net(torch.randn(64, 3, 32, 32))
    return net.eval()


def test_auto_runtime_picks_fast_path():
    rt = resolve("cuda")
    assert rt.amp_dtype in (torch.bfloat16, torch.float16)
    assert rt.channels_last and rt.compile
    off = resolve("cuda", Accel(amp="off", channels_last=False, compile=False))
    assert off.amp_dtype is None and not off.channels_last and not off.compile


@pytest.mark.parametrize(
    "accel", [Accel(amp="off", compile=False, channels_last=False), Accel(compile=False), Accel()]
)
def test_synthesis_fast_path_matches_fp32_quality(accel):
    teacher = _teacher()
    ref = synthesize(
        teacher,
        32,
        batch_size=32,
        iterations=30,
        device="cuda",
        progress=False,
        accel=Accel(amp="off", compile=False, channels_last=False),
    )
    ds = synthesize(
        teacher, 32, batch_size=32, iterations=30, device="cuda", progress=False, accel=accel
    )
    s, r = ds.meta["stats"][0], ref.meta["stats"][0]
    assert torch.isfinite(ds.images).all()
    assert s["bn_loss_final"] < s["bn_loss_first"]
    assert s["bn_loss_final"] < 1.5 * r["bn_loss_final"] + 1.0
    assert next(teacher.parameters()).device.type == "cpu"  # teacher moved back


def test_recovery_fast_path_keeps_masks():
    teacher = _teacher()
    data = synthesize(teacher, 64, batch_size=32, iterations=5, device="cuda", progress=False)
    student = prune(teacher, 0.75)
    masks = {n: b.clone() for n, b in student.named_buffers() if n.endswith("_mask")}
    recover(
        teacher,
        student,
        data,
        config=DistillConfig(epochs=2, batch_size=32),
        device="cuda",
        progress=False,
    )
    for n, b in student.named_buffers():
        if n.endswith("_mask"):
            assert torch.equal(b.cpu(), masks[n])
    for m in student.modules():
        if hasattr(m, "weight_mask"):
            assert torch.all(m.weight[m.weight_mask == 0] == 0)


def test_evaluate_on_cuda_restores_device():
    model = _teacher()
    data = synthesize(model, 16, batch_size=16, iterations=2, device="cpu", progress=False)
    res = evaluate(model, data, device="cuda", progress=False)
    assert 0 <= res.top1 <= 100
    assert next(model.parameters()).device.type == "cpu"
