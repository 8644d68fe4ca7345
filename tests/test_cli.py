"""The command line: every command end to end on tiny inputs, and its error messages."""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import tarfile
import tempfile
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
    for c in "cdefghij":  # one class folder per output of the 10-class models
        (root / "test" / c).mkdir()
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


# -- never a stale or silent result (issue 17) ---------------------------------------------


def _compress(ckpt: Path, out: Path, *extra: str) -> int:
    argv = ["compress", "--arch", "resnet20", "--checkpoint", str(ckpt), "--preset", "tiny"]
    return main([*argv, "--out", str(out), "--no-progress", *extra])


def _hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err, err
    return err


@pytest.mark.slow
def test_compress_refuses_another_amount_then_overwrites(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert _compress(ckpt, out, "--amount", "0.75") == 0
    before = (out / "student.pt").read_bytes()
    capsys.readouterr()
    assert _compress(ckpt, out, "--amount", "0.5") == 2
    err = _error(capsys)
    assert "amount (0.75 there, 0.5 now)" in err and "--overwrite" in err, err
    assert (out / "student.pt").read_bytes() == before
    assert json.loads((out / "report.json").read_text())["amount"] == 0.75
    assert _compress(ckpt, out, "--amount", "0.5", "--overwrite") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["amount"] == 0.5 and round(report["sparsity"], 2) == 0.5
    assert round(sparsity(load_model("resnet20", out / "student.pt")).overall, 2) == 0.5
    assert not _hidden(out)


@pytest.mark.parametrize("flag", [["--scope", "layerwise"], ["--exclude", "conv1"]])
def test_compress_refuses_another_scope_or_exclude(ckpt, tmp_path, capsys, flag):
    assert _compress(ckpt, tmp_path / "out") == 0
    assert _compress(ckpt, tmp_path / "out", *flag) == 2
    assert f"{flag[0][2:]} (" in _error(capsys)


def _synth_and_prune(ckpt: Path, tmp_path: Path, *amounts: str) -> Path:
    synth = tmp_path / "synth"
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(ckpt), "--n", "8"]
    argv += ["--batch-size", "4", "--iterations", "2", "--no-progress"]
    assert main([*argv, "--out", str(synth)]) == 0
    for amount in amounts:
        argv = ["prune", "--arch", "resnet20", "--checkpoint", str(ckpt), "--amount", amount]
        assert main([*argv, "--out", str(tmp_path / f"p{amount}.pt")]) == 0
    return synth


def _recover(ckpt: Path, student: Path, synth: Path, out: Path, *extra: str) -> int:
    argv = ["recover", "--arch", "resnet20", "--teacher", str(ckpt), "--student", str(student)]
    argv += ["--synthetic", str(synth), "--out", str(out), "--epochs", "1", "--no-progress"]
    return main([*argv, "--kd-batch-size", "4", *extra])


def test_recover_refuses_a_finished_recovery_of_another_student(ckpt, tmp_path, capsys):
    synth = _synth_and_prune(ckpt, tmp_path, "0.5", "0.9")
    rec = tmp_path / "rec"
    assert _recover(ckpt, tmp_path / "p0.5.pt", synth, rec) == 0
    before = (rec / "student.pt").read_bytes()
    capsys.readouterr()
    assert _recover(ckpt, tmp_path / "p0.9.pt", synth, rec) == 2
    captured = capsys.readouterr()
    assert "wrote" not in captured.out
    assert "student (" in captured.err and "--overwrite" in captured.err, captured.err
    assert (rec / "student.pt").read_bytes() == before
    assert _recover(ckpt, tmp_path / "p0.9.pt", synth, rec, "--overwrite") == 0
    assert round(sparsity(load_model("resnet20", rec / "student.pt")).overall, 2) == 0.9
    assert not _hidden(rec)


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_compress_checks_eval_data_before_any_compute(ckpt, folder, tmp_path, capsys, kind):
    data = tmp_path / "nope"
    if kind == "truncated":
        good = tmp_path / "good.tar.gz"
        with tarfile.open(good, "w:gz") as t:
            t.add(folder / "test", arcname="test")
        data = tmp_path / "bad.tar.gz"
        data.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out"
    os.environ["RECOVERPRUNE_CACHE"] = str(tmp_path / "cache")
    try:
        assert _compress(ckpt, out, "--eval-data", str(data)) == 2
    finally:
        del os.environ["RECOVERPRUNE_CACHE"]
    assert ("not found" if kind == "missing" else "corrupt or truncated") in _error(capsys)
    assert not (out / "pruned.pt").exists() and not (out / "synthetic").exists()


