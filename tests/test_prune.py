"""prune(): exact counts, deterministic ties, masks that survive everything, clear errors."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
import torchvision
from rich.table import Table
from torch import nn

from recoverprune import (
    BlockConfig,
    ChannelConfig,
    UnstructuredConfig,
    finalize,
    is_pruned,
    prune,
    sparsity,
)
from recoverprune.core.io import fingerprint
from recoverprune.models import load_model, mobilenet_v2, resnet20
from recoverprune.pruning.masks import restore_pruning


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def _zeros(model: nn.Module) -> int:
    return sparsity(model).zeros


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (m.weight_orig * m.weight_mask).detach()
        for n, m in model.named_modules()
        if hasattr(m, "weight_mask")
    }


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.75, 0.9, 0.999])
@pytest.mark.parametrize("make", [_mlp, resnet20])
def test_global_exact_count(make, amount):
    model = make()
    total = sparsity(model).total
    # at 0.999 whole layers empty: that warning is tested on its own below
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pruning at amount=.* removes every weight")
        assert _zeros(prune(model, amount)) == round(amount * total)


def test_ties_are_deterministic_lowest_index_first():
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    a, b = prune(lin, 0.5), prune(lin, 0.5)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert a.weight_mask.flatten().tolist() == [0.0] * 8 + [1.0] * 8


def test_hand_countable_global_and_layerwise():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -4.0], [3.0, -2.0]]))
        net[1].weight.copy_(torch.tensor([[0.5, 5.0], [-6.0, 0.1]]))
    g = prune(net, 0.5)  # removes |w| in {0.1, 0.5, 1, 2}
    assert g[0].weight.tolist() == [[0.0, -4.0], [3.0, 0.0]]
    assert g[1].weight.tolist() == [[0.0, 5.0], [-6.0, 0.0]]
    lw = prune(net, UnstructuredConfig(0.25, scope="layerwise"))  # one per layer
    assert lw[0].weight.tolist() == [[0.0, -4.0], [3.0, -2.0]]
    assert lw[1].weight.tolist() == [[0.5, 5.0], [-6.0, 0.0]]


def test_layerwise_fraction_per_layer():
    pruned = prune(resnet20(), UnstructuredConfig(0.6, scope="layerwise"))
    for layer in sparsity(pruned).layers:
        assert layer.zeros == round(0.6 * layer.numel), layer.name


def test_include_exclude_and_types():
    m = resnet20()
    ex = prune(m, 0.5, exclude=["conv1", "linear"])
    rows = {la.name: la for la in sparsity(ex).layers}
    assert rows["conv1"].zeros == 0 and rows["linear"].zeros == 0
    inc = prune(m, UnstructuredConfig(0.5, include=["layer1.*"]))
    assert all((la.zeros > 0) == la.name.startswith("layer1.") for la in sparsity(inc).layers)
    lin = prune(m, UnstructuredConfig(0.5, layer_types=(nn.Linear,)))
    assert [la.name for la in sparsity(lin).layers if la.zeros] == ["linear"]
    with pytest.raises(ValueError, match="nosuch"):
        prune(m, 0.5, exclude=["nosuch"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_input_model_untouched_and_inplace(mode):
    m = resnet20()
    m.train(mode == "train")
    before = fingerprint(m)
    out = prune(m, 0.75)
    assert out is not m and fingerprint(m) == before and m.training == (mode == "train")
    assert not is_pruned(m) and is_pruned(out)
    same = prune(m, 0.5, inplace=True)
    assert same is m and is_pruned(m)


def test_masks_survive_sgd_deepcopy_to_state_dict(tmp_path):
    model = prune(resnet20(), 0.75).train()
    masks = {n: b.clone() for n, b in model.named_buffers() if n.endswith("weight_mask")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(20):
        loss = nn.functional.cross_entropy(
            model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model(torch.randn(2, 3, 32, 32))  # forward recomputes weight from weight_orig * mask

    def check(m: nn.Module) -> None:
        for n, b in m.named_buffers():
            if n.endswith("weight_mask"):
                assert torch.equal(b.cpu().float(), masks[n])
        for mod in m.modules():
            if hasattr(mod, "weight_mask"):
                assert torch.all(mod.weight[mod.weight_mask == 0] == 0)

    check(model)
    model.train()(torch.randn(2, 3, 32, 32)).sum()  # a grad-mode forward, no backward yet
    twin = copy.deepcopy(model)  # still copyable (torch's prune alone would refuse here)
    check(twin)
    check(model.to(torch.float64).to(torch.float32))
    path = tmp_path / "p.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    fresh = resnet20()
    sd = torch.load(path, weights_only=True)["state_dict"]
    restore_pruning(fresh, sd)
    fresh.load_state_dict(sd, strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), model.eval()(x))
        assert torch.allclose(load_model("resnet20", path)(x), model(x))
    check(fresh)


@pytest.mark.slow
def test_masks_survive_torch_compile():
    torch.manual_seed(0)
    net = prune(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), 0.5
    )
    compiled = torch.compile(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(x), net(x), atol=1e-5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        compiled(x).sum().backward()
        opt.step()
        opt.zero_grad()
    net(x)
    assert torch.all(net[0].weight[net[0].weight_mask == 0] == 0)
    assert torch.all(net[3].weight[net[3].weight_mask == 0] == 0)


def test_finalize_bakes_masks():
    model = prune(resnet20(), 0.5)
    x = torch.randn(2, 3, 32, 32)
    plain = finalize(model)
    assert not is_pruned(plain) and is_pruned(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in plain.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in plain.modules())
    assert sparsity(plain).zeros == sparsity(model).zeros
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), model.eval()(x))


@pytest.mark.filterwarnings("ignore:pruning at amount")  # random init empties small layers
@pytest.mark.parametrize(
    "make",
    [
        lambda: torchvision.models.resnet18(num_classes=10),
        mobilenet_v2,
        lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 1)),
    ],
)
def test_other_architectures_exact(make):
    model = make()
    pruned = prune(model, 0.7)
    assert _zeros(pruned) == round(0.7 * sparsity(model).total)


def test_sparsity_report():
    net = prune(_mlp(), 0.5)
    rep = sparsity(net)
    assert [la.name for la in rep.layers] == ["0", "2"]
    assert [la.shape for la in rep.layers] == [(30, 20), (5, 30)]
    assert rep.total == 750 and rep.zeros == 375 and rep.overall == 0.5
    text = str(rep)
    assert "total" in text and "50.00%" in text
    assert isinstance(rep.table(), Table)
    json.dumps(rep.as_dict())


@pytest.mark.parametrize(
    ("amount", "exc"),
    [
        (1.0, ValueError),
        (-0.1, ValueError),
        (math.nan, ValueError),
        ("0.5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_amount(amount, exc):
    m = _mlp()
    before = fingerprint(m)
    with pytest.raises(exc, match="amount"):
        prune(m, amount)
    assert fingerprint(m) == before


def test_no_prunable_layer_and_bad_scope():
    with pytest.raises(ValueError, match="no prunable layer"):
        prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="scope"):
        UnstructuredConfig(0.5, scope="foo")  # type: ignore[arg-type]


def test_a_float_is_global_unstructured_and_configs_apply_in_order():
    m = resnet20()
    assert fingerprint(prune(m, 0.5)) == fingerprint(prune(m, UnstructuredConfig(0.5)))
    twice = prune(m, [0.5, UnstructuredConfig(0.75)])  # the second tightens the first
    assert fingerprint(twice) == fingerprint(prune(prune(m, 0.5), 0.75))


def test_the_config_type_picks_the_method_and_nothing_is_ignored():
    m = resnet20()
    with pytest.raises(TypeError, match=r"UnstructuredConfig, ChannelConfig, BlockConfig"):
        prune(m, "channel")
    with pytest.raises(TypeError, match="dict"):
        prune(m, {"amount": 0.5})
    for gone in ("structure", "amount", "channel", "block", "scope"):
        with pytest.raises(TypeError, match=gone):
            prune(m, 0.5, **{gone: None})
    with pytest.raises(ValueError, match="empty"):
        prune(m, [])
    with pytest.raises(ValueError, match="inplace"):
        prune(m, ChannelConfig(amount=0.5), inplace=True)
    made = []
    with pytest.raises(ValueError, match="needs a budget after a BlockConfig"):
        prune(m, [BlockConfig(drop=1), ChannelConfig()], data=lambda: made.append(1))
    assert made == []  # refused before any images were made


def test_warns_when_a_layer_is_emptied():
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(0.01)
        net[1].weight.fill_(1.0)
    with pytest.warns(UserWarning, match="'0'"):
        prune(net, 0.5)


def test_pruning_twice_tightens():
    first = prune(resnet20(), 0.5)
    zeros_before = {
        n: m.weight_mask == 0 for n, m in first.named_modules() if hasattr(m, "weight_mask")
    }
    second = prune(first, 0.75)
    assert sparsity(second).overall == pytest.approx(0.75, abs=1e-5)
    for n, m in second.named_modules():
        if n in zeros_before:
            assert torch.all(m.weight_mask[zeros_before[n]] == 0)


@pytest.mark.slow
def test_real_teacher(shared_dir):
    teacher = load_model("resnet20", shared_dir / "teachers" / "resnet20-12fca82f.th")
    before = fingerprint(teacher)
    pruned = prune(teacher, 0.75)
    assert _zeros(pruned) == round(0.75 * sparsity(teacher).total)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), teacher(x))
    assert fingerprint(teacher) == before
