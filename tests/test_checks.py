"""Resume never returns a stale result; inputs are checked before compute; leftovers go."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from _nets import calibrated, tiny_bn_net
from recoverprune import (
    InputSpec,
    SyntheticImages,
    UnstructuredConfig,
    compress,
    prune,
    recover,
    sparsity,
)
from recoverprune.core.errors import explain
from recoverprune.core.files import clean_stale
from recoverprune.core.io import atomic_path, read_json, save_atomic
from recoverprune.core.stages import StageMismatch, run_stage


def _teacher(seed: int = 0, widths: tuple[int, int] = (8, 8)) -> torch.nn.Module:
    return calibrated(tiny_bn_net(widths=widths, seed=seed))


def _compress(out: Path, teacher: torch.nn.Module | None = None, **kw):
    amount, scope = kw.pop("amount", 0.75), kw.pop("scope", "global")
    teacher = teacher if teacher is not None else _teacher()
    return compress(
        teacher,
        UnstructuredConfig(amount, scope=scope),
        out_dir=out,
        preset="tiny",
        input=InputSpec.of(teacher, image_size=8),
        progress=False,
        **kw,
    )


def _data(n: int = 16) -> SyntheticImages:
    g = torch.Generator().manual_seed(0)
    return SyntheticImages(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


def test_compress_refuses_other_amount_and_overwrite_recomputes(tmp_path):
    _compress(tmp_path, amount=0.75)
    before = (tmp_path / "student.pt").read_bytes()
    with pytest.raises(StageMismatch, match=r"amount \(0\.75 there, 0\.5 now\).*--overwrite"):
        _compress(tmp_path, amount=0.5)
    assert (tmp_path / "student.pt").read_bytes() == before  # nothing half-replaced
    res = _compress(tmp_path, amount=0.5, overwrite=True)
    assert res.report["amount"] == 0.5
    assert round(res.report["sparsity"], 2) == 0.5
    assert round(sparsity(res.student).overall, 2) == 0.5
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".gitignore"]


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"scope": "layerwise"}, "scope"),
        ({"exclude": ("8",)}, "exclude"),
        ({"teacher": "other"}, "teacher"),
    ],
)
def test_compress_refuses_other_prune_settings(tmp_path, change, name):
    _compress(tmp_path)
    if change.get("teacher") == "other":
        change = {"teacher": _teacher(seed=1)}
    with pytest.raises(StageMismatch, match=name):
        _compress(tmp_path, **change)


def test_recover_refuses_a_different_student(tmp_path):
    teacher = _teacher()
    recover(teacher, prune(teacher, 0.5), _data(), epochs=1, out_dir=tmp_path, progress=False)
    with pytest.raises(StageMismatch, match="student"):
        recover(teacher, prune(teacher, 0.8), _data(), epochs=1, out_dir=tmp_path, progress=False)


def test_recover_refuses_a_different_architecture_by_name(tmp_path):
    teacher = _teacher()
    recover(teacher, prune(teacher, 0.5), _data(), epochs=1, out_dir=tmp_path, progress=False)
    other = prune(_teacher(widths=(8, 16)), 0.5)
    with pytest.raises(StageMismatch, match="student_arch"):
        recover(teacher, other, _data(), epochs=1, out_dir=tmp_path, progress=False)


def test_recover_refuses_different_synthetic_data(tmp_path):
    teacher = _teacher()
    recover(teacher, prune(teacher, 0.5), _data(), epochs=1, out_dir=tmp_path, progress=False)
    other = SyntheticImages(_data().images + 1, _data().labels)
    with pytest.raises(StageMismatch, match="synthetic"):
        recover(teacher, prune(teacher, 0.5), other, epochs=1, out_dir=tmp_path, progress=False)


def test_compress_checks_eval_data_before_compute(tmp_path, monkeypatch):
    import recoverprune.pipeline.compress as pipeline

    monkeypatch.setattr(pipeline, "synthesize", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(ValueError, match="not found"):
        _compress(tmp_path / "out", eval_data=tmp_path / "nope")
    assert not (tmp_path / "out" / "pruned.pt").exists()


def test_compress_refuses_a_teacher_with_nan_weights_by_name(tmp_path):
    teacher = _teacher()
    with torch.no_grad():
        teacher[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf values in 3\.weight"):
        _compress(tmp_path, teacher)
    assert not (tmp_path / "pruned.pt").exists()


def test_compress_checks_free_space_first(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1))
    with pytest.raises(OSError, match="needed") as info:
        _compress(tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert "no space left" in explain(info.value)


_KILLED_RUN = """
import os, signal, sys
import torch
sys.path.insert(0, {tests!r})
from _nets import calibrated, tiny_bn_net
from recoverprune import InputSpec, compress
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):  # write the temp file fully, then die before os.replace
    real(obj, f, *args, **kwargs)
    calls.append(f)
    if len(calls) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
