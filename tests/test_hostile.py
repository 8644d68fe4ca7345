"""A hostile new user (issue 27): no silent wrong answer, no lost input.

Each case was reproduced on main before the fix: a labelled folder missing a class scored
1.33 % instead of 80 %, a checkpoint with flipped bytes loaded, ``--device cuda`` without
CUDA ended in a traceback, ``--mean nan`` blamed the learning rate. Every test of a fix here
failed on that code; the few positive controls (a complete folder, a symlink to a folder
outside the data root) passed there too.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from _labelnet import STEP, ColourReader
from _nets import calibrated, tiny_bn_net
from recoverprune import InputSpec, SyntheticImages, evaluate
from recoverprune.cli import main
from recoverprune.core.io import CheckpointError, load_checkpoint, save_atomic
from recoverprune.core.runtime import resolve
from recoverprune.data import DataError, load_split
from recoverprune.models import load_model, resnet20

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
READER = ["--arch", "module:_labelnet:colour_reader", "--image-size", "8"]
READER += ["--mean", "0", "--std", "1", "--no-progress"]


# --------------------------------------------------------------------------- helpers
def _tree(root: Path, names: list[str], per_class: int = 2, of: list[str] = CIFAR) -> Path:
    """``root/test/<name>/i.png`` whose red level encodes the name's index in ``of``."""
    for name in names:
        (root / "test" / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (STEP * of.index(name) if name in of else 255, i, 0)
            Image.new("RGB", (8, 8), colour).save(root / "test" / name / f"{i}.png")
    return root


def _reader() -> nn.Module:
    return InputSpec(3, 8, 0.0, 1.0).attach(ColourReader(10))


def _snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths``: inputs must come out byte for byte the same."""
    files = []
    for p in paths:
        files += [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.fixture()
def reader_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "reader.pt"
    torch.save({"state_dict": ColourReader(10).state_dict()}, path)
    return path


@pytest.fixture()
def r20_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = resnet20()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 32, 32))
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": model.eval().state_dict()}, path)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOVERPRUNE_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- 1. labels
def test_the_reader_scores_100_on_a_complete_folder(tmp_path):
    assert evaluate(_reader(), _tree(tmp_path / "d", CIFAR), progress=False).top1 == 100.0


def test_a_missing_class_folder_is_refused_before_decoding(tmp_path, monkeypatch):
    import recoverprune.data.folders as folders

    data = _tree(tmp_path / "d", [c for c in CIFAR if c != "bird"])
    monkeypatch.setattr(folders, "_decode", lambda *a: pytest.fail("decoded before the check"))
    with pytest.raises(DataError) as info:  # main scored 22 % here: labels shifted by one
        evaluate(_reader(), data, progress=False)
    msg = str(info.value)
    assert "9 class folders" in msg and "10 outputs" in msg and "airplane" in msg, msg
    assert "subset" in msg  # says how to read a deliberate subset


def test_cli_missing_class_exits_2_and_leaves_inputs_alone(tmp_path, reader_ckpt, capsys):
    data = _tree(tmp_path / "d", [c for c in CIFAR if c != "bird"])
    before = _snapshot(data, reader_ckpt)
    argv = ["evaluate", *READER, "--checkpoint", str(reader_ckpt), "--data", str(data)]
    assert main(argv) == 2
    err = _cli_error(capsys)
    assert "9 class folders" in err and "10 outputs" in err, err
    assert _snapshot(data, reader_ckpt) == before


def test_an_11th_class_folder_is_a_data_error_not_an_index_error(tmp_path, reader_ckpt, capsys):
    data = _tree(tmp_path / "d", [*CIFAR, "zebra"])
    argv = ["evaluate", *READER, "--checkpoint", str(reader_ckpt), "--data", str(data)]
    assert main(argv) == 2  # main: IndexError: Target 10 is out of bounds, with a traceback
    err = _cli_error(capsys)
    assert "11 class folders" in err and "10 outputs" in err, err


def test_a_symlink_loop_is_skipped_with_a_warning_not_counted(tmp_path):
    data = _tree(tmp_path / "d", CIFAR)
    (data / "test" / "again").symlink_to(".")  # test/again -> test
    (data / "test" / "bird2").symlink_to(data / "test" / "bird")  # a second view, inside
    with pytest.warns(UserWarning, match="not a class folder") as caught:
        res = evaluate(_reader(), data, progress=False)
    assert res.top1 == 100.0 and res.n == 20  # main: 12 classes, IndexError
    said = " ".join(str(w.message) for w in caught)
    assert "test/again" in said and "test/bird2" in said, said


def test_a_symlink_to_a_folder_outside_the_data_is_a_class(tmp_path):
    data = _tree(tmp_path / "d", [c for c in CIFAR if c != "truck"])
    elsewhere = _tree(tmp_path / "elsewhere", ["truck"])
    (data / "test" / "truck").symlink_to(elsewhere / "test" / "truck")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a legitimate link
        assert evaluate(_reader(), data, progress=False).top1 == 100.0


def test_recorded_class_names_label_folders_by_name(tmp_path):
    names = list(reversed(CIFAR))  # output 0 means "truck": folder order would be wrong
    model = _reader()
    model.pretrained_cfg["label_names"] = names
    data = _tree(tmp_path / "d", CIFAR, of=names)  # red level = index in the model's names
    assert evaluate(model, data, progress=False).top1 == 100.0
    (data / "test" / "dog").rename(data / "test" / "doggo")
    with pytest.raises(DataError, match="doggo"):
        evaluate(model, data, progress=False)


def test_a_deliberate_subset_maps_names_not_positions(tmp_path):
    data = _tree(tmp_path / "d", ["cat", "ship"])
    res = evaluate(_reader(), data, classes=CIFAR, subset=True, progress=False)
    assert res.top1 == 100.0 and res.n == 4
    ds = load_split(data, num_classes=10, classes=CIFAR, subset=True)
    assert ds.labels.tolist() == [3, 3, 8, 8] and ds.classes == CIFAR
    with pytest.raises(DataError, match="needs the model's class"):
        evaluate(_reader(), data, subset=True, progress=False)
    with pytest.raises(DataError, match="lacks the class folders"):
        evaluate(_reader(), data, classes=CIFAR, progress=False)  # a subset, not declared


def test_val_data_and_eval_data_are_checked_before_any_compute(tmp_path, monkeypatch):
    import recoverprune.distill.objectives as objectives
    import recoverprune.pipeline.compress as pipeline
    from recoverprune import compress, prune, recover

    data = _tree(tmp_path / "d", [c for c in CIFAR if c != "bird"])
    teacher = InputSpec(3, 8).attach(calibrated(tiny_bn_net(10)))
    synthetic = SyntheticImages(torch.randn(8, 3, 8, 8), torch.arange(8))
    monkeypatch.setattr(objectives, "kd_loss", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(pipeline, "synthesize", lambda *a, **k: pytest.fail("synthesised"))
    with pytest.raises(DataError, match="9 class folders"):  # main: val top-1 4.0
        recover(teacher, prune(teacher, 0.5), synthetic, epochs=1, val_data=data, progress=False)
    with pytest.raises(DataError, match="9 class folders"):
        compress(
            teacher, 0.5, preset="tiny", eval_data=data, out_dir=tmp_path / "o", progress=False
        )
    assert not (tmp_path / "o" / "pruned.pt").exists()


def test_datasets_whose_classes_are_not_the_models_are_refused():
    from recoverprune.data import ImageTensorDataset

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    four = ImageTensorDataset(images, torch.arange(4), list("abcd"), mean=(0,) * 3, std=(1,) * 3)
    three = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    with pytest.raises(DataError, match="4 classes"):
        evaluate(three, four, progress=False)
    with pytest.raises(DataError, match="labels range from 0 to 3"):  # main: IndexError
        evaluate(three, (torch.zeros(4, 3, 8, 8), torch.arange(4)), progress=False)


def test_cli_reads_a_deliberate_subset_by_name(tmp_path, reader_ckpt, capsys):
    data = _tree(tmp_path / "d", ["cat", "ship"])
    argv = ["evaluate", *READER, "--checkpoint", str(reader_ckpt), "--data", str(data)]
    assert main([*argv, "--classes", *CIFAR, "--subset"]) == 0
    assert "top-1 100.00 %" in capsys.readouterr().out


def test_class_names_saved_in_a_checkpoint_come_back(tmp_path):
    from recoverprune.evaluation.evaluate import model_classes

    path = tmp_path / "named.pt"
    torch.save({"state_dict": resnet20().state_dict(), "label_names": CIFAR}, path)
    assert model_classes(load_model("resnet20", path)) == CIFAR


# --------------------------------------------------------------------------- 2. checkpoints
def _flip_middle(path: Path, count: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + count] = bytes(b ^ 0xFF for b in raw[mid : mid + count])
    path.write_bytes(bytes(raw))


def _hub_named(tmp_path: Path, state: dict) -> Path:
    """A checkpoint named as torch.hub names them: ``name-<sha256 prefix>.th``."""
    tmp = tmp_path / "plain.th"
    torch.save({"state_dict": state}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(tmp_path / f"resnet20-{digest}.th")


def test_a_hub_named_checkpoint_is_checked_against_its_name(tmp_path, capsys):
    teacher = _hub_named(tmp_path, resnet20().state_dict())
    load_model("resnet20", teacher)  # intact: loads
    claimed = teacher.stem.split("-")[1]
    _flip_middle(teacher)  # main: loaded, pruned and written with exit 0
    actual = hashlib.sha256(teacher.read_bytes()).hexdigest()[:8]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(teacher)
    assert claimed in str(info.value) and actual in str(info.value)
    before = _snapshot(tmp_path)
    out = tmp_path / "pruned.pt"
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(teacher), "--amount", "0.5"]
    assert main([*argv, "--out", str(out)]) == 2
    err = _cli_error(capsys)
    assert f"starts with {claimed}" in err and f"starts with {actual}" in err, err
    assert _snapshot(tmp_path) == before and not out.exists()


def test_shared_teachers_are_the_files_their_names_claim(shared_dir):
    from recoverprune.core.io import name_hash, sha256_file
    from recoverprune.core.validate import check_plausible

    for path in sorted((shared_dir / "teachers").glob("*.th")):
        assert sha256_file(path).startswith(name_hash(path)), path
        check_plausible(load_model(path.name.split("-")[0], path), path.name)


def test_own_checkpoints_carry_a_digest_that_loading_verifies(tmp_path):
    marker = torch.arange(4096, dtype=torch.float32) * 0.001  # bytes we can find in the file
    path = tmp_path / "student.pt"
    save_atomic({"state_dict": {"w": marker}, "amount": 0.5}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], marker)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(marker.numpy().tobytes()[:64]) + 1024
    raw[at : at + 64] = bytes(b ^ 0xFF for b in raw[at : at + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the digest"):  # main: loaded
        load_checkpoint(path)
    old = tmp_path / "old.pt"  # written before digests (or elsewhere): loads as before
    torch.save({"state_dict": {"w": marker}}, old)
    assert torch.equal(load_checkpoint(old)["state_dict"]["w"], marker)


def test_hash_like_names_that_are_not_hashes(tmp_path):
    from recoverprune.core.io import name_hash

    assert name_hash("epoch-00000100.pt") is None  # a counter, not a hash
    own = tmp_path / "run-deadbeef.pt"  # written by us: its digest vouches for it
    save_atomic({"state_dict": {"w": torch.ones(3)}}, own)
    with pytest.warns(UserWarning, match="Rename it"):
        assert torch.equal(load_checkpoint(own)["state_dict"]["w"], torch.ones(3))


def test_implausible_weights_are_refused_by_name():
    from recoverprune.core.validate import check_plausible

    net = calibrated(tiny_bn_net(4))
    check_plausible(net)
    with torch.no_grad():
        net[1].running_var[0] = -0.5
        net[3].weight[0, 0, 0, 0] = 329e4
    with pytest.raises(ValueError) as info:
        check_plausible(net, "teacher")
    msg = str(info.value)
    assert "1.running_var" in msg and "3.weight" in msg and "teacher" in msg, msg


@pytest.mark.parametrize(
    "spec",
    [
        "torchvision:resnet18",
        "torchvision:mobilenet_v3_small",
        "torchvision:efficientnet_b0",
        "torchvision:vgg11_bn",
        "torchvision:convnext_tiny",
        "timm:resnet18",
        "timm:efficientnet_b0",
        "timm:vit_tiny_patch16_224",
        "resnet20",
    ],
)
def test_every_sane_model_is_plausible(spec):
    from recoverprune.core.validate import check_plausible
    from recoverprune.models.builders import build_model

    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    check_plausible(build_model(spec, 10), spec)


def test_cli_refuses_an_implausible_teacher(tmp_path, r20_ckpt, capsys):
    state = torch.load(r20_ckpt, weights_only=True)["state_dict"]
    state["bn1.running_var"][3] = -2.0
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, bad)
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(bad), "--amount", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "p.pt")]) == 2
    assert "bn1.running_var" in _cli_error(capsys)


# --------------------------------------------------------------------------- 3. sizes
def test_a_job_too_big_for_memory_or_disk_is_refused_up_front(tmp_path, monkeypatch):
    import recoverprune.core.resources as resources
    from recoverprune.core.errors import explain
    from recoverprune.core.resources import check_job_size

    with pytest.raises(ValueError, match=r"needs about .* of memory"):
        check_job_size(10**10, (3, 32, 32), 256, out_dir=tmp_path)
    monkeypatch.setattr(resources, "available_memory", lambda: 1 << 62)
    with pytest.raises(OSError) as info:
        check_job_size(10**10, (3, 32, 32), 256, out_dir=tmp_path / "new" / "dir")
    assert info.value.errno == errno.ENOSPC and "TB for its shards" in str(info.value)
    assert "no space left" in explain(info.value)
    check_job_size(64, (3, 32, 32), 32, out_dir=tmp_path)  # a normal job passes


def test_synthesize_checks_its_size_before_building_its_batch_plan(tmp_path, monkeypatch):
    import recoverprune.synthesis.plan as plan
    from recoverprune import synthesize

    monkeypatch.setattr(plan, "batch_sizes", lambda *a: pytest.fail("allocated first"))
    teacher = InputSpec(3, 8).attach(calibrated(tiny_bn_net(10)))
    with pytest.raises(ValueError, match="needs about"):  # main: grew to 16 GB
        synthesize(teacher, 10**10, out_dir=tmp_path / "s", progress=False)


def test_an_image_size_the_network_cannot_take_is_refused():
    from recoverprune.core.validate import check_image_size, probe

    net = resnet20().train()
    stats = net.bn1.running_mean.clone()
    with pytest.raises(ValueError, match="below a quarter of the 32x32"):
        check_image_size(net, (3, 7, 7), trained=(32, 32))
    assert check_image_size(net, (3, 8, 8), trained=(32, 32)) == (1, 10)
    assert net.training and torch.equal(net.bn1.running_mean, stats)  # probed in eval mode
    assert not any(m._forward_hooks for m in net.modules())  # its hooks are gone
    from recoverprune.models.builders import build_model

    vgg = build_model("torchvision:vgg11_bn", 10)
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(3, 16, 16\)"):
        probe(vgg, (3, 16, 16))


def test_evaluate_refuses_a_resize_far_below_the_models_size(tmp_path, r20_ckpt, capsys):
    data = _tree(tmp_path / "d", CIFAR, per_class=1)
    with pytest.raises(ValueError, match="below a quarter"):  # main: evaluated at 7 px
        r20 = load_model("resnet20", r20_ckpt)
        evaluate(r20, data, input=InputSpec.of(r20, image_size=7), progress=False)
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--data", str(data)]
    assert main([*argv, "--resize", "7", "--no-progress"]) == 2
    assert "below a quarter" in _cli_error(capsys)


def test_cli_synthesize_refuses_image_size_7_for_a_32px_model(
    tmp_path, r20_ckpt, monkeypatch, capsys
):
    import recoverprune.synthesis.inversion as inversion

    monkeypatch.setattr(inversion._Inverter, "run", lambda *a, **k: pytest.fail("inverted"))
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--n", "4"]
    assert main([*argv, "--image-size", "7", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "below a quarter" in _cli_error(capsys)


def test_non_finite_normalisation_is_refused(tmp_path, r20_ckpt, capsys):
    for bad in (dict(mean=math.nan, std=0.2), dict(mean=0.5, std=math.inf)):
        with pytest.raises(ValueError, match="must be finite"):
            InputSpec(channels=1, size=28, **bad)
    data = _tree(tmp_path / "d", CIFAR, per_class=1)
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--data", str(data)]
    for norm in (["--mean", "nan"], ["--mean", "nan", "--std", "0.2"]):
        assert main([*argv, *norm, "--no-progress"]) == 2  # main: "try a lower lr"
        assert "--mean: the value must be finite" in _cli_error(capsys)


# --------------------------------------------------------------------------- 4. devices
@pytest.mark.parametrize("device", ["cuda", "cuda:99", "gpu", "meta"])
def test_an_impossible_device_is_a_value_error(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="this machine has: cpu"):  # main: RuntimeError
        resolve(device)


def test_cli_device_cuda_without_cuda_exits_2(tmp_path, r20_ckpt, capsys):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    data = _tree(tmp_path / "d", CIFAR, per_class=1)
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--data", str(data)]
    assert main([*argv, "--device", device, "--no-progress"]) == 2
    err = _cli_error(capsys)
    assert "this machine has: cpu" in err and device in err, err


# --------------------------------------------------------------------------- 5. the check
def test_the_data_free_check_reports_a_spread_and_what_it_measures(capsys):
    from recoverprune.pipeline.report import check_quality, print_report, wilson_interval

    teacher = calibrated(tiny_bn_net(4))
    student = calibrated(tiny_bn_net(4, seed=1))
    check = SyntheticImages(torch.randn(64, 3, 8, 8), torch.zeros(64, dtype=torch.long))
    q = check_quality(teacher, student, check)
    agree = round(q["agreement"] * 64 / 100)
    assert (q["agreement_low"], q["agreement_high"]) == wilson_interval(agree, 64)
    assert q["agreement_low"] <= q["agreement"] <= q["agreement_high"] > q["agreement_low"]
    same = check_quality(teacher, teacher, check)  # 100 % on 64 images says: above 94.3 %
    assert (same["agreement"], same["agreement_low"], same["agreement_high"]) == (100, 94.3, 100)
    assert "not accuracy" in q["measures"]
    assert wilson_interval(951, 1000) == (93.6, 96.3)
    report = {"amount": 0.5, "scope": "global", "check": q, "sparsity": 0.5}
    print_report({**report, "size_bytes": {"dense": 1, "sparse": 1}, "seconds": {}})
    shown = " ".join(capsys.readouterr().err.split())  # the table goes to stderr, wrapped
    assert "not accuracy" in shown and "95 % CI" in shown, shown


# --------------------------------------------------------------------------- 6. paths
def test_outputs_that_resolve_to_an_input_are_refused(tmp_path):
    from recoverprune.core.paths import check_outputs

    teacher = tmp_path / "T.th"
    teacher.write_bytes(b"weights")
    (tmp_path / "link.th").symlink_to(teacher)
    os.link(teacher, tmp_path / "hard.th")
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    inputs = {"--checkpoint": teacher, "--data": data, "--val-data": None}
    for out in (teacher, tmp_path / "link.th", tmp_path / "hard.th", data / ".." / "T.th"):
        with pytest.raises(ValueError, match="is the same file as --checkpoint"):
            check_outputs(inputs, {"--out": out})
    with pytest.raises(ValueError, match="same directory as --data"):
        check_outputs(inputs, {"--out": data})
    with pytest.raises(ValueError, match="lies inside --data"):
        check_outputs(inputs, {"--out": data / "test" / "run"}, untouched=["--data"])
    check_outputs(inputs, {"--out": tmp_path / "pruned.pt", "report": None})
    assert teacher.read_bytes() == b"weights"


def test_prune_refuses_to_replace_its_own_checkpoint(r20_ckpt, capsys):
    before = _snapshot(r20_ckpt)  # main: T.th silently replaced by the pruned model
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--amount", "0.5"]
    assert main([*argv, "--out", str(r20_ckpt)]) == 2
    assert "is the same file as --checkpoint" in _cli_error(capsys)
    assert _snapshot(r20_ckpt) == before


def test_synthesize_refuses_an_out_that_is_its_checkpoint(r20_ckpt, capsys):
    before = _snapshot(r20_ckpt)
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(r20_ckpt), "--n", "4"]
    assert main([*argv, "--out", str(r20_ckpt), "--no-progress"]) == 2
    assert "is the same file as --checkpoint" in _cli_error(capsys)
    assert _snapshot(r20_ckpt) == before


def test_recover_refuses_an_out_that_is_its_synthetic_set(tmp_path, r20_ckpt, monkeypatch, capsys):
    import recoverprune.distill.objectives as objectives

    monkeypatch.setattr(objectives, "kd_loss", lambda *a, **k: pytest.fail("trained"))
    synth = SyntheticImages(torch.randn(8, 3, 32, 32), torch.arange(8)).save(tmp_path / "s")
    before = _snapshot(synth, r20_ckpt)
    argv = ["recover", "--arch", "resnet20", "--teacher", str(r20_ckpt), "--student"]
    argv += [str(r20_ckpt), "--synthetic", str(synth), "--out", str(synth), "--no-progress"]
    assert main(argv) == 2
    assert "same directory as --synthetic" in _cli_error(capsys)
    assert _snapshot(synth, r20_ckpt) == before


def test_compress_refuses_to_write_over_its_teacher(tmp_path, r20_ckpt, monkeypatch, capsys):
    import recoverprune.pipeline.compress as pipeline

    monkeypatch.setattr(pipeline, "synthesize", lambda *a, **k: pytest.fail("synthesised"))
    out = tmp_path / "out"
    out.mkdir()
    teacher = out / "student.pt"  # compressing again from a previous run's student
    teacher.write_bytes(r20_ckpt.read_bytes())
    before = _snapshot(out)
    argv = ["compress", "--arch", "resnet20", "--checkpoint", str(teacher), "--preset", "tiny"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert "is the same file as --checkpoint" in _cli_error(capsys)
    assert _snapshot(out) == before
