"""The amortised generator synthesizer and the stream recovery learns from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recoverprune import DistillConfig, prune, recover
from recoverprune.core.io import fingerprint
from recoverprune.core.runtime import resolve
from recoverprune.core.spec import InputSpec
from recoverprune.distill import loop as loop_mod
from recoverprune.distill.source import TransferSource
from recoverprune.experimental import amortised
from recoverprune.experimental.amortised import synthesize_with_generator
from recoverprune.experimental.generator import AmortisedSynthesizer, Generator, GeneratorConfig
from recoverprune.experimental.stream import StreamConfig, StreamSource, SyntheticStream

SMALL = DistillConfig(batch_size=8)  # the default 128 would make every step 128 images
TINY = GeneratorConfig(width=16, latent_dim=8, warmup_batches=1, warmup_steps=3, inner_steps=2)


def _net(channels: int = 3, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )
    for m in net.modules():  # statistics a random image cannot match by chance
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _stream(net: nn.Module, size: int = 12, **kw) -> SyntheticStream:
    cfg = dict(batch_size=8, initial_batches=2, batches_per_epoch=1, steps_per_epoch=2)
    cfg.update(kw)
    spec = InputSpec.of(net, image_size=size)
    return SyntheticStream(net, StreamConfig(generator=TINY, **cfg), input=spec)


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@pytest.mark.parametrize(
    ("channels", "size"), [(1, (28, 28)), (3, (32, 32)), (3, (64, 48)), (3, (224, 224))]
)
def test_generator_makes_valid_images_of_any_input(channels, size):
    spec = InputSpec(channels=channels, size=size, mean=0.5, std=0.25)
    g = Generator(spec, latent_dim=8, width=16)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, channels, *size)
    assert x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25  # valid pixels


def test_batches_depend_only_on_seed_and_state_and_resume_bitwise():
    net, rt = _net(), resolve("cpu")
    spec = InputSpec(size=12)
    a = AmortisedSynthesizer(net, spec, 4, TINY, rt, seed=3)
    first = [a.make_batch(8)[0] for _ in range(2)]
    state = a.state_dict()
    third = a.make_batch(8)[0]
    b = AmortisedSynthesizer(net, spec, 4, TINY, rt, seed=3)
    assert all(torch.equal(x, b.make_batch(8)[0]) for x in first)
    c = AmortisedSynthesizer(net, spec, 4, TINY, rt, seed=3)
    c.load_state_dict(state)
    assert torch.equal(c.make_batch(8)[0], third)
    other = AmortisedSynthesizer(net, spec, 4, TINY, rt, seed=4)
    assert not torch.equal(other.make_batch(8)[0], first[0])


def test_the_shared_generator_learns_across_batches():
    """Reptile moves the initialisation: the first step of later batches starts lower."""
    net, rt = _net(), resolve("cpu")
    cfg = GeneratorConfig(width=16, latent_dim=16, warmup_batches=0, inner_steps=3)
    syn = AmortisedSynthesizer(net, InputSpec(size=12), 4, cfg, rt)
    before = {k: v.clone() for k, v in syn.generator.state_dict().items()}
    syn.make_batch(8)
    after = syn.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert syn.bn.estimate[0] is not None  # the running estimate holds the first batch


def test_adversarial_term_leaves_the_student_as_it_was():
    net = _net()
    student = prune(net, 0.5).train()
    student[0].weight.grad = None
    flags = [p.requires_grad for p in student.parameters()]
    cfg = GeneratorConfig(
        width=16,
        latent_dim=8,
        warmup_batches=0,
        inner_steps=2,
        adversarial_weight=1.0,
        adversarial_after=0,
    )
    syn = AmortisedSynthesizer(net, InputSpec(size=12), 4, cfg, resolve("cpu"))
    *_, stats = syn.make_batch(8, student)
    assert "adv" in stats
    assert student.training and [p.requires_grad for p in student.parameters()] == flags
    assert all(p.grad is None for p in student.parameters())


def test_generator_set_leaves_the_teacher_and_resumes_after_a_kill(tmp_path, monkeypatch):
    net = _net()
    before = fingerprint(net)
    kw = dict(config=TINY, batch_size=8, input=InputSpec(size=12), progress=False)
    whole = synthesize_with_generator(net, 32, **kw)
    assert fingerprint(net) == before and _hooks(net) == 0 and not net.training
    assert whole.images.shape == (32, 3, 12, 12)
    assert whole.meta["config"]["method"] == "generator"
    assert sorted(whole.labels.tolist()) == sorted([0, 1, 2, 3] * 8)  # balanced

    real = amortised.AmortisedSynthesizer.make_batch
    calls = {"n": 0}

    def dies(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(amortised.AmortisedSynthesizer, "make_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        synthesize_with_generator(net, 32, out_dir=tmp_path / "s", **kw)
    monkeypatch.setattr(amortised.AmortisedSynthesizer, "make_batch", real)
    resumed = synthesize_with_generator(net, 32, out_dir=tmp_path / "s", **kw)
    assert torch.equal(resumed.images, whole.images)
    assert torch.equal(resumed.labels, whole.labels)


def test_stream_is_the_same_for_a_seed_and_keeps_the_teacher_and_masks():
    net = _net()
    before = fingerprint(net)
    students = []
    for _ in range(2):
        stream = _stream(net, pool_size=24)
        pruned = prune(net, 0.5)
        masks = {n: m.clone() for n, m in pruned.named_buffers() if n.endswith("weight_mask")}
        s = recover(net, pruned, stream, epochs=4, config=SMALL, progress=False)
        assert len(stream) <= 24 and stream.made == 8 * (2 + 3)
        for name, mask in masks.items():  # every pruned weight still zero, no other
            layer = s.get_submodule(name.rsplit(".", 1)[0])
            assert torch.equal(layer.weight_mask, mask)
            assert torch.equal(layer.weight == 0, mask == 0)
        students.append(s)
    a, b = (s.state_dict() for s in students)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fingerprint(net) == before and _hooks(net) == 0


def test_pool_stays_within_its_bound():
    net = _net()
    stream = _stream(net, pool_size=16, batches_per_epoch=2)
    recover(net, prune(net, 0.5), stream, epochs=3, config=SMALL, progress=False)
    assert stream.made == 8 * (2 + 2 * 2) and len(stream) == 16
    assert stream.images.dtype == torch.uint8


def test_large_inputs_keep_the_pool_within_its_bytes():
    net = _net()
    per_image = 3 * 12 * 12  # bytes of one 8-bit 12x12 RGB image
    stream = _stream(net, pool_size=64, batches_per_epoch=2, pool_bytes=20 * per_image)
    recover(net, prune(net, 0.5), stream, epochs=3, config=SMALL, progress=False)
    assert stream.made == 8 * (2 + 2 * 2) and len(stream) == 20
    assert stream.images.numel() <= 20 * per_image
    assert StreamConfig(batch_size=8, pool_bytes=1).capacity((3, 12, 12)) == 8  # one batch


def test_kill_mid_stream_resumes_to_the_same_student(tmp_path, monkeypatch):
    net = _net()
    whole = recover(net, prune(net, 0.5), _stream(net), epochs=4, config=SMALL, progress=False)
    real = loop_mod._train_epoch

    def dies(loop, epoch, *a, **k):  # the checkpoint then holds epoch 2 and the stream's pool
        if epoch == 2:
            raise KeyboardInterrupt
        return real(loop, epoch, *a, **k)

    monkeypatch.setattr(loop_mod, "_train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        recover(
            net,
            prune(net, 0.5),
            _stream(net),
            epochs=4,
            out_dir=tmp_path,
            config=SMALL,
            progress=False,
        )
    monkeypatch.setattr(loop_mod, "_train_epoch", real)
    resumed = recover(
        net, prune(net, 0.5), _stream(net), epochs=4, out_dir=tmp_path, config=SMALL, progress=False
    )
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stream_of_another_teacher_is_refused():
    net, other = _net(), _net()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="another teacher"):
        recover(other, prune(other, 0.5), _stream(net), epochs=1, config=SMALL, progress=False)


def test_gray_28px_and_torchvision_64px_on_a_tiny_budget():
    gray = _net(channels=1, classes=10)
    stream = SyntheticStream(
        gray,
        StreamConfig(batch_size=10, initial_batches=1, steps_per_epoch=1, generator=TINY),
        input=InputSpec.of(gray, image_size=28, mean=0.286, std=0.353),
    )
    out = recover(gray, prune(gray, 0.5), stream, epochs=2, config=SMALL, progress=False)
    assert out(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    from torchvision.models import resnet18

    torch.manual_seed(0)
    tv = resnet18(num_classes=10).eval()
    cfg = StreamConfig(
        batch_size=4,
        initial_batches=1,
        batches_per_epoch=1,
        steps_per_epoch=1,
        pool_size=8,
        generator=TINY,
    )
    stream = SyntheticStream(tv, cfg, input=InputSpec.of(tv, image_size=64))
    quick = DistillConfig(batch_size=4, reconstruct=False)  # the refit of 20 layers: minutes
    student = recover(tv, prune(tv, 0.5), stream, epochs=2, config=quick, progress=False)
    assert stream.image_shape == (3, 64, 64) and len(stream) == 8
    assert student(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_generator_config_refuses_nonsense():
    with pytest.raises(ValueError, match="inner_steps"):
        GeneratorConfig(inner_steps=0)
    with pytest.raises(ValueError, match="pool_size"):
        StreamConfig(batch_size=64, pool_size=32)


def test_the_stream_is_a_transfer_source_and_its_factory_describes_it():
    from recoverprune import PRESETS

    stream = _stream(_net())
    assert isinstance(stream, TransferSource)
    assert stream.fill is not None and len(stream.fill) == 3  # black crops, not zero
    from types import SimpleNamespace

    cfg = StreamSource().describe(SimpleNamespace(budget=PRESETS["tiny"]))
    assert cfg["method"] == "stream" and cfg["stream"]["batch_size"] == 16


def test_distill_names_no_concrete_source():
    """recover() reads the protocol: distill/ imports no stream and tests no source's type."""
    import ast
    from pathlib import Path

    import recoverprune.distill as distill

    for path in Path(distill.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "experimental" not in (node.module or ""), path
                assert "stream" not in (node.module or ""), path
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                assert not names & {"SyntheticStream", "SyntheticImages", "Labelled"}, path


@pytest.mark.slow
def test_compress_streams_from_the_cli(tmp_path, capsys):
    from recoverprune.cli import main

    out = tmp_path / "run"
    args = ["compress", "--preset", "tiny", "--synthesis", "stream", "--epochs", "2"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["synthesis"]["method"] == "stream" and report["synthesis"]["made"] == 16 * (2 + 2)
    assert not (out / "synthetic").exists() and (out / "check").is_dir()
    said = capsys.readouterr()
    assert "generator batches streamed" in said.out + said.err
    assert main([*args, "--out", str(out), "--no-progress"]) == 0  # resumes: done
    fixed = [a for a in args if a not in ("--synthesis", "stream")]
    assert main([*fixed, "--out", str(out), "--no-progress"]) == 2  # another source: refused
    assert "different settings: synthetic" in capsys.readouterr().err
