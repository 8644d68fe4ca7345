"""compress(quantize=...): the resumable INT8 stage, its report entries, its early refusals;
and the CLI's --quantize int8 and `recoverprune quantize --eval-data`."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict

import pytest
import torch
from torch import nn

import recoverprune.pipeline.compress as compress_mod
import recoverprune.pipeline.quantize as quantize_mod
import recoverprune.pipeline.report as report_mod
from _nets import calibrated, tiny_bn_net
from recoverprune import Preset, QuantConfig, compress
from recoverprune.core.spec import InputSpec
from recoverprune.core.stages import StageMismatch
from recoverprune.pipeline.checks import onnx_key

pytest.importorskip("onnxruntime", reason='quantize needs pip install ".[export]"')
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = Preset(n=16, iterations=2, batch_size=8, epochs=1, check_n=8)
CFG = QuantConfig(calibration_images=16)


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch):
    monkeypatch.setattr(report_mod, "LATENCY_SECONDS", 0.0)  # 3 rounds: enough to test


def _teacher(net: nn.Module | None = None) -> nn.Module:
    net = calibrated(net if net is not None else tiny_bn_net(), passes=1)
    net.pretrained_cfg = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return net


def _run(out, quantize=CFG, **kw):
    return compress(
        _teacher(), 0.5, out_dir=out, preset=TINY, progress=False, quantize=quantize, **kw
    )


def _fail(*args, **kwargs):
    raise AssertionError("computed what should have been skipped or refused first")


def test_the_stage_writes_the_int8_file_and_the_report(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 4, (24,), generator=g)
    res = _run(tmp_path, eval_data=(x, y))
    path = tmp_path / "student.int8.onnx"
    report = json.loads((tmp_path / "report.json").read_text())
    int8 = report["int8"]
    assert int8["path"] == "student.int8.onnx" and int8["bytes"] == path.stat().st_size
    assert int8["config"] == asdict(CFG)
    assert isinstance(int8["top1"], float) and set(report["top1"]) == {
        "teacher",
        "pruned",
        "recovered",
    }
    lat = int8["latency"]
    assert lat["threads"] == 1 and lat["runtime"].startswith("onnxruntime ")
    assert set(lat["batches"]) == {"1", "64"}
    for times in lat["batches"].values():
        assert set(times) == {"teacher", "student", "int8"} and min(times.values()) > 0
    models = int8["models"]
    assert models["int8"]["bytes"] == path.stat().st_size and models["student"]["bytes"] > 0
    assert models["teacher"]["params"] == sum(p.numel() for p in tiny_bn_net().parameters())
    assert models["int8"]["macs"] == models["student"]["macs"] > 0
    assert "quantize" in report["seconds"] and "latency" in report["seconds"]
    assert onnx_key(path)["config"] == asdict(CFG)
    q = quantize_mod.QuantizedModel(str(path), InputSpec.of(res.student))
    with torch.no_grad():
        agree = (q(x).argmax(1) == res.student(x).argmax(1)).float().mean()
    assert agree >= 0.75


def test_a_rerun_skips_the_finished_stage(tmp_path, monkeypatch):
    _run(tmp_path)
    before = (tmp_path / "student.int8.onnx").read_bytes()
    monkeypatch.setattr(quantize_mod, "quantize", _fail)
    report = _run(tmp_path).report
    assert (tmp_path / "student.int8.onnx").read_bytes() == before
    assert report["int8"]["bytes"] == len(before)


def test_a_kill_in_the_stage_leaves_no_half_file_and_the_next_run_completes(tmp_path, monkeypatch):
    real = quantize_mod.quantize

    def killed(*args, **kwargs):
        real(*args, **kwargs)  # the file is written, its key not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize_mod, "quantize", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    assert not (tmp_path / "student.int8.onnx").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".student.int8")]
    monkeypatch.undo()
    _run(tmp_path)
    assert onnx_key(tmp_path / "student.int8.onnx")["config"]["calibration_images"] == 16


def test_other_settings_are_refused_by_name_or_recomputed_with_overwrite(tmp_path):
    _run(tmp_path)
    other = QuantConfig(calibration_images=8)
    with pytest.raises(
        StageMismatch, match=r"student\.int8\.onnx was made with different .*config"
    ):
        _run(tmp_path, quantize=other)
    _run(tmp_path, quantize=other, overwrite=True)
    assert onnx_key(tmp_path / "student.int8.onnx")["config"]["calibration_images"] == 8


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)  # no ONNX symbolic


def test_a_model_onnx_cannot_express_is_refused_before_any_compute(tmp_path, monkeypatch):
    net = tiny_bn_net()
    net.insert(3, _Bessel())
    monkeypatch.setattr(compress_mod, "prune", _fail)
    monkeypatch.setattr(compress_mod, "synthesize", _fail)
    with pytest.raises(ValueError, match=r"layer 3 \(_Bessel\).*aten::i0"):
        compress(_teacher(net), 0.5, out_dir=tmp_path, preset=TINY, progress=False, quantize=CFG)


def test_without_onnxruntime_the_install_hint_comes_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    monkeypatch.setattr(compress_mod, "prune", _fail)
    with pytest.raises(ImportError, match=r'pip install "recoverprune\[export\]"'):
        _run(tmp_path)


def test_a_source_without_a_fixed_set_is_refused_at_once(tmp_path, monkeypatch):
    from recoverprune.experimental.stream import StreamSource

    monkeypatch.setattr(compress_mod, "preflight", _fail)
    with pytest.raises(ValueError, match="makes none"):
        _run(tmp_path, source=StreamSource())
    with pytest.raises(ValueError, match='"int8" or a QuantConfig'):
        _run(tmp_path, quantize="int4")


def test_the_compress_command_passes_quantize_int8(tmp_path, monkeypatch, capsys):
    import recoverprune
    from recoverprune.cli import main
    from recoverprune.pipeline.report import CompressResult

    seen = {}

    def fake(teacher, how, **kwargs):
        seen.update(kwargs)
        return CompressResult(teacher, {})

    monkeypatch.setattr(recoverprune, "compress", fake)
    args = ["compress", "--out", str(tmp_path / "q"), "--quiet", "--preset", "tiny"]
    assert main([*args, "--quantize", "int8"]) == 0
    assert seen["quantize"] == "int8"
    q = tmp_path / "q"
    assert f"wrote {q / 'student.pt'}, {q / 'student.int8.onnx'} and " in capsys.readouterr().out
    assert main(args) == 0 and seen["quantize"] is None
    assert main([*args, "--quantize", "int4"]) == 2


def test_the_quantize_command_prints_top1_and_latency(tmp_path, capsys, monkeypatch):
    from recoverprune import SyntheticImages
    from recoverprune.cli import main
    from recoverprune.data.synthetic_io import export_images

    teacher = _teacher()
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "net.pt")
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(32, 3, 8, 8, generator=g), torch.arange(32) % 4
    SyntheticImages(x, labels).save(tmp_path / "cal")
    export_images(SyntheticImages(x, labels, mean=0.5, std=0.25), tmp_path / "data" / "test")
    args = [
        "quantize",
        "--arch",
        "module:_nets:tiny_bn_net",
        "--checkpoint",
        str(tmp_path / "net.pt"),
    ]
    args += ["--synthetic", str(tmp_path / "cal"), "--out", str(tmp_path / "net.int8.onnx")]
    args += ["--image-size", "8", "--mean", "0.5", "--std", "0.25"]
    assert main([*args, "--eval-data", str(tmp_path / "data")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert re.search(r"top-1 fp32 \d+\.\d\d %, INT8 \d+\.\d\d % \(32 images\)", out), out
    assert "batch 1: fp32" in out and "batch 64: fp32" in out and "1 thread" in out
    import recoverprune

    configs = []

    def seen(model, data, *, config, **kwargs):
        configs.append(config)
        return quantize_mod.quantize(model, data, config=config, **kwargs)

    monkeypatch.setattr(recoverprune, "quantize", seen)
    dfq = ["--equalize", "--bias-correction", "--distill-steps", "2", "--method", "percentile"]
    assert main([*args, *dfq]) == 0, capsys.readouterr().err
    want = QuantConfig(method="percentile", equalize=True, bias_correction=True, distill_steps=2)
    assert configs == [want]


def test_side_by_side_interleaves_and_stops_when_the_time_is_spent(tmp_path):
    from recoverprune.evaluation.latency import cpu_features, side_by_side

    now, calls = [0.0], []

    def runner(name: str, cost: float):
        def run() -> None:
            calls.append(name)
            now[0] += cost

        return run

    runners = {"a": runner("a", 1.0), "b": runner("b", 2.0)}
    times = side_by_side(runners, min_seconds=10, clock=lambda: now[0])
    assert calls[:6] == ["a", "b", "a", "b", "b", "a"]  # warm-up, then alternating order
    assert times == {"a": [1.0] * 4, "b": [2.0] * 4}  # 3 rounds took 9 s: one more
    assert len(side_by_side(runners, min_seconds=0, clock=lambda: now[0])["a"]) == 3
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni amx_int8 sse\n")
    assert cpu_features(info) == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]
    assert cpu_features(tmp_path / "missing") == []
