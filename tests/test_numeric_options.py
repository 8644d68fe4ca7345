"""Issue 38, causes 1 and 5: every number a user gives (flag or config field) is finite and
in range, or refused before any work by name with its range (CLI: argparse, exit 2)."""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import fields

import pytest

from recoverprune import BlockConfig, Calibration, ChannelConfig, DistillConfig, InversionConfig
from recoverprune.cli import main
from recoverprune.cli.parser import build_parser
from recoverprune.experimental.generator import GeneratorConfig
from recoverprune.experimental.latency import LatencyConfig
from recoverprune.experimental.stream import StreamConfig
from recoverprune.pipeline.presets import Preset
from recoverprune.pipeline.quantize import QuantConfig
from recoverprune.pruning.masks import UnstructuredConfig

NON_FINITE = ("nan", "inf", "-inf")
VALUES = (*NON_FINITE, "0", "-3", "1e30")


def _numeric(action: argparse.Action) -> bool:
    kind = action.type
    return kind in (int, float) or getattr(kind, "__qualname__", "").startswith(
        ("number.", "threads_count")
    )


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options() -> list[tuple[str, str, list[str]]]:
    """(command, flag, the command's required options) of every numeric option."""
    found = []
    for command, p in _commands().items():
        needed = []
        for a in p._actions:
            if a.required and a.option_strings:
                needed += [a.option_strings[0], "1" if _numeric(a) else "x"]
        found += [(command, a.option_strings[-1], needed) for a in p._actions if _numeric(a)]
    return found


OPTIONS = _options()


def test_the_walk_finds_every_numeric_option_and_none_is_a_bare_int_or_float():
    flags = {flag for _, flag, _ in OPTIONS}
    assert {"--speedup", "--kd-momentum", "--di-lr", "--kd-lr", "--threads", "--seed"} <= flags
    assert {"--amount", "--mean", "--std", "--num-images", "--batch-size", "--resize"} <= flags
    assert len(OPTIONS) > 60
    bare = [(c, a.dest) for c, p in _commands().items() for a in p._actions if a.type in (int, float)]
    assert bare == []  # every number goes through the one rule (cli.options.number)


@pytest.mark.parametrize(("command", "flag", "needed"), OPTIONS, ids=[f"{c} {f}" for c, f, _ in OPTIONS])
def test_every_numeric_option_refuses_what_it_cannot_mean(command, flag, needed, capsys):
    for value in VALUES:
        try:
            args = build_parser(command).parse_args([command, *needed, f"{flag}={value}"])
        except SystemExit as exit:
            err = capsys.readouterr().err
            last = err.strip().splitlines()[-1]  # after the usage, one line: flag and range
            assert exit.code == 2 and "Traceback" not in err and err.count("error:") == 1
            assert last.startswith(f"recoverprune {command}: error: argument ") and flag in last
            continue
        assert value not in NON_FINITE, f"{command} {flag}={value} was accepted"
        parsed = [x for x in vars(args).values() if isinstance(x, float)]
        assert all(math.isfinite(x) for x in parsed)


ISSUE_FLAGS = ("speedup", "kd-momentum", "di-lr", "kd-lr", "threads")


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--structure", "channel",
         "--speedup", "nan", "--out", "{out}/p.pt"],
        ["compress", "--kd-momentum", "nan", "--preset", "tiny", "--out", "{out}"],
        ["synthesize", "--arch", "resnet20", "--checkpoint", "{ckpt}", "--n", "2",
         "--di-lr", "inf", "--out", "{out}"],
        ["compress", "--kd-lr", "inf", "--preset", "tiny", "--out", "{out}"],
        ["compress", "--threads", "100000", "--preset", "tiny", "--out", "{out}"],
    ],
    ids=["speedup-nan", "kd-momentum-nan", "di-lr-inf", "kd-lr-inf", "threads-100000"],
)
def test_the_issue_cases_exit_2_before_any_work_and_write_nothing(
    argv, tmp_path, capsys, monkeypatch
):
    def crash(n):  # what 100000 threads did (SIGSEGV), without taking pytest down with it
        raise AssertionError(f"set_threads({n}) was called")

    monkeypatch.setattr("recoverprune.core.threads.set_threads", crash)
    out = tmp_path / "out"
    out.mkdir()
    ckpt = tmp_path / "teacher.pt"  # never read: the value is refused first
    code = main([a.format(ckpt=ckpt, out=out) for a in argv])
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("--") and a[2:] in ISSUE_FLAGS)
    assert code == 2 and "Traceback" not in err and f"argument {flag}: " in err
    assert list(out.iterdir()) == [] and not ckpt.exists()


def test_threads_above_4x_the_cpus_are_refused_with_the_bound(capsys):
    from recoverprune.core.threads import available_cpus

    n = 4 * available_cpus()
    assert build_parser("compress").parse_args(["compress", f"--threads={n}"]).threads == n
    with pytest.raises(SystemExit):
        build_parser("compress").parse_args(["compress", f"--threads={n + 1}"])
    assert f"in [1, {n}]" in capsys.readouterr().err


CONFIGS = {
    UnstructuredConfig: {"amount": 0.5},
    ChannelConfig: {},
    BlockConfig: {},
    Calibration: {},
    InversionConfig: {},
    DistillConfig: {},
    StreamConfig: {},
    GeneratorConfig: {},
    LatencyConfig: {"speedup": 2.0},
    Preset: {"n": 8, "iterations": 2, "batch_size": 4, "epochs": 1},
    QuantConfig: {},
}


@pytest.mark.parametrize("cls", list(CONFIGS), ids=lambda c: c.__name__)
def test_every_numeric_config_field_refuses_nan_and_inf_by_name(cls):
    hints = typing.get_type_hints(cls)
    numeric = [f.name for f in fields(cls) if {int, float} & set(_leaves(hints[f.name]))]
    assert numeric, cls
    for name in numeric:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises((ValueError, TypeError), match=name):
                pair = typing.get_origin(hints[name]) is tuple  # betas=(b1, b2)
                cls(**{**CONFIGS[cls], name: (bad, bad) if pair else bad})


def _leaves(hint: object) -> list[object]:
    """int/float/... inside ``int | None``, ``tuple[float, float]`` (bool is not a number)."""
    args = typing.get_args(hint)
    return [x for a in args for x in _leaves(a)] if args else [hint]


def test_the_ranges_are_in_the_messages():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got nan"):
        DistillConfig(momentum=math.nan)
    with pytest.raises(ValueError, match=r"speedup must be > 1 and finite, got inf"):
        ChannelConfig(speedup=math.inf)
    with pytest.raises(ValueError, match=r"lr must be > 0 and finite, got inf"):
        InversionConfig(lr=math.inf)
