"""CPU threads: the library leaves them alone; the command's policy keeps what the user set,
otherwise takes the CPUs idle now.

The machine is simulated: ``FakeCpus`` stands in for ``/proc/stat``, the clock, the sleep
of the start-up sample and this process's CPU time, so nothing here waits or depends on
what else runs on the test machine (except the one smoke test of the real ``/proc/stat``).
"""

from __future__ import annotations

import argparse
import sys
import time

import pytest
import torch

from _nets import calibrated, random_synthetic, tiny_bn_net
from recoverprune import DistillConfig, Preset, compress, evaluate, prune, recover, synthesize
from recoverprune.cli.main import _run
from recoverprune.core import progress as _progress
from recoverprune.core import threads as _runtime
from recoverprune.core.progress import on_advance, progress
from recoverprune.core.runtime import resolve
from recoverprune.core.threads import current, revisit, set_threads, threads


class FakeCpus:
    """Two CPUs: ``others`` of them kept busy by other processes, ``mine`` by this one."""

    def __init__(self, others: float = 0.0, mine: float = 0.0, cpus: int = 2) -> None:
        self.cpus, self.others, self.mine = cpus, others, mine
        self.t, self.busy, self.total, self.own = 1000.0, 0.0, 0.0, 0.0
        self.sleeps: list[float] = []

    def run(self, seconds: float) -> None:
        """Let ``seconds`` pass with the current ``others`` and ``mine`` (100 jiffies/s)."""
        self.total += self.cpus * 100 * seconds
        self.busy += min(self.cpus, self.others + self.mine) * 100 * seconds
        self.own += self.mine * seconds
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.run(seconds)

    def snapshot(self) -> _runtime._Sample:
        return _runtime._Sample(self.t, round(self.busy), round(self.total), self.cpus, self.own)


@pytest.fixture()
def fake(monkeypatch):
    """No choice made yet, no OMP_NUM_THREADS, torch's default 2 threads on 2 CPUs."""
    cpus = FakeCpus()
    monkeypatch.setattr(_runtime, "_chosen", None)
    monkeypatch.setattr(_runtime, "_mark", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_runtime, "_TORCH_DEFAULT", 2)
    monkeypatch.setattr(_runtime, "available_cpus", lambda: 2)
    monkeypatch.setattr(_runtime, "_snapshot", cpus.snapshot)
    monkeypatch.setattr(_runtime, "_clock", lambda: cpus.t)
    monkeypatch.setattr(_runtime, "_sleep", cpus.sleep)
    monkeypatch.setattr(_runtime, "_load", lambda: 0.0)
    torch.set_num_threads(2)  # the conftest fixture restores its own value afterwards
    yield cpus
    monkeypatch.setattr(_runtime, "_chosen", None)
    monkeypatch.setattr(_runtime, "_mark", None)


def _load(monkeypatch, value: float) -> None:
    monkeypatch.setattr(_runtime, "_load", lambda: value)


def test_idle_now_after_a_burst_takes_both_cpus(fake, monkeypatch):
    _load(monkeypatch, 1.9)  # a 50-s burst of two jobs has just ended: the load lags
    chosen = threads()
    assert (chosen.intra, chosen.source, chosen.available, chosen.busy) == (2, "auto", 2, 0.0)
    assert torch.get_num_threads() == 2
    assert fake.sleeps == [_runtime.SAMPLE_S] and _runtime.SAMPLE_S <= 0.5
    assert "2 CPUs available, 0.0 busy elsewhere (sampled 0.3 s)" in chosen.line()
    assert "set --threads or OMP_NUM_THREADS" in chosen.line()


def test_one_busy_neighbour_leaves_one_cpu(fake, monkeypatch):
    fake.others = 1.0
    _load(monkeypatch, 0.1)  # the neighbour has just started: the load has not caught up
    chosen = threads()
    assert (chosen.intra, chosen.busy) == (1, 1.0) and torch.get_num_threads() == 1
    assert "1.0 busy elsewhere" in chosen.line()


