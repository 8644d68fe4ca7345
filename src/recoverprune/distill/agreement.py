"""How closely a student follows its teacher: top-1 agreement and KL on held-out images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recoverprune.core.runtime import Runtime
from recoverprune.distill.source import Batched

__all__ = ["agreement"]


@torch.no_grad()
def agreement_and_kl(
    teacher: nn.Module,
    student: nn.Module,
    data: Batched,
    rt: Runtime,
    batch_size: int = 512,
) -> dict[str, float]:
    """Teacher–student top-1 agreement (%) and mean ``KL(teacher ‖ student)`` on ``data``.

    Both models are used as they are (call it in eval mode), on ``rt``'s device.
    """
    agree, kl = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, _ = data.get_batch(torch.arange(start, min(start + batch_size, len(data))))
        x = rt.prepare_input(x)
        with rt.autocast():
            t, s = teacher(x).float(), student(x).float()
        agree += int((t.argmax(1) == s.argmax(1)).sum())
        kl += float(F.kl_div(s.log_softmax(1), t.log_softmax(1), reduction="sum", log_target=True))
    n = max(len(data), 1)
    return {"images": len(data), "agreement": 100.0 * agree / n, "kl": round(kl / n, 6) + 0.0}


def agreement(teacher: nn.Module, student: nn.Module, data: Batched, rt: Runtime) -> float:
    return agreement_and_kl(teacher, student, data, rt)["agreement"]
