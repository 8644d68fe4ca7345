"""Tests for the CIFAR model zoo and the checkpoint loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recoverprune import is_pruned, prune
from recoverprune.core.io import CheckpointError
from recoverprune.models import (
    CIFAR_MEAN,
    CIFAR_STD,
    create_model,
    list_models,
    load_model,
    resnet20,
    resnet32,
)

ZOO = [
    "mobilenet_v2",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "vgg11_bn",
    "vgg16_bn",
]
TEACHERS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th"}


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def r20_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return resnet20().state_dict()


@pytest.fixture
def teachers_dir(shared_dir: Path) -> Path:
    path = shared_dir / "teachers"
    if not all((path / f).is_file() for f in TEACHERS.values()):
        pytest.skip(f"pretrained CIFAR teachers not found in {path}")
    return path


def test_list_models_is_sorted_zoo() -> None:
    assert list_models() == ZOO


@pytest.mark.parametrize(
    ("name", "num_classes"), [(n, 10 if i % 2 else 7) for i, n in enumerate(ZOO)]
)
def test_forward_shape_and_cfg(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert model.pretrained_cfg == {
        "input_size": (3, 32, 32),
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "num_classes": num_classes,
        "architecture": name,
    }


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85)],
)
def test_cifar_resnet_parameter_counts(name: str, millions: float) -> None:
    count = sum(p.numel() for p in create_model(name).parameters())
    assert round(count / 1e6, 2) == millions


def test_resnet20_exact_parameter_count_and_parameter_free_shortcut() -> None:
    model = resnet20()
    assert sum(p.numel() for p in model.parameters()) == 269_722
    shortcut = model.layer2[0].shortcut
    assert not list(shortcut.parameters()) and not list(shortcut.buffers())
    out = shortcut(torch.randn(2, 16, 32, 32))
    assert out.shape == (2, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_shared_teachers_load_strictly(arch: str, teachers_dir: Path) -> None:
    path = teachers_dir / TEACHERS[arch]
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    expected = {k.removeprefix("module."): v for k, v in raw.items()}
    model = load_model(arch, path)
    assert not model.training
    assert model.pretrained_cfg["num_classes"] == 10
    state = model.state_dict()
    assert set(state) - set(expected) == {k for k in state if k.endswith("num_batches_tracked")}
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    # the same keys also load with plain strict=True into a fresh model
    fresh = create_model(arch)
    assert fresh.load_state_dict(dict(expected), strict=True) is not None


def test_unknown_arch_lists_valid_names(tmp_path: Path, r20_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="resnet20") as info:
        create_model("resnet21")
    assert all(name in str(info.value) for name in ZOO)
    path = _save(r20_state, tmp_path / "r20.pt")
    with pytest.raises(ValueError, match=r"unknown model 'alexnet'.*mobilenet_v2"):
        load_model("alexnet", path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model("resnet20", tmp_path / "nope.pt")


def test_garbage_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 definitely not a torch file \xff" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model("resnet20", path)


def test_wrong_arch_names_missing_keys(tmp_path: Path, r20_state: dict[str, torch.Tensor]) -> None:
    path = _save({"state_dict": r20_state}, tmp_path / "r20.pt")
    with pytest.raises(CheckpointError) as info:
        load_model("resnet32", path)
    msg = str(info.value)
    assert "'resnet32'" in msg and "missing keys" in msg
    assert "layer1.3.conv1.weight" in msg
    assert "it looks like resnet20" in msg
    assert all(name in msg for name in ZOO)


def test_wrong_num_classes_names_shape_mismatch(
    tmp_path: Path, r20_state: dict[str, torch.Tensor]
) -> None:
    path = _save(r20_state, tmp_path / "r20.pt")
    with pytest.raises(
        CheckpointError, match=r"linear\.weight: checkpoint \(10, 64\) vs model"
    ) as info:
        load_model("resnet20", path, num_classes=7)
    assert "num_classes=None" in str(info.value)


def test_module_prefix_under_model_key(tmp_path: Path, r20_state: dict[str, torch.Tensor]) -> None:
    wrapped = {"model": {f"module.{k}": v for k, v in r20_state.items()}, "epoch": 3}
    model = load_model("resnet20", _save(wrapped, tmp_path / "ddp.pt"))
    assert not model.training
    assert _same_tensors(model.state_dict(), r20_state)


def test_plain_state_dict_without_num_batches_tracked(
    tmp_path: Path, r20_state: dict[str, torch.Tensor]
) -> None:
    plain = {k: v for k, v in r20_state.items() if not k.endswith("num_batches_tracked")}
    model = load_model("resnet20", _save(plain, tmp_path / "plain.pt"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())


def test_num_classes_inferred(tmp_path: Path) -> None:
    source = resnet20(num_classes=7).eval()
    model = load_model("resnet20", _save(source.state_dict(), tmp_path / "r20c7.pt"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 7)
        torch.testing.assert_close(out, source(x), rtol=0, atol=0)
    assert model.pretrained_cfg["num_classes"] == 7


def test_pruned_checkpoint_round_trip(tmp_path: Path) -> None:
    source = prune(resnet32(num_classes=7), 0.5).eval()
    state = source.state_dict()
    assert "linear.weight_orig" in state and "linear.weight" not in state
    model = load_model("resnet32", _save({"student": state}, tmp_path / "pruned.pt"))
    assert is_pruned(model) and not model.training
    assert _same_tensors(model.state_dict(), state)
    assert torch.equal(model.linear.weight, source.linear.weight)  # no forward needed
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