teacher = calibrated(tiny_bn_net())
compress(teacher, 0.75, out_dir={out!r}, preset="tiny", progress=False,
         input=InputSpec.of(teacher, image_size=8))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 3, 5])  # pruned.pt, 2nd shard, 2nd recovery epoch
def test_kill_inside_atomic_write_then_rerun_leaves_no_temp(tmp_path, kill_at):
    import signal
    import subprocess
    import sys

    out = tmp_path / "killed"
    code = _KILLED_RUN.format(tests=str(Path(__file__).parent), kill_at=kill_at, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert [p for p in out.rglob(".*.tmp")]  # the killed write left its temp file
    resumed = _compress(out)
    assert not list(out.rglob(".*"))
    reference = _compress(tmp_path / "reference")
    for key, value in reference.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[key], value), key


def test_clean_stale_keeps_live_and_fresh_temps(tmp_path):
    mine = tmp_path / f".a.pt.{os.getpid()}.x.tmp"
    mine.write_text("live")
    dead = tmp_path / ".b.pt.999999999.y.tmp"
    dead.write_text("dead")
    fresh = tmp_path / ".c.pt.999999998.z.tmp"
    fresh.write_text("new")
    os.utime(dead, (0, 0))
    assert clean_stale(tmp_path, before=1e6) == [dead]
    assert mine.exists() and fresh.exists()


def test_atomic_write_failure_leaves_target_and_no_temp(tmp_path, monkeypatch):
    save_atomic({"a": torch.ones(1)}, tmp_path / "x.pt")
    old = (tmp_path / "x.pt").read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RuntimeError) as info:
        save_atomic({"a": torch.zeros(1)}, tmp_path / "x.pt")
    assert "disk is full" in explain(info.value)
    assert (tmp_path / "x.pt").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_read_json_names_a_corrupt_file(tmp_path):
    path = tmp_path / "timing.json"
    path.write_bytes(b"\xcf\x00garbage")
    with pytest.raises(ValueError, match=r"timing\.json is corrupt"):
        read_json(path)


def test_run_stage_reraises_without_overwrite_and_reruns_with_it(tmp_path):
    calls = []
    (tmp_path / "stage").mkdir()

    def stage():
        calls.append(1)
        if (tmp_path / "stage").exists():
            raise StageMismatch("differs")
        return "fresh"

    with pytest.raises(StageMismatch):
        run_stage(stage, [tmp_path / "stage"], overwrite=False)
    assert run_stage(stage, [tmp_path / "stage"], overwrite=True) == "fresh"
    assert not list(tmp_path.iterdir())


def test_atomic_path_names_carry_the_pid(tmp_path):
    with atomic_path(tmp_path / "f.txt") as tmp:
        assert f".f.txt.{os.getpid()}." in tmp.name
        tmp.write_text("x")


def test_recover_checks_its_out_dir_is_writable_before_training(tmp_path, monkeypatch):
    import tempfile

    import recoverprune.distill.objectives as distill

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".probe.1.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(distill, "kd_loss", lambda *a: pytest.fail("trained"))
    teacher = _teacher()
    with pytest.raises(OSError) as info:
        recover(teacher, prune(teacher, 0.5), _data(), epochs=1, out_dir=tmp_path, progress=False)
    assert f"cannot write {tmp_path} (Read-only file system)" in explain(info.value)
