"""The one checkpoint loader: every kind of model, dense, masked or channel-pruned, loads back."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from recoverprune import ChannelConfig, InputSpec, channel_spec, prune
from recoverprune.cli import main
from recoverprune.core.io import CheckpointError
from recoverprune.models import load_model
from recoverprune.models.builders import build_model

pytest.importorskip("torch_pruning")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _teacher(tmp_path) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    net = build_model("torchvision:resnet18", num_classes=10)
    net.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))
    net.eval()
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    return net, str(path)


@pytest.mark.slow
def test_channel_pruned_torchvision_model_round_trips_through_the_api(tmp_path):
    teacher, _ = _teacher(tmp_path)
    small = prune(teacher, ChannelConfig(amount=0.5)).eval()
    path = tmp_path / "small.pt"
    torch.save({"state_dict": small.state_dict(), "channel_spec": channel_spec(small)}, path)
    loaded = load_model("torchvision:resnet18", path)
    assert loaded.layer1[0].conv1.out_channels == small.layer1[0].conv1.out_channels < 64
    with torch.no_grad():
        assert torch.equal(loaded(X), small(X))


@pytest.mark.slow
def test_channel_pruned_torchvision_model_round_trips_through_the_cli(tmp_path, capsys):
    teacher, t_path = _teacher(tmp_path)
    out = tmp_path / "pruned.pt"
    common = ["--arch", "torchvision:resnet18", "--image-size", "32"]
    how = ["--amount", "0.5", "--structure", "channel", "--out", str(out)]
    rc = main(["prune", *common, "--checkpoint", t_path, *how])
    assert rc == 0
    loaded = load_model("torchvision:resnet18", out)
    spec = InputSpec.of(teacher, image_size=32)
    expected = prune(teacher, ChannelConfig(amount=0.5), input=spec)
    with torch.no_grad():
        assert torch.equal(loaded(X), expected.eval()(X))
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32)  # saved with the checkpoint
    data = tmp_path / "data"
    for label in range(10):  # one folder per output of the model
        (data / "test" / f"c{label}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (label * 20, 0, 0)).save(data / "test" / f"c{label}" / "0.png")
    capsys.readouterr()
    rc = main(["evaluate", *common, "--checkpoint", str(out), "--data", str(data)])
    assert rc == 0 and "top-1" in capsys.readouterr().out


def test_own_model_loads_into_a_copy_and_keeps_masks(tmp_path):
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    sparse = prune(net, 0.5)
    path = tmp_path / "own.pt"
    torch.save({"state_dict": sparse.state_dict()}, path)
    loaded = load_model(net, path)
    assert loaded is not net and not hasattr(net[0], "weight_mask")
    assert torch.equal(loaded[0].weight_mask, sparse[0].weight_mask)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), sparse.eval()(x))


def test_a_checkpoint_that_does_not_fit_names_keys_and_what_to_pass(tmp_path):
    torch.save(build_model("torchvision:resnet18", num_classes=7).state_dict(), tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="num_classes=7"):
        load_model("torchvision:resnet18", tmp_path / "x.pt", num_classes=10)
    with pytest.raises(CheckpointError, match=r"looks like|valid names"):
        load_model("resnet20", tmp_path / "x.pt")
