"""The command line: every command end to end on tiny inputs, and its error messages."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from recoverprune import SyntheticImages, sparsity
from recoverprune.cli import main
from recoverprune.models import load_model, resnet20


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = resnet20()
    with torch.no_grad():  # give BN real statistics so synthesis has something to match
        model.train()
        model(torch.randn(16, 3, 32, 32))
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / "test" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(root / "test" / c / f"{i}.png")
    return root


def test_models_lists_zoo(capsys):
    assert main(["models"]) == 0
    assert "resnet20" in capsys.readouterr().out.split()


def test_evaluate_folder_and_tar(ckpt, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECOVERPRUNE_CACHE", str(tmp_path / "cache"))
    assert (
        main(
            [
                "evaluate",
                "--arch",
                "resnet20",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(folder),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "top-1" in out and "6 images" in out
    tar = tmp_path / "data.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder / "test", arcname="test")
    assert (
        main(
            [
                "evaluate",
                "--arch",
                "resnet20",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(tar),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "6 images" in capsys.readouterr().out


def test_prune_writes_checkpoint_that_evaluate_accepts(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    assert (
        main(
            [
                "prune",
                "--arch",
                "resnet20",
                "--checkpoint",
                str(ckpt),
                "--amount",
                "0.75",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "total" in text and "75.00%" in text
    model = load_model("resnet20", out)
    assert sparsity(model).zeros == round(0.75 * sparsity(model).total)
    assert (
        main(
            [
                "evaluate",
                "--arch",
                "resnet20",
                "--checkpoint",
                str(out),
                "--data",
                str(folder),
                "--no-progress",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )


def test_synthesize_then_recover(ckpt, tmp_path):
    synth = tmp_path / "synth"
    assert (
        main(
            [
                "synthesize",
                "--arch",
                "resnet20",
                "--checkpoint",
                str(ckpt),
                "--n",
                "8",
                "--batch-size",
                "4",
                "--iterations",
                "2",
                "--out",
                str(synth),
                "--no-progress",
                "--di-lr",
                "0.1",
            ]
        )
        == 0
    )
    ds = SyntheticImages.load(synth)
    assert len(ds) == 8 and ds.meta["config"]["lr"] == 0.1
    assert (synth / "grid.png").is_file()
    pruned = tmp_path / "pruned.pt"
    main(
        [
            "prune",
            "--arch",
            "resnet20",
            "--checkpoint",
            str(ckpt),
            "--amount",
            "0.5",
            "--out",
            str(pruned),
        ]
    )
    rec = tmp_path / "rec"
    assert (
        main(
            [
                "recover",
                "--arch",
                "resnet20",
                "--teacher",
                str(ckpt),
                "--student",
                str(pruned),
                "--synthetic",
                str(synth),
                "--out",
                str(rec),
                "--epochs",
                "1",
                "--no-progress",
                "--kd-batch-size",
                "4",
                "--kd-bn-mode",
                "frozen",
            ]
        )
        == 0
    )
    student = load_model("resnet20", rec / "student.pt")
    assert sparsity(student).zeros == round(0.5 * sparsity(student).total)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "--arch", "resnet99", "--checkpoint", "{ckpt}", "--data", "{folder}"],
            "resnet20",
        ),
        (
            [
                "evaluate",
                "--arch",
                "resnet20",
                "--checkpoint",
                "{tmp}/nope.pt",
                "--data",
                "{folder}",
            ],
            "not found",
        ),
        (
            ["evaluate", "--arch", "resnet20", "--checkpoint", "{garbage}", "--data", "{folder}"],
            "not a readable PyTorch checkpoint",
        ),
        (
            ["evaluate", "--arch", "resnet32", "--checkpoint", "{ckpt}", "--data", "{folder}"],
            "missing",
        ),
        (
            ["evaluate", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--data", "{tmp}/none"],
            "not found",
        ),
        (
            ["evaluate", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--data", "{empty}"],
            "empty",
        ),
        (
            ["evaluate", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--data", "{flat}"],
            "no 'test' folder",
        ),
        (
            ["evaluate", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--data", "{badtar}"],
            "corrupt or truncated",
        ),
        (
            [
                "prune",
                "--arch",
                "resnet20",
                "--checkpoint",
                "{ckpt}",
                "--amount",
                "1.5",
                "--out",
                "{tmp}/p.pt",
            ],
            "[0, 1)",
        ),
        (
            [
                "prune",
                "--arch",
                "resnet20",
                "--checkpoint",
                "{ckpt}",
                "--amount",
                "0.5",
                "--exclude",
                "nosuchlayer",
                "--out",
                "{tmp}/p.pt",
            ],
            "nosuchlayer",
        ),
    ],
)
def test_bad_input_gives_clear_error(argv, message, ckpt, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECOVERPRUNE_CACHE", str(tmp_path / "cache"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    (tmp_path / "empty").mkdir()
    flat = tmp_path / "flat"
    (flat / "x").mkdir(parents=True)
    (flat / "x" / "readme.txt").write_text("hi")
    badtar = tmp_path / "bad.tar.gz"
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as t:
        t.add(folder / "test", arcname="test")
    badtar.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    subs = {
        "ckpt": ckpt,
        "folder": folder,
        "tmp": tmp_path,
        "garbage": garbage,
        "empty": tmp_path / "empty",
        "flat": flat,
        "badtar": badtar,
    }
    argv = [a.format(**subs) for a in argv]
    code = main([*argv, "--no-progress"] if argv[0] == "evaluate" else argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not list((tmp_path / "cache").glob(".*tmp*")) if (tmp_path / "cache").exists() else True
    assert not (tmp_path / "p.pt").exists()


def test_compress_piped_prints_startup_progress_lines_and_records_threads(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("RECOVERPRUNE_PROGRESS_INTERVAL", "0.01")
    out = tmp_path / "run"
    argv = ["compress", "--preset", "tiny", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--threads", "1"]) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert (
        first.startswith("recoverprune compress: teacher bundled ResNet-20") and str(out) in first
    )
    assert "threads: 1 (from --threads" in err and "rough time:" in err
    for stage in ("DeepInversion", "Recovery"):
        lines = [line for line in err.splitlines() if line.startswith(f"{stage}: ")]
        assert len(lines) >= 3 and "steps/s" in lines[-1] and "ETA" in lines[-1]
    assert "held-out synthetic images" in err  # the final table, with the held-out size
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"]["threads"]["intra"] == 1
    assert report["runtime"]["threads"]["source"] == "--threads"
    assert report["runtime"]["machine"]["cpus_available"] >= 1
    assert report["agreement_images"] == 2  # 5 % of 32 images

    assert main([*argv, "--no-progress"]) == 0  # resumes: every stage is done
    err = capsys.readouterr().err
    assert "DeepInversion:" not in err and "Recovery:" not in err
    assert "recoverprune compress:" in err and "sparsity" in err  # summary and table stay

    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "wrote" in captured.out


def test_compress_help_documents_every_option_with_its_default():
    from recoverprune.cli import build_parser

    parser = build_parser("compress")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    compress = sub.choices["compress"]
    text = compress.format_help()
    assert "bundled" in text and all(p in text for p in ("tiny", "quick", "paper"))
    for action in compress._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            assert action.help, action.option_strings
            continue
        assert action.help and "default" in action.help, action.option_strings


def test_top_level_help_is_fast_and_does_not_import_torch():
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "recoverprune", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - t0
    assert "COMMAND" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "torch" not in imported
    assert seconds < 10  # about 0.3 s alone; generous for a busy machine
