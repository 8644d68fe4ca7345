"""compress(): stages persisted, resume after an interruption in each stage, report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import recoverprune.distill.objectives as distill_mod
import recoverprune.synthesis.inversion as inversion_mod
from _nets import calibrated, tiny_bn_net
from recoverprune import Preset, compress, sparsity
from recoverprune.core.io import fingerprint
from recoverprune.pipeline.report import sparse_size_bytes

TINY = Preset(n=16, iterations=3, batch_size=8, epochs=3, check_n=8)


def _teacher() -> nn.Module:
    net = calibrated(tiny_bn_net(), passes=1)
    net.pretrained_cfg = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return net


def _run(out, **kw):
    return compress(_teacher(), 0.5, out_dir=out, preset=TINY, progress=False, distill=None, **kw)


def test_compress_writes_every_stage_and_report(tmp_path):
    teacher = _teacher()
    before = fingerprint(teacher)
    res = compress(teacher, 0.5, out_dir=tmp_path, preset=TINY, progress=False)
    assert fingerprint(teacher) == before
    for name in (
        "pruned.pt",
        "synthetic/manifest.json",
        "recover/recover-checkpoint.pt",
        "student.pt",
        "report.json",
        "synthetic-grid.png",
    ):
        assert (tmp_path / name).exists(), name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert set(report["seconds"]) >= {"prune", "synthesize", "recover"}
    assert report["size_bytes"]["sparse"] < report["size_bytes"]["dense"]
    assert sparsity(res.student).overall == pytest.approx(0.5, abs=1e-3)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("stage", ["synthesis", "recovery"])
def test_killed_in_a_stage_then_rerun_gives_same_student(tmp_path, monkeypatch, stage):
    reference = _run(tmp_path / "ref").student.state_dict()

    calls = {"n": 0}
    if stage == "synthesis":
        real = inversion_mod.write_shard

        def dying(*a, **k):  # dies when writing the second shard
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Boom
            return real(*a, **k)

        monkeypatch.setattr(inversion_mod, "write_shard", dying)
    else:
        real_kd = distill_mod.kd_loss

        def dying_kd(*a, **k):  # dies in the middle of epoch 2
            calls["n"] += 1
            if calls["n"] == 3:
                raise _Boom
            return real_kd(*a, **k)

        monkeypatch.setattr(distill_mod, "kd_loss", dying_kd)
    with pytest.raises(_Boom):
        _run(tmp_path / "run")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "student.pt").exists()
    resumed = _run(tmp_path / "run").student.state_dict()
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_sparse_size_is_smaller_for_sparse_models():
    dense, sparse = sparse_size_bytes(nn.Linear(512, 512))
    assert sparse >= dense * 0.9  # nothing to gain on a dense model
    from recoverprune import prune

    d2, s2 = sparse_size_bytes(prune(nn.Linear(512, 512), 0.9))
    assert s2 < 0.3 * d2


def test_check_set_is_independent_and_its_signal_separates_good_from_useless(tmp_path):
    from recoverprune import SyntheticImages
    from recoverprune.pipeline.report import check_quality

    res = _run(tmp_path)
    train = SyntheticImages.load(tmp_path / "synthetic")
    check = SyntheticImages.load(tmp_path / "check")
    assert len(check) == TINY.check_n == res.report["check"]["images"]
    # seeded apart: no image of the check set is in the transfer set
    assert not any(torch.equal(c, t) for c in check.images for t in train.images)
    teacher = _teacher()
    same = check_quality(teacher, teacher, check)
    assert same["agreement"] == 100.0 and same["kl"] == 0.0
    useless = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    assert check_quality(teacher, useless, check)["kl"] > res.report["check"]["kl"]


@pytest.mark.slow
def test_compress_the_bundled_teacher_at_the_tiny_preset(tmp_path):
    """The examples of ``compress`` and ``CompressResult`` (a whole run, so not doctests)."""
    res = compress(None, 0.5, preset="tiny", out_dir=tmp_path, progress=False)
    assert round(res.report["sparsity"], 2) == 0.5
    assert sorted(res.report["seconds"]) == ["prune", "recover", "synthesize"]
