"""Devices, fast paths, process groups and seeds: where and how a stage runs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch._dynamo  # eager: imported after a gloo group exists, it pins it (docs/distributed.md)
import torch.distributed as dist
from torch import nn
from torch.nn.parameter import is_lazy

from recoverprune.core.threads import current, machine

__all__ = ["Accel", "Runtime", "cpu_has_native_bf16", "dist_info", "generator", "resolve",
    "seed_int"]


AmpMode = Literal["auto", "bf16", "fp16", "off"]


@dataclass(frozen=True)
class Accel:
    """Switches for the GPU fast paths. ``None`` means "automatic".

    Automatic: on CUDA, bf16 autocast (fp16 without bf16), ``channels_last`` and
    ``torch.compile``; on a CPU with native bf16 (AMX, AVX512-BF16) bf16 autocast and
    ``channels_last``; on any other CPU plain float32.

    Example:
        >>> from recoverprune import Accel
        >>> Accel(compile=False).compile
        False
    """

    amp: AmpMode = "auto"
    channels_last: bool | None = None
    compile: bool | None = None

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one job."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes reports and shows progress."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast context for the forward pass (a no-op when AMP is off)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device in the chosen memory format."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` (in place) to the device and memory format (a model with lazy
        parameters still to be shaped keeps its format)."""
        model.to(self.device)
        if self.channels_last and not any(is_lazy(p) for p in model.parameters()):
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def maybe_compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``torch.compile`` ``fn`` when compilation is on, else return it unchanged."""
        return torch.compile(fn) if self.compile else fn

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for manifests and reports."""
        return {
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "world_size": self.world_size,
            "torch": str(torch.__version__),
            "threads": asdict(current()),
            "machine": machine(),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on; ``ValueError`` (shown without a traceback) for one this
    machine does not have or torch does not know, naming the devices it has."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    here = f"(this machine has: {_devices()})"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"unknown device {device!r}: pass cpu, cuda or cuda:N, or leave it unset to "
            f"choose automatically {here}"
        ) from exc
    if dev.type == "cpu":
        return dev
    if dev.type not in ("cuda", "mps", "xpu"):
        raise ValueError(
            f"device {device!r} is not one recoverprune runs on: pass cpu, cuda or cuda:N, "
            f"or leave it unset to choose automatically {here}"
        )
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(
            f"device {device!r} requested but torch finds no {dev.type.upper()} device here; "
            f"pass --device cpu (device='cpu'), or leave it unset to choose automatically {here}"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"device {device!r} requested but there are {count} {dev.type} device(s); pass an "
            f"index below {count}, or leave it unset to choose automatically {here}"
        )
    return dev


def _devices() -> str:
    """The devices torch can use here, for a message."""
    found = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            count = getattr(backend, "device_count", lambda: 1)()
            found += [f"{kind}:{i}" for i in range(count)]
    return ", ".join(found)


def resolve(device: str | torch.device | None = None, accel: Accel | None = None) -> Runtime:
    """Decide the execution settings for ``device`` and the ``accel`` switches.

    Raises:
        ValueError: ``device`` is unknown to torch or absent from this machine (the
            message lists the devices it has).

    Example:
        >>> resolve("cpu").amp_dtype is (torch.bfloat16 if cpu_has_native_bf16() else None)
        True
        >>> resolve("cpu", Accel(amp="off")).amp_dtype is None
        True
        >>> resolve("gpu")
        Traceback (most recent call last):
        ...
        ValueError: unknown device 'gpu': pass cpu, cuda or cuda:N, or leave it unset to choose automatically (this machine has: cpu...)
    """
    accel = accel or Accel()
    dev = _resolve_device(device)
    cuda = dev.type == "cuda"
    cpu_bf16 = dev.type == "cpu" and cpu_has_native_bf16()
    amp = accel.amp
    if amp == "auto":  # bf16 on CUDA (fp16 without bf16) and on a bf16 CPU, else float32
        bf16 = cpu_bf16 or (cuda and torch.cuda.is_bf16_supported())
        amp = "off" if not (cuda or cpu_bf16) else "bf16" if bf16 else "fp16"
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    fast = cuda or (cpu_bf16 and amp_dtype is not None)
    channels_last = fast if accel.channels_last is None else accel.channels_last
    compile_ = cuda if accel.compile is None else accel.compile
    rank, world = dist_info()
    return Runtime(dev, amp_dtype, channels_last, compile_, rank, world)


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (Intel AMX or AVX512-BF16).

    There bf16 autocast took a ResNet-20 DeepInversion step (batch 256, one thread) from
    784 to 390 ms (Xeon with AMX); elsewhere bf16 is emulated, so float32 stays.

    Example:
        >>> isinstance(cpu_has_native_bf16(), bool)
        True
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def seed_int(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (never on rank or order)."""
    h = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *keys)``."""
    return torch.Generator().manual_seed(seed_int(seed, *keys))
