"""Memory checked on every path (issue 38, cause 4).

Before the fix ``compress --image-size 4096`` with the bundled teacher had no size or memory
check and died in an allocation traceback, and the stream did not clamp ``--kd-batch-size
100000`` to its pool as a fixed set's batches are; these tests failed on that code. The
subprocesses run under an address-space limit, so that a regression fails instead of
swapping the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch
from torch import nn

from recoverprune.core import resources
from recoverprune.core.resources import check_batch_memory
from recoverprune.core.runtime import resolve
from recoverprune.core.spec import InputSpec
from recoverprune.experimental.generator import GeneratorConfig
from recoverprune.experimental.stream import StreamConfig, SyntheticStream

TINY = [sys.executable, "-m", "recoverprune", "compress", "--preset", "tiny", "--quiet"]
TINY += ["--threads", "1"]


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def _compress(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [*TINY, *args]
    return subprocess.run(run, capture_output=True, text=True, env=env, preexec_fn=_limited)


def test_bundled_teacher_at_4096_is_refused_before_any_allocation(tmp_path):
    done = _compress("--image-size", "4096", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "a batch of 16 images of 3x4096x4096 needs about" in done.stderr
    assert "--image-size" in done.stderr and not (tmp_path / "out").exists()


def test_library_compress_checks_a_batch_too(tmp_path, monkeypatch):
    from recoverprune import compress

    monkeypatch.setattr(resources, "available_memory", lambda: 1000)  # a run that would fit
    with pytest.raises(ValueError, match=r"of 3x32x32 needs about .* 1\.0 kB are available"):
        compress(None, 0.5, out_dir=tmp_path, preset="tiny", progress=False)
    assert not list(tmp_path.iterdir())


def test_a_batch_that_cannot_fit_is_refused_and_one_that_can_passes():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    check_batch_memory(net, (3, 32, 32), 256)
    with pytest.raises(ValueError, match="a batch of 256 images of 3x65536x65536"):
        check_batch_memory(net, (3, 65536, 65536), 256)
    check_batch_memory(nn.Linear(12, 2), (3, 2, 2), 8)  # cannot take 3x2x2: not checked here


def test_stream_batches_are_clamped_to_the_pool():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten())
    net = nn.Sequential(*net, nn.LazyLinear(4)).eval()
    net(torch.zeros(1, 3, 8, 8))
    gen = GeneratorConfig(width=8, latent_dim=4, warmup_batches=1, warmup_steps=1)
    cfg = StreamConfig(batch_size=4, initial_batches=2, steps_per_epoch=3, generator=gen)
    stream = SyntheticStream(net, cfg, input=InputSpec.of(net, image_size=8))
    stream.start(net, resolve("cpu"), None)
    batches = stream.batches(0, 100_000, seed=0, rank=0, world_size=1)
    assert [len(b) for b in batches] == [len(stream)] * 3 == [8] * 3


@pytest.mark.slow
def test_stream_with_a_huge_kd_batch_runs_as_a_fixed_set_would(tmp_path):
    out = tmp_path / "out"
    args = ["--synthesis", "stream", "--kd-batch-size", "100000", "--out", str(out)]
    done = _compress(*args)
    assert done.returncode == 0, done.stderr
    assert (out / "student.pt").is_file()
