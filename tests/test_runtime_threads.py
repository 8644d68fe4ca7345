"""The CPU thread policy: what the user set is kept, otherwise CPUs available less load."""

from __future__ import annotations

import pytest
import torch

from recoverprune.core import threads as _runtime
from recoverprune.core.runtime import resolve
from recoverprune.core.threads import set_threads, threads


@pytest.fixture()
def fresh(monkeypatch):
    """No choice made yet, no OMP_NUM_THREADS, torch's default 2 threads on 2 free CPUs."""
    monkeypatch.setattr(_runtime, "_chosen", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_runtime, "_TORCH_DEFAULT", 2)
    monkeypatch.setattr(_runtime, "available_cpus", lambda: 2)
    torch.set_num_threads(2)  # the conftest fixture restores its own value afterwards
    yield monkeypatch
    monkeypatch.setattr(_runtime, "_chosen", None)


@pytest.mark.parametrize(("load", "expected"), [(0.1, 2), (1.0, 1), (2.4, 1)])
def test_auto_takes_available_cpus_less_the_load(fresh, load, expected):
    fresh.setattr(_runtime, "_load", lambda: load)
    chosen = threads()
    assert (chosen.intra, chosen.source, chosen.available) == (expected, "auto", 2)
    assert torch.get_num_threads() == expected
    assert "set --threads or OMP_NUM_THREADS" in chosen.line()


def test_omp_num_threads_is_respected(fresh):
    fresh.setenv("OMP_NUM_THREADS", "2")
    fresh.setattr(_runtime, "_load", lambda: 1.0)
    assert (threads().intra, threads().source) == (2, "OMP_NUM_THREADS")
    assert torch.get_num_threads() == 2


def test_torch_set_num_threads_is_respected_before_and_after_the_choice(fresh):
    fresh.setattr(_runtime, "_load", lambda: 0.0)
    torch.set_num_threads(1)
    assert (threads().intra, threads().source) == (1, "torch.set_num_threads")
    torch.set_num_threads(2)  # changed again after recoverprune chose: still the user's
    assert (threads().intra, threads().source) == (2, "torch.set_num_threads")


def test_set_threads_overrides_and_is_recorded(fresh):
    fresh.setattr(_runtime, "_load", lambda: 1.0)
    assert set_threads(2).source == "--threads"
    desc = resolve("cpu").describe()
    assert desc["threads"]["intra"] == 2 and desc["threads"]["source"] == "--threads"
    assert {"platform", "cpu", "cpus_available", "torch"} <= set(desc["machine"])
    with pytest.raises(ValueError, match=">= 1"):
        set_threads(0)


def test_cgroup_quota_caps_available_cpus(monkeypatch):
    monkeypatch.setattr(_runtime, "_cgroup_cpu_limit", lambda: 0.5)
    assert _runtime.available_cpus() == 1
