"""The budget of channel pruning: which fraction of every group's channels meets a MAC goal."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["amount_for"]


def amount_for(macs_at: Callable[[float], int], full: int, goal: float) -> float:
    """The smallest amount (to 1/256) whose pruned model has at most ``goal`` MACs.

    Args:
        macs_at: the MACs of the model with ``amount`` of every group's channels removed.
        full: the unpruned model's MACs (for the message).
        goal: the MACs to reach.

    Raises:
        ValueError: even the largest amount (255/256) leaves more than ``goal``.

    Example:
        >>> round(amount_for(lambda a: round(100 * (1 - a)), 100, 50.0), 2)
        0.5
    """
    lo, hi = 0.0, 255 / 256
    least = macs_at(hi)
    if least > goal:
        raise ValueError(
            f"cannot reach {goal:,.0f} MACs (the model has {full:,}): even pruning every group "
            f"to one channel leaves {least:,}. Protect fewer layers or ask for less"
        )
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_at(mid) <= goal else (mid, hi)
    return hi
