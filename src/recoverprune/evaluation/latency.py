"""Latency measured in the runtime a user deploys to (onnxruntime on the CPU): models side by
side, interleaved, so that a load on the machine slows all of them alike."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recoverprune.pruning.export import export
from recoverprune.pruning.masks import finalize

__all__ = ["cpu_features", "ort_latency", "ort_options", "side_by_side"]

#: the CPU features onnxruntime's kernels choose between (x86 and Arm), as /proc/cpuinfo names them
_FEATURES = (
    *("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16"),
    *("amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve"),
)


def cpu_features(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> list[str]:
    """The SIMD features of this CPU that matter to INT8 and fp32 kernels (empty where
    ``cpuinfo`` cannot be read).

    Example:
        >>> set(cpu_features()) <= set(_FEATURES)
        True
    """
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return []
    line = next((x for x in lines if x.startswith(("flags", "Features"))), ":")
    present = set(line.split(":", 1)[1].split())
    return [f for f in _FEATURES if f in present]


def side_by_side(
    runners: Mapping[str, Callable[[], Any]],
    *,
    min_seconds: float,
    min_rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of every call of each runner: one warm-up call each, then rounds that call
    every runner once, in alternating order, until ``min_rounds`` are done and
    ``min_seconds`` have passed.

    Example:
        >>> times = side_by_side({"a": lambda: None, "b": lambda: None}, min_seconds=0)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 3)
    """
    for run in runners.values():
        run()  # warm-up: first-call allocations and kernel choices
    times: dict[str, list[float]] = {name: [] for name in runners}
    start, rounds = clock(), 0
    while rounds < min_rounds or clock() - start < min_seconds:
        order = list(runners) if rounds % 2 == 0 else list(reversed(runners))
        for name in order:
            t0 = clock()
            runners[name]()
            times[name].append(clock() - t0)
        rounds += 1
    return times


def ort_options(threads: int) -> Any:
    """onnxruntime session options for timing side by side: ``threads`` intra-op threads,
    one inter-op, and with more than one thread no spin-waiting, so that the idle pool of
    the session just measured does not hold the cores the next one needs.

    Example:
        >>> ort_options(2).intra_op_num_threads
        2
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def ort_latency(
    models: Mapping[str, nn.Module | str | os.PathLike[str]],
    shape: Sequence[int],
    *,
    batches: Sequence[int] = (1, 64),
    threads: int = 1,
    min_seconds: float = 1.0,
) -> dict[str, Any]:
    """Median milliseconds per call of each model in onnxruntime (CPU), at each batch size,
    the models measured side by side (:func:`side_by_side`, ``min_seconds`` per batch size).

    Args:
        models: name -> a module (masks baked in, exported to fp32 ONNX in a temporary
            directory) or the path of an ``.onnx`` file (e.g. an INT8 one).
        shape: one input's ``(C, H, W)``.
        batches: the batch sizes measured.
        threads: onnxruntime's intra-op threads (inter-op: 1).
        min_seconds: time spent measuring each batch size, at least 3 rounds.

    Returns:
        ``{"runtime", "threads", "cpu_features", "load_average", "batches": {"1": {name: ms},
        ...}}``, ``load_average`` the 1-minute load before and after (other work on the
        machine slows every model, and the ratios less than the times).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)).eval()
        >>> r = ort_latency({"a": net, "b": net}, (3, 8, 8), batches=(1,), min_seconds=0)
        >>> sorted(r["batches"]["1"]), r["threads"]
        (['a', 'b'], 1)
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            'latency in onnxruntime needs pip install "recoverprune[export]"'
        ) from exc
    options = ort_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {
            name: ort.InferenceSession(
                _onnx_file(model, shape, Path(tmp) / f"{i}.onnx"),
                options,
                providers=["CPUExecutionProvider"],
            )
            for i, (name, model) in enumerate(models.items())
        }
    generator = torch.Generator().manual_seed(0)
    load = [_load_average()]
    results = {}
    for batch in batches:
        x = torch.randn(batch, *shape, generator=generator).numpy()
        runners = {
            name: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
            for name, s in sessions.items()
        }
        times = side_by_side(runners, min_seconds=min_seconds)
        results[str(batch)] = {k: round(1e3 * statistics.median(v), 4) for k, v in times.items()}
    load.append(_load_average())
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "threads": threads,
        "cpu_features": cpu_features(),
        "load_average": load,
        "batches": results,
    }


def _load_average() -> float | None:
    """The machine's 1-minute load average (``None`` where the OS does not tell)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _onnx_file(model: nn.Module | str | os.PathLike[str], shape: Sequence[int], path: Path) -> str:
    """``model`` as an fp32 ONNX file at ``path`` (on the CPU, masks baked in); a path as given."""
    if not isinstance(model, nn.Module):
        return str(model)
    plain = finalize(model).cpu().float()
    return export(plain, str(path), example=torch.zeros(1, *shape))
