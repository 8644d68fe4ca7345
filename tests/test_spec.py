"""Model specs (zoo, torchvision:, timm:, module:), checkpoint forms and InputSpec."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from _nets import calibrated
from recoverprune import InputSpec, prune
from recoverprune.core.io import CheckpointError
from recoverprune.core.spec import per_channel
from recoverprune.models import create_model, load_model
from recoverprune.models.builders import build_model, infer_num_classes, parse_spec

HAS_TIMM = importlib.util.find_spec("timm") is not None


# --------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("resnet20", ("zoo", "resnet20")),
        ("zoo:resnet20", ("zoo", "resnet20")),
        ("torchvision:resnet18", ("torchvision", "resnet18")),
        ("timm:resnet18", ("timm", "resnet18")),
        ("module:pkg.mod:factory", ("module", "pkg.mod:factory")),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("bad", ["keras:resnet", "torchvision:", "hub:x"])
def test_parse_spec_refuses_unknown_kinds(bad):
    with pytest.raises(ValueError, match="torchvision:NAME, timm:NAME or module:"):
        parse_spec(bad)


def test_torchvision_builds_with_num_classes_and_never_downloads(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = create_model("torchvision:mobilenet_v2", num_classes=10)
    assert model.classifier[1].out_features == 10
    # the input hint comes from the reference weights' metadata, not from the weights
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


def test_torchvision_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean resnet18"):
        build_model("torchvision:resnet81")


@pytest.mark.skipif(not HAS_TIMM, reason="timm not installed (pip install 'recoverprune[timm]')")
def test_timm_builds_without_pretrained_weights(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", pytest.fail)
    model = create_model("timm:resnet18", num_classes=7)
    assert model.get_classifier().out_features == 7
    assert InputSpec.of(model).shape == (3, 224, 224)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match=r"pip install 'recoverprune\[timm\]'"):
        build_model("timm:resnet18", 10)


def test_module_spec_both_forms_and_num_classes():
    a = build_model("module:_gray:gray_cnn", 7)
    b = build_model("module:_gray.gray_cnn", 7)
    assert a[-1].out_features == b[-1].out_features == 7
    assert a[0].in_channels == 1


def test_module_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg'"):
        build_model("module:no_such_pkg:f")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        build_model("module:_gray:nope")
    with pytest.raises(ValueError, match=r"returned int, not an nn\.Module"):
        build_model("module:builtins:int")


# --------------------------------------------------------------------------- checkpoints
def _tv_state(name: str = "resnet18", num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return calibrated(build_model(f"torchvision:{name}", num_classes), 1, 32).state_dict()


@pytest.mark.parametrize(
    "form",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["plain", "state_dict", "model", "module-prefix"],
)
def test_checkpoint_forms_load_with_head_inferred(tmp_path, form):
    sd = _tv_state()
    torch.save(form(sd), tmp_path / "ck.pt")
    model = load_model("torchvision:resnet18", tmp_path / "ck.pt")  # 10 classes read from fc
    assert model.fc.out_features == 10 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_head_replaced_differently_names_missing_and_unexpected_keys(tmp_path):
    net = build_model("torchvision:resnet18", 10)
    net.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))  # a user's own head
    torch.save(net.state_dict(), tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as info:
        load_model("torchvision:resnet18", tmp_path / "ck.pt", num_classes=10)
    msg = str(info.value)
    assert "missing keys (2): fc.weight, fc.bias" in msg
    assert "unexpected keys (2): fc.1.weight, fc.1.bias" in msg


def test_wrong_num_classes_says_what_the_checkpoint_has(tmp_path):
    torch.save(_tv_state("shufflenet_v2_x1_0"), tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(10, 1024\)") as info:
        load_model("torchvision:shufflenet_v2_x1_0", tmp_path / "ck.pt", num_classes=100)
    assert "pass num_classes=10" in str(info.value)


def test_head_rows_inferred_for_every_head_layout():
    for name, n in [("vgg11_bn", 3), ("densenet121", 5), ("squeezenet1_0", 6)]:
        sd = build_model(f"torchvision:{name}", n).state_dict()
        assert infer_num_classes(f"torchvision:{name}", sd) == n, name


def test_whole_pickled_model_is_refused_weights_only(tmp_path):
    torch.save(build_model("module:_gray:gray_cnn", 10), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model("module:_gray:gray_cnn", tmp_path / "whole.pt")


def test_pruned_torchvision_checkpoint_comes_back_pruned(tmp_path):
    teacher = load_model_from(tmp_path, "shufflenet_v2_x1_0")
    pruned = prune(teacher, 0.5)
    torch.save({"state_dict": pruned.state_dict()}, tmp_path / "p.pt")
    back = load_model("torchvision:shufflenet_v2_x1_0", tmp_path / "p.pt")
    assert hasattr(back.fc, "weight_mask")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), pruned.eval()(x))


def load_model_from(tmp_path, name: str) -> nn.Module:
    torch.save(_tv_state(name), tmp_path / "t.pt")
    return load_model(f"torchvision:{name}", tmp_path / "t.pt")


def test_saved_input_description_is_restored(tmp_path):
    spec = InputSpec(channels=1, size=28, mean=0.286, std=0.353)
    net = calibrated(build_model("module:_gray:gray_cnn", 10), 1, 28, 1)
    torch.save({"state_dict": net.state_dict(), "input": spec.to_dict()}, tmp_path / "g.pt")
    back = load_model("module:_gray:gray_cnn", tmp_path / "g.pt")
    assert InputSpec.of(back) == spec


def test_zoo_names_still_work(tmp_path):
    torch.save(create_model("resnet20", 7).state_dict(), tmp_path / "r.pt")
    assert load_model("zoo:resnet20", tmp_path / "r.pt").linear.out_features == 7
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        create_model("resnet21")


# --------------------------------------------------------------------------- InputSpec
def test_input_spec_broadcasts_one_value_and_refuses_wrong_lengths():
    assert InputSpec(3, 8, 0.5, 0.25).mean == (0.5, 0.5, 0.5)
    assert per_channel([0.1, 0.2, 0.3], 3) == (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="mean has 2 values but the input has 3 channel"):
        InputSpec(3, 8, (0.1, 0.2), (0.3, 0.3))
    with pytest.raises(ValueError, match="both mean and std"):
        InputSpec(1, 8, mean=0.5)
    with pytest.raises(ValueError, match="std must be > 0"):
        InputSpec(1, 8, 0.5, 0.0)


def test_input_spec_of_model_infers_channels_and_defaults():
    gray = build_model("module:_gray:gray_cnn", 10)
    spec = InputSpec.of(gray)
    assert spec.channels == 1 and spec.size is None and spec.mean is None
    with pytest.raises(ValueError, match="pass image_size"):
        _ = spec.shape
    with pytest.raises(ValueError, match="normalisation of this 1-channel input is unknown"):
        spec.normalisation()
    rgb = InputSpec.of(create_model("resnet20"))  # the zoo's hint
    assert rgb.shape == (3, 32, 32) and rgb.mean == (0.485, 0.456, 0.406)
    assert InputSpec.of(create_model("resnet20"), image_size=(40, 48)).shape == (3, 40, 48)


def test_attach_records_the_spec_without_touching_weights():
    net = build_model("module:_gray:gray_cnn", 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    InputSpec(1, 28, 0.286, 0.353).attach(net)
    assert net.pretrained_cfg == {"input_size": (1, 28, 28), "mean": (0.286,), "std": (0.353,)}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