def test_nan_weights_are_named_before_any_compute(ckpt, folder, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    state["linear.bias"][1] = float("inf")
    bad = tmp_path / "nan.pt"
    torch.save({"state_dict": state}, bad)
    argvs = [
        ["evaluate", "--arch", "resnet20", "--checkpoint", str(bad), "--data", str(folder)],
        ["prune", "--arch", "resnet20", "--checkpoint", str(bad), "--amount", "0.5", "--out", "x"],
    ]
    for argv in argvs:
        assert main(argv) == 2
        err = _error(capsys)
        assert "NaN/Inf" in err and "conv1.weight" in err and "linear.bias" in err, err
    assert _compress(bad, tmp_path / "out") == 2
    assert "conv1.weight" in _error(capsys)
    assert not (tmp_path / "out" / "pruned.pt").exists()


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_read_only_output_directory(ckpt, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    monkeypatch.setattr(
        tempfile,
        "mkstemp",
        _raise(OSError(errno.EROFS, "Read-only file system", f"{ro}/.p.pt.12.ab12.tmp")),
    )
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(ckpt), "--amount", "0.5"]
    assert main([*argv, "--out", str(ro / "p.pt")]) == 2
    err = _error(capsys)
    assert f"cannot write {ro / 'p.pt'} (Read-only file system)" in err and "--out" in err, err
    assert _compress(ckpt, ro) == 2
    assert "cannot write" in _error(capsys)
    assert not (ro / "pruned.pt").exists() and not (ro / "synthetic").exists()


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234"), "full"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
    ],
)
def test_full_disk(ckpt, tmp_path, capsys, monkeypatch, exc, message):
    monkeypatch.setattr(torch, "save", _raise(exc))
    argv = ["prune", "--arch", "resnet20", "--checkpoint", str(ckpt), "--amount", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "p.pt")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "p.pt").exists() and not _hidden(tmp_path)


def test_undecodable_image_is_named(ckpt, folder, tmp_path, capsys):
    (folder / "test" / "a" / "bad.png").write_bytes(b"not an image")
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(folder)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"{folder / 'test' / 'a' / 'bad.png'} cannot be decoded" in err, err
    assert "delete or replace" in err


def test_corrupt_decoded_cache_is_rebuilt(ckpt, folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(folder)]
    argv += ["--cache-dir", str(cache), "--no-progress"]
    assert main(argv) == 0
    (cached,) = (cache / "decoded").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])
    assert main(argv) == 0
    assert "6 images" in capsys.readouterr().out
    assert len(torch.load(cached, weights_only=True)["labels"]) == 6


def test_corrupt_json_is_named(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "timing.json").write_bytes(b"\xcf\x80\xff{")
    assert _compress(ckpt, out) == 2
    err = _error(capsys)
    assert f"{out / 'timing.json'} is corrupt" in err and "delete it" in err, err
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "manifest.json").write_bytes(b"\xcf\x80")
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(ckpt), "--n", "4"]
    assert main([*argv, "--iterations", "1", "--out", str(synth), "--no-progress"]) == 2
    assert f"{synth / 'manifest.json'} is corrupt" in _error(capsys)


def test_evaluate_batch_size_zero(ckpt, folder, capsys):
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(folder)]
    assert main([*argv, "--batch-size", "0", "--no-progress"]) == 2
    assert "--batch-size: the value must be >= 1" in _error(capsys)


def test_corrupt_shard_is_explained_then_regenerated(ckpt, tmp_path, capsys):
    synth = _synth_and_prune(ckpt, tmp_path, "0.5")
    shard = synth / "shard-000001.pt"
    original = torch.load(shard, weights_only=True)["images"]
    shard.write_bytes(shard.read_bytes()[:200])
    assert _recover(ckpt, tmp_path / "p0.5.pt", synth, tmp_path / "rec") == 2
    err = _error(capsys)
    assert f"{shard} is not a readable shard" in err and "Rerun the synthesize" in err, err
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(ckpt), "--n", "8"]
    argv += ["--batch-size", "4", "--iterations", "2", "--no-progress"]
    assert main([*argv, "--out", str(synth)]) == 0
    assert torch.equal(torch.load(shard, weights_only=True)["images"], original)


