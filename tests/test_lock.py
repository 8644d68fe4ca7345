"""One command per output (issue 38, cause 6).

Before the lock, two ``compress`` runs started together on one ``--out`` with ``--amount
0.75`` and ``--amount 0.5`` both exited 0, leaving the 0.75 ``pruned.pt`` beside the 0.5
``student.pt``; these tests failed on that code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recoverprune.cli import main
from recoverprune.core.lock import OutputBusy, locked

HOLD = "import sys, time\nfrom recoverprune.core.lock import locked\n"
HOLD += "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
TINY = [sys.executable, "-m", "recoverprune", "compress", "--preset", "tiny", "--quiet"]
TINY += ["--threads", "1"]


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_held_directory_is_refused_naming_its_holder_and_freed_by_kill_9(tmp_path):
    holder = _start(sys.executable, "-c", HOLD, str(tmp_path))
    try:
        assert holder.stdout.readline() == "held\n"
        busy = rf"in use by pid {holder.pid} \(-c {tmp_path}\)"
        with pytest.raises(OutputBusy, match=busy), locked(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: the file stays, the lock dies with the process
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with locked(tmp_path):
        pass
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["prune", "synthesize", "recover", "quantize"])
def test_every_command_writing_an_out_is_refused_while_it_is_held(tmp_path, capsys, command):
    file = command in ("prune", "quantize")  # these write one file, locked beside it
    out = tmp_path / "new" / ({"prune": "p.pt", "quantize": "q.onnx"}.get(command, "out"))
    inputs = {
        "prune": ["--checkpoint", "t.pt", "--amount", "0.5"],
        "synthesize": ["--checkpoint", "t.pt", "--n", "8"],
        "recover": ["--teacher", "t.pt", "--student", "s.pt", "--synthetic", "syn"],
        "quantize": ["--checkpoint", "s.pt", "--synthetic", "syn"],
    }[command]
    with locked(out, file=file):  # as another process holding it
        rc = main([command, "--arch", "resnet20", *inputs, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"in use by pid {os.getpid()}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # the directories made for the lock went with it


@pytest.mark.slow
def test_two_compress_runs_on_one_out_one_finishes_the_other_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    runs = [_start(*TINY, "--amount", a, "--out", str(out)) for a in ("0.75", "0.5")]
    while all(run.poll() is None for run in runs):
        time.sleep(0.05)
    loser = next(run for run in runs if run.poll() is not None)
    winner = runs[1 - runs.index(loser)]
    assert winner.poll() is None  # refused while the other still ran
    _, err = loser.communicate()
    assert loser.returncode == 2 and "Traceback" not in err, err
    assert f"in use by pid {winner.pid} (recoverprune compress --preset tiny" in err
    _, err = winner.communicate(timeout=600)
    assert winner.returncode == 0, err
    amount = 0.75 if winner is runs[0] else 0.5
    assert json.loads((out / "report.json").read_text())["amount"] == amount
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_compress_killed_by_kill_9_leaves_no_lock_that_blocks_its_rerun(tmp_path):
    out = tmp_path / "out"
    run = _start(*TINY, "--out", str(out))
    while not (out / "pruned.pt").exists():
        assert run.poll() is None, run.communicate()
        time.sleep(0.05)
    assert "pid" in (out / ".lock").read_text()
    run.kill()
    run.wait()
    again = _start(*TINY, "--out", str(out))
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert not [p for p in Path(out).iterdir() if p.name.startswith(".")]
