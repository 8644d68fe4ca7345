"""Any classifier end to end: the original work's torchvision architectures, a grayscale CNN
of one's own, any labelled dataset as the transfer set, and the walls a new user hit."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from _nets import calibrated
from recoverprune import (
    PRESETS,
    DistillConfig,
    InputSpec,
    InversionConfig,
    SyntheticImages,
    compress,
    evaluate,
    prune,
    recover,
    sparsity,
    synthesize,
)
from recoverprune.cli import main
from recoverprune.core.io import fingerprint
from recoverprune.data import load_split
from recoverprune.models.builders import build_model
from recoverprune.pruning.batchnorm import bn_layers
from recoverprune.synthesis.bn import bn_statistics

#: Every 224x224 run of the heavy architectures is gated: 10-80 s each on one CPU thread.
FULL = os.environ.get("RECOVERPRUNE_FULL_ARCHS") == "1"
full_only = pytest.mark.skipif(
    not FULL, reason="224x224 run of a heavy arch: RECOVERPRUNE_FULL_ARCHS=1"
)
#: The original work's architectures; seconds for prune -> synthesize -> recover at 224x224 on
#: one thread of the (busy) 2-core development machine (n=4, 1 iteration, 1 epoch). The heavy
#: ones cost about as much at a smaller size: prune, fingerprints and SGD steps over 22-140 M
#: weights dominate (VGG-19-BN's 25088x4096 Linear alone holds 103 M).
FAST = ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "densenet121"]  # 1-11 s
HEAVY = ["resnet34", "resnet50", "wide_resnet50_2", "vgg19_bn"]  # 11, 15, 42, 79 s


def _teacher(name: str, size: int) -> nn.Module:
    """A torchvision model with BN statistics from one small random batch, in eval mode."""
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", 10)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, size, size))
    return model.eval()


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _end_to_end(name: str, size: int) -> None:
    teacher = _teacher(name, size)
    before = fingerprint(teacher)
    with warnings.catch_warnings():  # a freshly initialised head is the smallest layer:
        # global pruning may empty it, and prune says so (that warning has its own test)
        warnings.filterwarnings("ignore", "pruning at amount=0.5 removes every weight")
        student = prune(teacher, 0.5)
    spec = InputSpec.of(teacher, image_size=size)
    synthetic = synthesize(teacher, 4, batch_size=2, iterations=1, input=spec, progress=False)
    assert synthetic.image_shape == (3, size, size)
    cfg = DistillConfig(epochs=1, batch_size=4, holdout=0)
    student = recover(teacher, student, synthetic, config=cfg, progress=False)
    assert fingerprint(teacher) == before and _no_hooks(teacher) and not teacher.training
    assert sparsity(student).overall == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        assert student(synthetic.images[:2]).shape == (2, 10)


@pytest.mark.parametrize(  # resnet18 and densenet121 take about a minute each: slow
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in ("resnet18", "densenet121") else n for n in FAST],
)
def test_original_architectures_end_to_end_at_224(name):
    _end_to_end(name, 224)


@pytest.mark.slow
@full_only
@pytest.mark.parametrize("name", HEAVY)
def test_heavy_architectures_end_to_end_at_224(name):
    _end_to_end(name, 224)


@pytest.mark.parametrize("name", FAST + HEAVY)
def test_bn_hooks_see_each_layers_own_input(name):
    """Through concatenations (DenseNet), channel shuffles (ShuffleNet), depthwise convs
    (MobileNetV2) and VGG's BN stack: once every BN layer holds the statistics of its own
    input on one batch, that batch has a near-zero BN loss and another batch does not."""
    model = build_model(f"torchvision:{name}", 10).eval()
    x = torch.randn(2, 3, 32, 32)

    def set_stats(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        var, mean = torch.var_mean(args[0], dim=(0, 2, 3), unbiased=False)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)

    handles = [m.register_forward_pre_hook(set_stats) for m in bn_layers(model)]
    with torch.no_grad():
        model(x)  # every BN layer now holds the statistics of its own input on x
    for h in handles:
        h.remove()
    with bn_statistics(model) as losses, torch.no_grad():
        model(x)
        matched = float(torch.stack(losses).sum())
        losses.clear()
        model(x * 2 + 1)
        other = float(torch.stack(losses).sum())
    assert len(losses) == len(bn_layers(model))  # one hook call per BN layer
    assert matched < 1e-4 and other > 1.0, (matched, other)
    assert _no_hooks(model)


# --------------------------------------------------------------------------- acceptance
def test_cli_compress_torchvision_state_dict(tmp_path):
    torch.save(_teacher("shufflenet_v2_x1_0", 64).state_dict(), tmp_path / "CK.pt")
    out = tmp_path / "D"
    code = main(
        [
            "compress",
            "--arch",
            "torchvision:shufflenet_v2_x1_0",
            "--num-classes",
            "10",
            "--checkpoint",
            str(tmp_path / "CK.pt"),
            "--image-size",
            "64",
            "--preset",
            "tiny",
            "--exclude",
            "conv1.*",
            "fc",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["size"] == [64, 64] and report["input"]["channels"] == 3
    assert json.loads((out / "synthetic" / "manifest.json").read_text())["image_shape"] == [
        3,
        64,
        64,
    ]


@pytest.mark.slow
@full_only
@pytest.mark.parametrize("name", ["densenet121", "vgg19_bn"])
def test_python_api_compress_at_224_tiny(tmp_path, name):
    teacher = _teacher(name, 224)
    before = fingerprint(teacher)
    spec = InputSpec.of(teacher, image_size=224)
    res = compress(teacher, 0.5, preset="tiny", input=spec, out_dir=tmp_path, progress=False)
    assert res.report["input"]["size"] == [224, 224] and fingerprint(teacher) == before


def _gray_folder(root, size: int = 28, per_class: int = 3):
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / "test" / str(c)).mkdir(parents=True)
        for i in range(per_class):
            px = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px, mode="L").save(root / "test" / str(c) / f"{i}.png")
    return root


def _gray_teacher() -> nn.Module:
    return calibrated(build_model("module:_gray:gray_cnn", 10), 3, 28, 1)


def test_grayscale_cnn_through_compress(tmp_path):
    teacher = _gray_teacher()
    res = compress(
        teacher,
        0.75,
        input=InputSpec.of(teacher, image_size=28, mean=0.286, std=0.353),
        preset="tiny",
        eval_data=_gray_folder(tmp_path / "gray"),
        out_dir=tmp_path / "out",
        progress=False,
    )
    assert set(res.report["top1"]) == {"teacher", "pruned", "recovered"}
    assert res.report["input"] == {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]}
    assert InputSpec.of(res.student) == InputSpec(1, 28, 0.286, 0.353)
    assert not hasattr(teacher, "pretrained_cfg")  # the teacher is not touched


def test_grayscale_cnn_through_the_cli(tmp_path):
    torch.save({"state_dict": _gray_teacher().state_dict()}, tmp_path / "g.pt")
    gray = _gray_folder(tmp_path / "gray")
    common = ["--arch", "module:_gray:gray_cnn", "--image-size", "28"]
    norm = ["--mean", "0.286", "--std", "0.353"]
    args = ["compress", *common, "--checkpoint", str(tmp_path / "g.pt"), *norm]
    args += ["--preset", "tiny", "--eval-data", str(gray), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress"]) == 0
    # student.pt carries the input description: evaluate needs no --mean/--std again
    ev = [
        "evaluate",
        "--arch",
        "module:_gray:gray_cnn",
        "--checkpoint",
        str(tmp_path / "o" / "student.pt"),
    ]
    assert (
        main([*ev, "--data", str(gray), "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 0
    )


def test_grayscale_without_normalisation_says_what_to_pass(tmp_path, capsys):
    torch.save(_gray_teacher().state_dict(), tmp_path / "g.pt")
    ck = str(tmp_path / "g.pt")
    args = ["synthesize", "--arch", "module:_gray:gray_cnn", "--checkpoint", ck, "--n", "4"]
    code = main([*args, "--image-size", "28", "--out", str(tmp_path / "s"), "--no-progress"])
    assert code == 2
    assert "pass mean and std (--mean/--std)" in capsys.readouterr().err


def test_scalar_mean_std_in_synthesize():
    gray = _gray_teacher()
    spec = InputSpec.of(gray, image_size=28, mean=0.286, std=0.353)
    ds = synthesize(gray, 4, batch_size=4, iterations=1, input=spec, progress=False)
    assert ds.mean == (0.286,) and ds.images.shape == (4, 1, 28, 28)


# --------------------------------------------------------------------------- any dataset
class _Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _data(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    "wrap",
    [lambda x, y: TensorDataset(x, y), lambda x, y: (x, y), lambda x, y: _Pairs(x, y)],
    ids=["TensorDataset", "tuple", "Dataset"],
)
def test_recover_takes_any_labelled_data_with_holdout(wrap):
    teacher = _gray_teacher()
    x, y = _data()
    cfg = DistillConfig(epochs=2, holdout=0.05)
    student = recover(teacher, prune(teacher, 0.5), wrap(x, y), config=cfg, progress=False)
    history = student.recovery_history
    assert len(history) == 2 and "agreement" in history[-1]  # 24 >= 20 images: 5 % held out


def test_recover_and_evaluate_give_the_same_holdout_on_every_form():
    from recoverprune.data.transfer import as_transfer_set

    x, y = _data(40)
    views = [as_transfer_set(f) for f in (TensorDataset(x, y), (x, y), _Pairs(x, y))]
    views.append(SyntheticImages(x, y, mean=0.5, std=0.5))
    held = [v.split(0.25, seed=3)[1].get_batch(torch.arange(10))[1] for v in views]
    assert all(torch.equal(h, held[0]) for h in held)


def test_evaluate_takes_tensors_and_refuses_other_things_clearly():
    net = _gray_teacher()
    x, y = _data()
    with torch.no_grad():
        y = net(x).argmax(1)
    assert evaluate(net, (x, y), progress=False).top1 == 100.0
    assert evaluate(net, TensorDataset(x, y), progress=False).top1 == 100.0
    with pytest.raises(TypeError, match=r"expected labelled images: a SyntheticImages, a Dataset"):
        evaluate(net, 42, progress=False)
    with pytest.raises(ValueError, match="uint8 images"):
        evaluate(net, (x.to(torch.uint8), y), progress=False)
    with pytest.raises(ValueError, match="ToTensor"):
        evaluate(net, [(Image.new("L", (28, 28)), 0)], progress=False)
    with pytest.raises(TypeError, match="load it first"):
        recover(net, prune(net, 0.5), "some/dir", progress=False)


# --------------------------------------------------------------------------- the other walls
def test_synthetic_images_refuse_mean_std_of_another_channel_count():
    with pytest.raises(ValueError, match="mean has 3 values but the input has 1 channel"):
        SyntheticImages(
            torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), mean=(0.4,) * 3, std=(0.2,) * 3
        )
    with pytest.raises(ValueError, match="pass mean= and std="):
        SyntheticImages(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))
    assert SyntheticImages(
        torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), mean=0.5, std=0.2
    ).std == (0.2,)


def test_image_folders_read_in_the_models_channel_mode_and_resized(tmp_path):
    gray = _gray_folder(tmp_path / "gray", size=8, per_class=1)
    ds = load_split(
        gray, "test", mean=0.5, std=0.5, channels=1, image_size=12, cache_dir=tmp_path / "c"
    )
    assert ds.images.shape == (10, 1, 12, 12)
    rgb = load_split(gray, "test", channels=3, cache_dir=tmp_path / "c")
    assert rgb.images.shape == (10, 3, 8, 8)  # the same folder, read for an RGB model
    # an RGB torchvision model evaluated at 64 on 8x8 images (the 32 -> 224 protocol, scaled)
    net = _teacher("shufflenet_v2_x1_0", 64)
    at64 = InputSpec.of(net, image_size=64)
    res = evaluate(net, gray, input=at64, cache_dir=tmp_path / "c", progress=False)
    assert res.n == 10


def test_one_iteration_story():
    # the library's default and the original recipe: 200; the quick preset spends its minutes
    # on 50 iterations and more images and steps (benchmarks/quick_budget.py measured it)
    assert InversionConfig().iterations == PRESETS["seed"].iterations == 200
    assert PRESETS["quick"].iterations == 50


def test_seed_preset_is_the_original_recipe():
    p = PRESETS["seed"]
    assert (p.n, p.iterations, p.batch_size, p.epochs) == (1024, 200, 32, 15)
    d = p.distill
    assert (d.optimizer, d.lr, d.momentum, d.temperature, d.bn_mode) == (
        "sgd",
        1e-3,
        0.9,
        3.0,
        "frozen",
    )


@pytest.mark.slow
def test_train_teacher_takes_a_torchvision_arch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(10):
            (tmp_path / "d" / split / str(c)).mkdir(parents=True)
            px = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(tmp_path / "d" / split / str(c) / "0.png")
    args = ["--arch", "torchvision:shufflenet_v2_x1_0", "--image-size", "32", "--epochs", "1"]
    args += ["--batch-size", "8", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "t.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECOVERPRUNE_CACHE": str(tmp_path / "c")}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "train_teacher.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(tmp_path / "t.pt", weights_only=True)
    assert ck["arch"] == "torchvision:shufflenet_v2_x1_0" and ck["input"]["size"] == [32, 32]
    assert ck["state_dict"]["fc.weight"].shape == (10, 1024)