def test_split_message_names_the_flag(ckpt, tmp_path, capsys):
    (tmp_path / "flat" / "x").mkdir(parents=True)
    (tmp_path / "flat" / "x" / "a.txt").write_text("hi")
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt)]
    assert main([*argv, "--data", str(tmp_path / "flat"), "--no-progress"]) == 2
    err = _error(capsys)
    assert "--split" in err and "split=" in err, err


def test_checkpoint_errors_carry_no_ansi_codes(folder, tmp_path, capsys):
    torch.save({"state_dict": {}, "obj": tarfile.TarInfo("x")}, tmp_path / "evil.pt")
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(tmp_path / "evil.pt")]
    assert main([*argv, "--data", str(folder), "--no-progress"]) == 2
    assert "never unpickled" in _error(capsys)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(ckpt, folder, tmp_path, monkeypatch):
    from recoverprune.core.io import CheckpointError

    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(tmp_path / "none.pt")]
    with pytest.raises(CheckpointError):
        main([*argv, "--data", str(folder), "--debug"])
    import recoverprune.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "evaluate", _raise(KeyError("a bug")))
    with pytest.raises(KeyError):
        main(["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(folder)])


def test_half_extracted_archive_is_cleaned(ckpt, folder, tmp_path):
    cache = tmp_path / "cache"
    leftover = cache / ".data-0123456789ab.999999999.x1y2"
    (leftover / "test" / "a").mkdir(parents=True)
    os.utime(leftover, (0, 0))
    tar = tmp_path / "data.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder / "test", arcname="test")
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(tar)]
    assert main([*argv, "--cache-dir", str(cache), "--no-progress"]) == 0
    assert not leftover.exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_corrupt_resume_state_says_delete_it(ckpt, tmp_path, capsys):
    synth = _synth_and_prune(ckpt, tmp_path, "0.5")
    rec = tmp_path / "rec"
    (rec / "recover-checkpoint.pt").parent.mkdir()
    (rec / "recover-checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    assert _recover(ckpt, tmp_path / "p0.5.pt", synth, rec) == 2
    err = _error(capsys)
    assert "recover-checkpoint.pt is corrupt or truncated" in err and "delete it" in err, err
    out = tmp_path / "out"
    out.mkdir()
    (out / "pruned.pt").write_bytes(b"garbage")
    assert _compress(ckpt, out) == 2
    assert f"{out / 'pruned.pt'} is corrupt or truncated" in _error(capsys)


def test_synthesize_checks_free_space_before_compute(ckpt, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1000))
    argv = ["synthesize", "--arch", "resnet20", "--checkpoint", str(ckpt), "--n", "8"]
    out = tmp_path / "synth"
    assert main([*argv, "--iterations", "1", "--out", str(out), "--no-progress"]) == 2
    err = _error(capsys)
    assert "no space left" in err and "needs about" in err and "are free" in err, err
    assert not list(out.glob("shard-*"))


def test_full_disk_while_extracting_is_not_called_a_corrupt_archive(
    ckpt, folder, tmp_path, capsys, monkeypatch
):
    tar = tmp_path / "data.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder / "test", arcname="test")
    monkeypatch.setattr(
        tarfile.TarFile, "extract", _raise(OSError(errno.ENOSPC, "No space left on device"))
    )
    argv = ["evaluate", "--arch", "resnet20", "--checkpoint", str(ckpt), "--data", str(tar)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 2
    err = _error(capsys)
    assert "no space left" in err and "corrupt" not in err, err
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


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
    assert "independent synthetic images" in err  # the final table, with the check-set size
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"]["threads"]["intra"] == 1
    assert report["runtime"]["threads"]["source"] == "--threads"
    assert report["runtime"]["machine"]["cpus_available"] >= 1
    assert report["check"]["images"] == 16  # the tiny preset's independent check set

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
