"""Issue 38, causes 2, 3 and 7: nothing read is trusted without a check.

A synthetic-set directory is checked (manifest schema, every shard, the teacher it was made
for); ``evaluate`` reports no accuracy for NaN outputs and names the layer that made them;
a student's impossible BatchNorm statistics are refused; a teacher holding weights far
outside their layer's distribution is refused unless ``--allow-outlier-weights``. Each
case failed on the code before (a traceback, or exit 0 with a wrong number).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from _nets import calibrated, tiny_bn_net
from recoverprune import SyntheticImages, evaluate, recover
from recoverprune.cli import main
from recoverprune.data.synthetic_io import MANIFEST, shard_name
from recoverprune.models import default_teacher, resnet20


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.fixture()
def r20(tmp_path: Path) -> Path:
    """A ResNet-20 checkpoint with BatchNorm statistics from random images."""
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": calibrated(resnet20(), passes=1, size=32).state_dict()}, path)
    return path


def _set(d: Path, num_classes: int = 10, teacher: str | None = None) -> Path:
    labels = torch.arange(8) % num_classes + (num_classes - 8 if num_classes > 8 else 0)
    meta = {"num_classes": num_classes, **({"teacher": teacher} if teacher else {})}
    return SyntheticImages(torch.randn(8, 3, 32, 32), labels, meta=meta).save(d)


def _recover_cli(r20: Path, synth: Path, out: Path, *extra: str) -> int:
    argv = ["recover", "--arch", "resnet20", "--teacher", str(r20), "--student", str(r20)]
    argv += ["--synthetic", str(synth), "--out", str(out), "--epochs", "1", "--no-progress"]
    return main([*argv, "--kd-batch-size", "4", *extra])


# ------------------------------------------------------------------ cause 2: synthetic sets
@pytest.mark.parametrize("manifest", [{}, [1, 2], {"batch_sizes": "8", "mean": [0], "std": [1]}])
def test_a_malformed_manifest_is_a_clear_error(tmp_path, r20, capsys, manifest):
    synth = _set(tmp_path / "s")
    (synth / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a synthetic-set manifest"):
        SyntheticImages.load(synth)
    assert _recover_cli(r20, synth, tmp_path / "rec") == 2
    assert "not a synthetic-set manifest" in _err(capsys)


@pytest.mark.parametrize("shard", [{"labels": torch.zeros(8, dtype=torch.long)}, "images"])
def test_a_shard_that_does_not_fit_its_manifest_is_a_clear_error(tmp_path, r20, capsys, shard):
    synth = _set(tmp_path / "s")
    if shard == "images":  # the right keys, the wrong shape
        shard = {"images": torch.zeros(8, 3, 16, 16), "labels": torch.zeros(8, dtype=torch.long)}
    torch.save(shard, synth / shard_name(0))
    with pytest.raises(Exception, match=shard_name(0)):
        SyntheticImages.load(synth)
    assert _recover_cli(r20, synth, tmp_path / "rec") == 2
    assert shard_name(0) in _err(capsys)


@pytest.mark.parametrize("extra", [(), ("--kd-ce-weight", "1")])
def test_a_set_of_another_class_count_is_refused(tmp_path, r20, capsys, extra):
    synth = _set(tmp_path / "s", num_classes=100, teacher="0123456789abcdef")
    assert _recover_cli(r20, synth, tmp_path / "rec", *extra) == 2
    err = _err(capsys)
    assert "100-class" in err and "0123456789abcdef" in err and "10 outputs" in err, err
    assert not (tmp_path / "rec" / "student.pt").exists()
    teacher = calibrated(resnet20(), passes=1, size=32)
    with pytest.raises(ValueError, match="100-class"):
        SyntheticImages.load(synth).check_for(teacher)
    with pytest.raises(ValueError, match="100-class"):
        recover(teacher, resnet20(), SyntheticImages.load(synth), epochs=1, progress=False)


def test_a_set_of_another_teacher_of_the_same_shape_is_named_in_a_warning(tmp_path):
    synth = _set(tmp_path / "s", teacher="0123456789abcdef")
    with pytest.warns(UserWarning, match="another teacher .*0123456789abcdef"):
        SyntheticImages.load(synth).check_for(resnet20())
    teacher = resnet20()
    from recoverprune.core.io import fingerprint

    ours = _set(tmp_path / "o", teacher=fingerprint(teacher))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SyntheticImages.load(ours).check_for(teacher)  # its own teacher: no warning


# ------------------------------------------------------------ cause 3: NaN outputs, students
def test_evaluate_refuses_nan_outputs_and_names_the_layer():
    net = calibrated(tiny_bn_net(4))
    with torch.no_grad():
        net[4].running_var.fill_(-1.0)
    data = (torch.randn(6, 3, 8, 8), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"NaN/Inf \(first made by 4 \(BatchNorm2d\)\)"):
        evaluate(net, data, progress=False)
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed
    assert evaluate(calibrated(tiny_bn_net(4)), data, progress=False).n == 6


def _cifar_tree(root: Path) -> Path:
    for c in range(10):
        (root / "test" / f"c{c}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (25 * c, 0, 0)).save(root / "test" / f"c{c}" / "0.png")
    return root


@pytest.mark.parametrize("var", [0.0, -1.0])
def test_cli_evaluate_gives_no_accuracy_for_broken_statistics(tmp_path, r20, capsys, var):
    state = torch.load(r20, weights_only=True)["state_dict"]
    for k in state:
        if k.endswith("running_var"):
            state[k].fill_(var)
    bad = tmp_path / "student.pt"
    torch.save({"state_dict": state}, bad)
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(bad), "--no-progress"]
    assert main([*argv, "--data", str(_cifar_tree(tmp_path / "d"))]) == 2
    captured = capsys.readouterr()
    assert "top-1" not in captured.out and "Traceback" not in captured.err
    assert ("running_var is negative" if var < 0 else "NaN/Inf (first made by") in captured.err


# ------------------------------------------------------------ cause 7: outlier weights
def test_sane_teachers_have_no_outlier_weights(shared_dir):
    import torchvision

    from recoverprune.core.validate import check_outliers
    from recoverprune.models import load_model

    check_outliers(default_teacher())
    for name in ("resnet20", "resnet32"):
        check_outliers(load_model(name, next((shared_dir / "teachers").glob(f"{name}-*.th"))))
    for name in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"):
        check_outliers(getattr(torchvision.models, name)(), name)


def test_a_bit_flipped_teacher_is_refused_unless_allowed(shared_dir, tmp_path, capsys):
    raw = torch.load(next((shared_dir / "teachers").glob("resnet20-*.th")), map_location="cpu")
    w = raw["state_dict"]["module.layer3.1.conv1.weight"].view(-1)
    bytes_ = w.view(torch.uint8)  # 64 bytes: 16 float32 weights rewritten to +-329
    bytes_[:64] = torch.tensor([329.0]).repeat(16).mul(w[:16].sign()).view(torch.uint8)
    assert float(w.abs().max()) == 329.0
    bad = tmp_path / "bitflip.th"
    torch.save(raw, bad)
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(bad), "--amount", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "p.pt")]) == 2
    err = _err(capsys)
    assert "layer3.1.conv1.weight has 16 value(s) up to 329" in err, err
    assert "--allow-outlier-weights" in err and not (tmp_path / "p.pt").exists()
    assert main([*argv, "--out", str(tmp_path / "p.pt"), "--allow-outlier-weights"]) == 0


def test_outlier_check_skips_zeros_and_small_tensors():
    from recoverprune.core.validate import check_outliers

    net = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
    with torch.no_grad():
        net[0].weight[:, :12] = 0.0  # a pruned layer: the median is of the kept weights
        net[1].weight[0] = 1e4  # 1-D: not a layer's weight distribution
    check_outliers(net)
