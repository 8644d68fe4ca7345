"""How long a compress run will roughly take, from one timed pass of the teacher: a
DeepInversion image-step costs about one forward + backward pass, a distillation step about
two (teacher forward, student forward + backward); the progress lines then measure.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from recoverprune.core.borrow import eval_mode
from recoverprune.core.runtime import resolve

__all__ = ["rough_seconds"]


#: Cost of one image-step relative to one forward + input-gradient pass of the teacher.
DI_FACTOR, KD_FACTOR = 1.2, 2.0


def _pass_seconds(teacher: nn.Module, x: torch.Tensor, sync: bool) -> float:
    x = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    out = teacher(x)
    torch.autograd.grad(out.float().sum(), x)  # leaves the teacher's .grad untouched
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def rough_seconds(
    teacher: nn.Module,
    shape: tuple[int, ...],
    *,
    n: int,
    iterations: int,
    epochs: int,
    batch_size: int,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Estimated seconds of ``{"DeepInversion": ..., "Recovery": ...}`` for these budgets,
    from one timed forward + input-gradient pass of ``teacher`` on up to 32 random inputs.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
        >>> est = rough_seconds(net, (3, 8, 8), n=64, iterations=10, epochs=2, batch_size=16)
        >>> sorted(est), est["Recovery"] > 0
        (['DeepInversion', 'Recovery'], True)
    """
    rt = resolve(device)
    where = next(teacher.parameters()).device
    with eval_mode(teacher):
        rt.prepare_model(teacher)
        try:
            b = max(2, min(batch_size, 32))
            x = rt.prepare_input(torch.randn(b, *shape))
            sync = rt.device.type == "cuda"
            _pass_seconds(teacher, x, sync)
            per_image = _pass_seconds(teacher, x, sync) / b
        finally:
            teacher.to(where)
    return {
        "DeepInversion": n * iterations * per_image * DI_FACTOR,
        "Recovery": epochs * n * per_image * KD_FACTOR,
    }