def test_own_busy_threads_do_not_count(fake, monkeypatch):
    fake.mine = 1.0  # say a thread of this process works through the start-up sample
    assert threads().intra == 2
    fake.mine, fake.others = 2.0, 0.0  # both CPUs busy, all of it this process's own work
    _load(monkeypatch, 2.0)
    fake.run(12)
    assert revisit() is None and torch.get_num_threads() == 2


def test_revisit_steps_up_when_the_neighbour_ends(fake, capsys):
    fake.others = 1.0
    assert threads().intra == 1
    fake.mine, fake.others = 1.0, 1.0
    fake.run(12)
    assert revisit() is None  # the neighbour is still there
    fake.others = 0.0  # it ends
    fake.run(4)
    assert revisit() is None  # at most one look in REVISIT_EVERY_S
    fake.run(8)
    new = revisit()
    assert new is not None and (new.intra, new.source, new.busy) == (2, "auto", 0.0)
    assert torch.get_num_threads() == 2 and threads() is new
    assert len(fake.sleeps) == 1  # only the start-up sample slept
    err = capsys.readouterr().err
    assert "threads: 1 -> 2 (2 CPUs available, 0.0 busy elsewhere (sampled 12.0 s)" in err


def test_revisit_steps_down_when_a_neighbour_appears(fake, capsys):
    assert threads().intra == 2
    fake.mine, fake.others = 1.33, 0.67  # a neighbour's fair share beside our 2 threads
    fake.run(12)
    new = revisit(verbose=False)
    assert new is not None and new.intra == 1 and torch.get_num_threads() == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("start", [0.0, 1.0])
def test_revisit_does_not_flap_on_a_neighbour_working_on_and_off(fake, start):
    fake.others = start
    first = threads().intra
    fake.mine, fake.others = first, 0.35  # neither clearly busy nor clearly idle
    for _ in range(3):
        fake.run(12)
        assert revisit() is None
    assert torch.get_num_threads() == first


def _user_sets_threads(how: str, monkeypatch) -> int:
    if how == "--threads":
        return set_threads(1).intra
    if how == "--threads after":
        threads()  # the automatic choice, then the user's own number
        return set_threads(1).intra
    if how == "OMP_NUM_THREADS":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        return threads().intra
    if how == "torch before":
        torch.set_num_threads(1)
        return threads().intra
    threads()  # the automatic choice, then the user's own number
    torch.set_num_threads(1)
    return 1


@pytest.mark.parametrize(
    ("how", "source"),
    [
        ("--threads", "--threads"),
        ("--threads after", "--threads"),
        ("OMP_NUM_THREADS", "OMP_NUM_THREADS"),
        ("torch before", "torch.set_num_threads"),
        ("torch after", "torch.set_num_threads"),
    ],
)
def test_a_number_the_user_set_is_never_revisited(fake, monkeypatch, how, source):
    n = _user_sets_threads(how, monkeypatch)
    for others in (0.0, 1.0, 0.0):
        fake.others, fake.mine = others, n
        fake.run(12)
        assert revisit() is None and torch.get_num_threads() == n
    assert threads().source == source


def test_without_proc_stat_the_load_average_decides_once(fake, monkeypatch):
    monkeypatch.setattr(_runtime, "_snapshot", lambda: None)
    _load(monkeypatch, 1.0)
    chosen = threads()
    assert (chosen.intra, chosen.busy, chosen.load) == (1, None, 1.0)
    assert "2 CPUs available, load 1.0;" in chosen.line()
    _load(monkeypatch, 0.0)
    fake.run(12)
    assert revisit() is None and torch.get_num_threads() == 1


