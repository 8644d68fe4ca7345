"""benchmarks/readme_quick.py: the README's first-command block comes from its report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from recoverprune import compress

ROOT = Path(__file__).resolve().parents[1]


def _script():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its helpers, as when run from there
    spec = importlib.util.spec_from_file_location(
        "readme_quick", ROOT / "benchmarks/readme_quick.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_block_is_rewritten_from_a_tiny_report(tmp_path, capsys):
    out = tmp_path / "run"
    compress(how=0.75, preset="tiny", out_dir=out, device="cpu", progress=False)
    report = json.loads((out / "report.json").read_text())
    report["top1"] = {"teacher": 87.72, "pruned": 55.0, "recovered": 85.5}  # as with --eval-data
    (out / "report.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quick:begin -->\nold typed figures\n<!-- quick:end -->\nrest\n")

    kept = tmp_path / "kept.json"
    args = ["--report", str(out / "report.json"), "--readme", str(readme), "--keep", str(kept)]
    _script().main(args)
    assert json.loads(kept.read_text()) == report
    text = readme.read_text()
    assert "old typed figures" not in text and text.startswith("intro\n") and "rest" in text
    block = text.split("<!-- quick:begin -->")[1].split("<!-- quick:end -->")[0]
    assert "**85.50**" in block and "Sparsity 75.00%" in block
    assert "on 16 independently seeded synthetic images" in block  # the tiny check set
    rt = report["runtime"]
    assert f"torch {rt['torch']}" in block and rt["machine"]["platform"] in block
    assert f"{rt['threads']['intra']} thread(s)" in block
    assert "32 images x 4 DeepInversion iterations" in block


def test_readme_block_is_the_render_of_the_committed_report():
    script = _script()
    report = json.loads(script.KEPT.read_text())
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- quick:begin -->\n")[1].split("<!-- quick:end -->")[0]
    hint = "rerun the README's first command, then python benchmarks/readme_quick.py"
    assert block == script.render(report), hint
