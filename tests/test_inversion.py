"""synthesize() (DeepInversion): shapes, determinism, teacher left alone, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import recoverprune.synthesis.bn as bn_module
import recoverprune.synthesis.inversion as inv
from _nets import calibrated, tiny_bn_net
from recoverprune import Accel, InversionConfig, SyntheticImages, synthesize
from recoverprune.core.borrow import borrowed
from recoverprune.core.io import fingerprint
from recoverprune.core.spec import InputSpec
from recoverprune.data.synthetic_io import MANIFEST, shard_name
from recoverprune.synthesis.bn import bn_statistics
from recoverprune.synthesis.plan import batch_sizes
from recoverprune.synthesis.priors import total_variation

_REAL_RUN = inv._Inverter.run
QUICK = {"iterations": 3, "input": InputSpec(size=8), "progress": False, "device": "cpu"}


def _teacher(num_classes: int = 4, in_channels: int = 3, seed: int = 0) -> nn.Module:
    """A tiny 'trained' BN teacher: running statistics from data and a class-separating head.

    Class ``c`` is read off feature channels ``2c`` and ``2c + 1`` (modulo 8), so every
    class is reachable by optimising the input.
    """
    net = calibrated(tiny_bn_net(num_classes, in_channels, seed=seed), in_channels=in_channels)
    with torch.no_grad():
        w = torch.full((num_classes, 8), -2.0)
        for c in range(num_classes):
            w[c, (2 * c) % 8] = w[c, (2 * c + 1) % 8] = 6.0
        net[-1].weight.copy_(w)
        net[-1].bias.zero_()
    return net.eval()


def _state(model: nn.Module) -> dict[str, object]:
    """Everything synthesize() must leave as it was."""
    return {
        "fingerprint": fingerprint(model),
        "training": [(name, m.training) for name, m in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "tensors": [
            (name, t.device, t.is_contiguous(), t.data_ptr())
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        ],
    }


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


# --------------------------------------------------------------------------- result
def test_result_shapes_dtypes_and_balanced_mixed_labels():
    ds = synthesize(_teacher(), 10, batch_size=4, **QUICK)
    assert isinstance(ds, SyntheticImages) and len(ds) == 10
    assert ds.images.shape == (10, 3, 8, 8) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (10,) and ds.labels.dtype == torch.int64
    assert torch.isfinite(ds.images).all()
    counts = torch.bincount(ds.labels, minlength=4)
    assert counts.sum() == 10 and int(counts.max() - counts.min()) <= 1
    assert ds.meta["batch_sizes"] == [4, 3, 3] and ds.meta["num_classes"] == 4
    assert len(ds.meta["stats"]) == 3
    # the classes are shuffled across batches, not one class per batch
    for chunk in ds.labels.split(ds.meta["batch_sizes"]):
        assert len(chunk.unique()) > 1
    # each image came back inside the valid (clipped) pixel range
    assert ds.denormalize().min() >= 0 and ds.denormalize().max() <= 1
    assert (
        float(
            (
                ds.images * torch.tensor(ds.std).view(1, -1, 1, 1)
                + torch.tensor(ds.mean).view(1, -1, 1, 1)
            ).min()
        )
        >= -1e-5
    )


def test_user_labels_are_honoured_list_and_tensor():
    labels = [3, 3, 3, 0, 1, 1]
    ds = synthesize(_teacher(), 6, batch_size=3, labels=labels, **QUICK)
    assert ds.labels.tolist() == labels
    ds = synthesize(_teacher(), 6, batch_size=3, labels=torch.tensor(labels), **QUICK)
    assert ds.labels.tolist() == labels


def test_number_of_classes_comes_from_the_teacher_output():
    ds = synthesize(_teacher(num_classes=7), 14, batch_size=7, **QUICK)
    assert ds.meta["num_classes"] == 7
    assert torch.bincount(ds.labels, minlength=7).tolist() == [2] * 7


def test_channels_from_first_conv_and_size_from_hint_or_argument():
    gray = _teacher(in_channels=1)
    spec = InputSpec.of(gray, image_size=8, mean=(0.5,), std=(0.25,))  # channels from the conv
    ds = synthesize(gray, 4, batch_size=4, **{**QUICK, "input": spec})
    assert ds.images.shape == (4, 1, 8, 8) and ds.mean == (0.5,) and ds.std == (0.25,)

    hinted = _teacher()
    hinted.pretrained_cfg = {"input_size": (3, 6, 6), "mean": (0.5, 0.5, 0.5), "std": (0.2,) * 3}
    ds = synthesize(hinted, 4, batch_size=4, iterations=2, progress=False, device="cpu")
    assert ds.images.shape == (4, 3, 6, 6) and ds.mean == (0.5, 0.5, 0.5)
    ds = synthesize(_teacher(), 4, batch_size=4, **{**QUICK, "input": InputSpec(size=(6, 10))})
    assert ds.images.shape == (4, 3, 6, 10)
    ds = synthesize(hinted, 4, batch_size=4, **QUICK)  # the input given wins over the hint
    assert ds.images.shape == (4, 3, 8, 8) and ds.mean == InputSpec().mean


def test_synthesize_is_deepinversion_only():
    with pytest.raises(TypeError, match="method"):
        synthesize(_teacher(), 4, batch_size=4, method="generator", **QUICK)
    with pytest.raises(TypeError, match="image_size"):
        synthesize(_teacher(), 4, batch_size=4, image_size=8, iterations=2, progress=False)


def test_the_input_shape_of_a_teacher():
    net = _teacher()
    assert InputSpec.of(net, image_size=16).shape == (3, 16, 16)
    assert InputSpec.of(net, image_size=(4, 6)).shape == (3, 4, 6)
    net.pretrained_cfg = {"input_size": (3, 32, 32)}
    assert InputSpec.of(net).shape == (3, 32, 32)
    assert InputSpec.of(net, image_size=8).shape == (3, 8, 8)  # the argument wins
    with pytest.raises(ValueError, match="image_size"):
        InputSpec.of(_teacher()).shape  # noqa: B018
    with pytest.raises(ValueError, match="size must be a positive int or"):
        InputSpec.of(_teacher(), image_size=(1, 2, 3))


def test_missing_image_size_is_a_value_error_naming_image_size():
    with pytest.raises(ValueError, match="image_size"):
        synthesize(_teacher(), 4, batch_size=4, iterations=2, progress=False, device="cpu")


def test_batch_sizes_never_hold_a_single_image():
    for n in range(2, 40):
        for bs in range(2, 12):
            sizes = batch_sizes(n, bs)
            assert sum(sizes) == n and min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
            # only batch_size=2 with an odd n needs one batch of 3
            assert max(sizes) <= max(bs, 3)
            assert len(sizes) == max(1, min(math.ceil(n / bs), n // 2))
    ds = synthesize(_teacher(), 5, batch_size=2, **QUICK)
    assert ds.meta["batch_sizes"] == [3, 2] and len(ds) == 5


def test_no_warnings_on_cpu():
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch's warn-once warnings too, whatever ran before
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            synthesize(_teacher(), 4, batch_size=4, **QUICK)
    finally:
        torch.set_warn_always(always)


# --------------------------------------------------------------------------- determinism
def test_same_seed_is_bitwise_identical_and_other_seed_differs():
    a = synthesize(_teacher(), 8, batch_size=4, seed=5, **QUICK)
    b = synthesize(_teacher(), 8, batch_size=4, seed=5, **QUICK)
    c = synthesize(_teacher(), 8, batch_size=4, seed=6, **QUICK)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


# --------------------------------------------------------------------------- teacher left alone
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_teacher_left_exactly_as_it_was(mode: str, channels_last: bool):
    teacher = _teacher()
    teacher.train(mode == "train")
    teacher[1].eval()  # a mixed tree of training flags must come back as it was
    teacher[0].bias.requires_grad_(False)  # and mixed requires_grad flags
    before = _state(teacher)
    synthesize(teacher, 8, batch_size=4, accel=Accel(channels_last=channels_last), **QUICK)
    assert _state(teacher) == before  # values, BN running stats, flags, device, layout, storage
    assert _no_hooks(teacher)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["bn_hook", "forward"])
def test_teacher_restored_when_the_loop_raises(monkeypatch, exc: type[BaseException], where: str):
    teacher = _teacher().train()
    before = _state(teacher)
    calls = {"n": 0}

    def third_call_raises() -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc("injected")

    if where == "bn_hook":
        real_hook = bn_module._bn_hook

        def hook(*args, **kwargs):
            third_call_raises()
            return real_hook(*args, **kwargs)

        monkeypatch.setattr(bn_module, "_bn_hook", hook)
    else:
        real_forward = teacher.forward

        def forward(x):
            third_call_raises()
            return real_forward(x)

        monkeypatch.setattr(teacher, "forward", forward)
    with pytest.raises(exc, match="injected"):
        synthesize(teacher, 8, batch_size=4, **QUICK)
    assert calls["n"] == 3
    monkeypatch.undo()
    assert _state(teacher) == before
    assert _no_hooks(teacher)


# --------------------------------------------------------------------------- quality
def test_bn_loss_falls_and_teacher_accuracy_rises_over_iterations():
    teacher = _teacher()
    start = synthesize(teacher, 32, batch_size=32, **{**QUICK, "iterations": 1}).meta["stats"][0]
    end = synthesize(teacher, 32, batch_size=32, **{**QUICK, "iterations": 40}).meta["stats"][0]
    # measured: bn 3.27 -> 1.97, accuracy 0.16 -> 1.0
    assert end["bn_loss_final"] < 0.8 * end["bn_loss_first"]
    assert end["bn_loss_final"] < 0.8 * start["bn_loss_final"]
    assert end["accuracy"] >= 0.9
    assert start["accuracy"] <= 0.5
    for key in ("bn_loss_first", "bn_loss_final", "accuracy", "loss", "ce", "ce_final", "seconds"):
        assert math.isfinite(end[key])


# --------------------------------------------------------------------------- streaming / resume
def _counting_run(monkeypatch, raise_at: int | None = None) -> dict[str, int]:
    """Count the batches optimised; optionally raise KeyboardInterrupt at batch call ``raise_at``."""
    calls = {"n": 0}

    def run(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == raise_at:
            raise KeyboardInterrupt
        return _REAL_RUN(self, *args, **kwargs)

    monkeypatch.setattr(inv._Inverter, "run", run)
    return calls


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())}


STREAM = {"n": 10, "batch_size": 2, "seed": 3, **QUICK}  # 5 batches


def test_streaming_writes_manifest_and_shards_and_returns_a_shard_backed_set(tmp_path: Path):
    out = tmp_path / "synth"
    ds = synthesize(_teacher(), out_dir=out, **STREAM)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] + [shard_name(i) for i in range(5)]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["n"] == 10 and manifest["batch_sizes"] == [2] * 5 and manifest["seed"] == 3
    assert manifest["config"]["iterations"] == 3
    shard = torch.load(out / shard_name(1), weights_only=True)
    assert set(shard) >= {"images", "labels", "batch", "stats"} and shard["batch"] == 1
    # one chunk per shard, memory-mapped from the shard files
    assert len(ds._images) == 5
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(out / shard_name(0)) in maps.read_text()
    loaded = SyntheticImages.load(out)
    assert torch.equal(loaded.images, ds.images) and torch.equal(loaded.labels, ds.labels)
    # the same images as an in-memory run
    memory = synthesize(_teacher(), **STREAM)
    assert torch.equal(memory.images, ds.images) and torch.equal(memory.labels, ds.labels)
    assert ds.mean == memory.mean and ds.std == memory.std
    # per-batch statistics travel with the shards (seconds differ between runs)
    drop = ("seconds",)
    assert [{k: v for k, v in st.items() if k not in drop} for st in loaded.meta["stats"]] == [
        {k: v for k, v in st.items() if k not in drop} for st in memory.meta["stats"]
    ]


def test_resume_after_interruption_is_bitwise_identical_and_skips_finished_shards(
    tmp_path: Path, monkeypatch
):
    reference = synthesize(_teacher(), out_dir=tmp_path / "ref", **STREAM)
    out = tmp_path / "synth"
    calls = _counting_run(monkeypatch, raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        synthesize(_teacher(), out_dir=out, **STREAM)
    assert calls["n"] == 3
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, shard_name(0), shard_name(1)]
    with pytest.raises(FileNotFoundError, match="rerun"):
        SyntheticImages.load(out)
    before = _mtimes(out)

    calls = _counting_run(monkeypatch)
    resumed = synthesize(_teacher(), out_dir=out, **STREAM)
    assert calls["n"] == 3  # batches 2, 3, 4 only
    after = _mtimes(out)
    assert all(after[name] == before[name] for name in before)  # finished shards untouched
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.labels, reference.labels)

    # a lost last shard is recomputed alone, to the same bits
    (out / shard_name(4)).unlink()
    calls = _counting_run(monkeypatch)
    again = synthesize(_teacher(), out_dir=out, **STREAM)
    assert calls["n"] == 1
    assert torch.equal(again.images, reference.images)

    # a finished directory is returned without any work
    calls = _counting_run(monkeypatch)
    synthesize(_teacher(), out_dir=out, **STREAM)
    assert calls["n"] == 0


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"seed": 4}, "seed"),
        ({"iterations": 4}, "config"),
        ({"n": 12}, "n"),
        ({"labels": [0, 1] * 5}, "labels_sha"),
        ({"teacher": "other"}, "teacher"),
    ],
)
def test_directory_made_with_other_settings_is_refused_and_left_alone(
    tmp_path: Path, monkeypatch, change: dict[str, object], key: str
):
    out = tmp_path / "synth"
    calls = _counting_run(monkeypatch, raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        synthesize(_teacher(), out_dir=out, **STREAM)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kwargs = {**STREAM, **change}
    teacher = _teacher(seed=1) if kwargs.pop("teacher", None) else _teacher()
    calls = _counting_run(monkeypatch)
    with pytest.raises(ValueError, match=f"different settings.*{key}"):
        synthesize(teacher, out_dir=out, **kwargs)
    assert calls["n"] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------- Adaptive DeepInversion
def test_adaptive_deepinversion_runs_and_leaves_the_student_alone():
    teacher, student = _teacher(), _teacher(seed=7).train()
    t_before, s_before = _state(teacher), _state(student)
    cfg = InversionConfig(competition_weight=1.0)
    ds = synthesize(teacher, 8, batch_size=4, config=cfg, student=student, **QUICK)
    plain = synthesize(teacher, 8, batch_size=4, **QUICK)
    assert torch.isfinite(ds.images).all() and ds.images.shape == (8, 3, 8, 8)
    assert not torch.equal(ds.images, plain.images)  # the competition term changed the images
    assert _state(teacher) == t_before and _state(student) == s_before
    assert _no_hooks(teacher) and _no_hooks(student)
    assert ds.meta["student"] == fingerprint(student)


def test_competition_without_student_is_a_value_error():
    with pytest.raises(ValueError, match="student"):
        synthesize(
            _teacher(), 4, batch_size=4, config=InversionConfig(competition_weight=0.5), **QUICK
        )


# --------------------------------------------------------------------------- bad input
def test_teacher_without_batchnorm_is_refused():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(ValueError, match="BatchNorm"):
        synthesize(net, 4, batch_size=4, **QUICK)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 1}, "n must be"),
        ({"n": -3}, "n must be"),
        ({"n": 2.5}, "n must be"),
        ({"batch_size": 1}, "batch_size"),
        ({"labels": [0, 1, 2, 4]}, r"\[0, 4\)"),
        ({"labels": [0, 1, -1, 2]}, r"\[0, 4\)"),
        ({"labels": [0, 1, 2]}, "expected n=4"),
        ({"labels": [0, 1, 2, 3, 0]}, "expected n=4"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, object], match: str):
    teacher = _teacher().train()
    before = _state(teacher)
    args = {"n": 4, "batch_size": 4, **QUICK, **kwargs}
    with pytest.raises(ValueError, match=match):
        synthesize(teacher, **args)
    assert _state(teacher) == before and _no_hooks(teacher)


class _NanAfter(nn.Module):
    """Wraps a teacher; its logits turn NaN after ``finite_calls`` forward passes."""

    def __init__(self, net: nn.Module, finite_calls: int) -> None:
        super().__init__()
        self.net, self.finite_calls, self.calls = net, finite_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.net(x)
        return out * float("nan") if self.calls > self.finite_calls else out


def test_non_finite_loss_is_a_floating_point_error_naming_the_batch():
    teacher = _NanAfter(_teacher(), finite_calls=1)  # only the shape probe is finite
    before = _state(teacher)
    with pytest.raises(FloatingPointError, match="batch 0"):
        synthesize(teacher, 8, batch_size=4, **QUICK)
    assert _state(teacher) == before and _no_hooks(teacher)


def test_divergence_with_huge_lr_is_a_floating_point_error():
    cfg = InversionConfig(lr=1e30, clip=False, lr_schedule="constant")
    with pytest.raises(FloatingPointError, match="batch 0"):
        synthesize(_teacher(), 8, batch_size=4, config=cfg, **QUICK)


def test_non_finite_loss_keeps_finished_shards(tmp_path: Path):
    # the probe, then (3 iterations + 1 final measurement) for each of batches 0 and 1
    teacher = _NanAfter(_teacher(), finite_calls=1 + 2 * 4)
    out = tmp_path / "synth"
    with pytest.raises(FloatingPointError, match=r"batch 2.*finished shards kept") as err:
        synthesize(teacher, out_dir=out, **STREAM)
    assert str(out) in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, shard_name(0), shard_name(1)]
    assert torch.isfinite(torch.load(out / shard_name(1), weights_only=True)["images"]).all()


# --------------------------------------------------------------------------- helpers
def test_bn_statistics_collects_one_loss_per_bn_and_removes_hooks_on_exception():
    net = _teacher()
    with bn_statistics(net, first_multiplier=10.0) as losses:
        net(torch.randn(4, 3, 8, 8))
        assert len(losses) == 2 and all(float(v.detach()) > 0 for v in losses)
        assert not _no_hooks(net)
    assert _no_hooks(net)
    with pytest.raises(RuntimeError, match="boom"), bn_statistics(net):
        net(torch.randn(4, 3, 8, 8))
        raise RuntimeError("boom")
    assert _no_hooks(net)


def test_bn_statistics_loss_is_zero_when_the_batch_matches_the_running_stats():
    bn = nn.BatchNorm2d(3).eval()
    x = torch.randn(16, 3, 4, 4)
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    with bn_statistics(bn) as losses:
        bn(x)
    assert float(losses[0]) == pytest.approx(0.0, abs=1e-5)


def test_borrowed_restores_flags_on_exception():
    net = _teacher().train()
    net[0].weight.requires_grad_(False)
    flags = [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]
    with pytest.raises(RuntimeError), borrowed(net, None):
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        raise RuntimeError
    assert (
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
    ) == flags


def test_total_variation_zero_for_constant_and_positive_otherwise():
    l1, l2 = total_variation(torch.full((2, 3, 5, 5), 0.7))
    assert float(l1) == 0 and float(l2) == 0
    l1, l2 = total_variation(torch.randn(2, 3, 5, 5))
    assert float(l1) > 0 and float(l2) > 0
    x = torch.zeros(1, 1, 4, 4)
    x[..., 1, 1] = 1.0
    smooth = torch.zeros(1, 1, 4, 4)
    smooth[..., 1, 1] = 0.5
    assert float(total_variation(smooth)[1]) < float(total_variation(x)[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "iterations"),
        ({"lr": 0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"jitter": -1}, "jitter"),
        *[
            ({name: -1.0}, name)
            for name in (
                "bn_weight",
                "ce_weight",
                "tv_l2_weight",
                "tv_l1_weight",
                "l2_weight",
                "competition_weight",
                "first_bn_multiplier",
            )
        ],
    ],
)
def test_inversion_config_validation(kwargs: dict[str, object], match: str):
    with pytest.raises(ValueError, match=match):
        InversionConfig(**kwargs)


def test_inversion_config_defaults_and_iterations_shortcut():
    cfg = InversionConfig()
    assert cfg.iterations == 200 and cfg.ce_weight == 4.0
    ds = synthesize(_teacher(), 4, batch_size=4, config=cfg, **QUICK)  # iterations=3 overrides
    assert ds.meta["config"] == {**dataclasses.asdict(cfg), "iterations": 3}


# --------------------------------------------------------------------------- real teacher / GPU
@pytest.mark.slow
def test_resnet20_teacher_reaches_targets_and_matches_bn_statistics(shared_dir: Path):
    from recoverprune.models import load_model

    path = shared_dir / "teachers" / "resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    teacher = load_model("resnet20", path)
    before = fingerprint(teacher)
    ds = synthesize(teacher, 64, batch_size=64, iterations=60, device="cpu", progress=False)
    s = ds.meta["stats"][0]
    # measured (seeds 0-2, CPU, 1 thread): accuracy 0.88-1.0, bn_loss_final / bn_loss_first
    # 0.14-0.15 (458 -> 69 at seed 0)
    assert s["accuracy"] > 0.5
    assert s["bn_loss_final"] < s["bn_loss_first"] / 3
    assert ds.images.shape == (64, 3, 32, 32)
    assert fingerprint(teacher) == before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_default_fast_path_is_finite_and_close_to_fp32_eager():
    teacher = _teacher()
    before = _state(teacher)
    kwargs = {
        "n": 32,
        "batch_size": 32,
        "iterations": 20,
        "input": InputSpec(size=8),
        "progress": False,
        "device": "cuda",
    }
    fast = synthesize(teacher, **kwargs)  # default: bf16 autocast, channels_last, compile
    ref = synthesize(teacher, accel=Accel(amp="off", channels_last=False, compile=False), **kwargs)
    s, r = fast.meta["stats"][0], ref.meta["stats"][0]
    assert torch.isfinite(fast.images).all()
    assert all(math.isfinite(s[k]) for k in ("bn_loss_first", "bn_loss_final", "accuracy"))
    assert s["bn_loss_final"] < s["bn_loss_first"]
    assert s["bn_loss_first"] == pytest.approx(r["bn_loss_first"], rel=0.1)
    assert s["bn_loss_final"] == pytest.approx(r["bn_loss_final"], rel=0.3, abs=0.2)
    assert _state(teacher) == before and _no_hooks(teacher)