def test_omp_num_threads_is_respected(fake, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    fake.others = 1.0
    assert (threads().intra, threads().source) == (2, "OMP_NUM_THREADS")
    assert torch.get_num_threads() == 2 and fake.sleeps == []  # no sample needed


def test_torch_set_num_threads_is_respected_before_and_after_the_choice(fake):
    torch.set_num_threads(1)
    assert (threads().intra, threads().source) == (1, "torch.set_num_threads")
    torch.set_num_threads(2)  # changed again after recoverprune chose: still the user's
    assert (threads().intra, threads().source) == (2, "torch.set_num_threads")


def test_set_threads_overrides_and_is_recorded(fake):
    assert set_threads(2).source == "--threads"
    desc = resolve("cpu").describe()
    assert desc["threads"]["intra"] == 2 and desc["threads"]["source"] == "--threads"
    assert {"platform", "cpu", "cpus_available", "torch"} <= set(desc["machine"])
    with pytest.raises(ValueError, match=">= 1"):
        set_threads(0)


def test_cgroup_quota_caps_available_cpus(monkeypatch):
    monkeypatch.setattr(_runtime, "_cgroup_cpu_limit", lambda: 0.5)
    assert _runtime.available_cpus() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_the_real_proc_stat_gives_a_sample():
    start = _runtime._snapshot()
    sum(range(300_000))  # a little own work, never counted as someone else's
    torch.randn(64, 64).sum()
    time.sleep(0.05)
    end = _runtime._snapshot()
    assert start is not None and end is not None and end.cpus == len(_runtime._affinity())
    busy = _runtime._busy_elsewhere(start, end)
    assert busy is None or 0.0 <= busy <= end.cpus


_set_num_threads = torch.set_num_threads  # the real one, while the guard below is in place


@pytest.fixture()
def guarded(fake, monkeypatch):
    """Every attempt to set torch's threads or to sample the CPUs, recorded (and not done)."""
    calls: list[str] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(f"set_num_threads({n})"))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: calls.append(f"interop({n})"))
    monkeypatch.setattr(_runtime, "_snapshot", lambda: calls.append("sample") or fake.snapshot())
    fake.others = 1.0  # a busy neighbour: the policy would pick 1 of the 2 threads
    return calls


def _library_calls(tmp_path) -> None:
    teacher = calibrated(tiny_bn_net(), passes=1)
    teacher.pretrained_cfg = {"input_size": (3, 8, 8)}
    data = random_synthetic(16)
    evaluate(teacher, data, progress=False)
    evaluate(teacher, data, amp=True, progress=False)
    student = prune(teacher, 0.5)
    synthetic = synthesize(teacher, 8, batch_size=4, iterations=2, progress=False)
    config = DistillConfig(epochs=1, batch_size=4)
    recover(teacher, student, synthetic, config=config, progress=False)
    tiny = Preset(n=8, iterations=2, batch_size=4, epochs=1, check_n=4)
    compress(teacher, 0.5, out_dir=tmp_path / "c", preset=tiny, progress=False)


@pytest.mark.parametrize("start", [1, 2])  # the user's own number; torch's default
def test_library_calls_leave_the_threads_as_they_were(guarded, tmp_path, start):
    _set_num_threads(start)
    _library_calls(tmp_path)
    assert guarded == [] and torch.get_num_threads() == start


def test_the_guard_sees_a_call_that_sets_threads(guarded):
    set_threads(1)
    threads()
    assert guarded == ["set_num_threads(1)", "interop(1)"]
    _runtime._chosen = None
    threads()  # the automatic choice samples and sets
    assert guarded[2:] == ["sample", "sample", "set_num_threads(1)", "interop(1)"]


def test_current_reads_without_sampling_or_setting(guarded):
    now = current()
    assert (now.intra, now.source, now.busy) == (2, "torch default", None)
    _set_num_threads(1)
    assert current().source == "torch.set_num_threads" and guarded == []


def test_the_command_looks_again_at_every_progress_step(fake):
    fake.others = 1.0
    assert threads().intra == 1
    fake.mine, fake.others = 1.0, 0.0  # the neighbour ends
    fake.run(12)

    def work(args: argparse.Namespace) -> int:
        with progress("Work", 1, enabled=False) as bar:
            bar.advance(1)
        return 0

    args = argparse.Namespace(threads=None, quiet=True, command="synthesize", func=work)
    assert _run(args) == 0 and torch.get_num_threads() == 2
    assert _progress._hook is None  # hooked for the command only


def test_a_progress_hook_lasts_as_long_as_its_block():
    seen: list[int] = []
    with on_advance(lambda: seen.append(1)), progress("Work", 2, enabled=False) as bar:
        bar.advance(1)
    bar.advance(1)
    assert seen == [1]
