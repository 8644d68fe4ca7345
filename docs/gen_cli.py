"""Regenerate docs/cli.md from the real argument parser: ``python docs/gen_cli.py``."""

from __future__ import annotations

import os
from pathlib import Path

from recoverprune.cli import build_parser


def render() -> str:
    os.environ.setdefault("COLUMNS", "100")
    parser = build_parser()
    out = [
        "# CLI reference",
        "",
        "Generated from `recoverprune --help` and each command's `--help` "
        "(`python docs/gen_cli.py`).",
        "",
    ]
    out += ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        out += [f"## recoverprune {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    Path(__file__).with_name("cli.md").write_text(render())
