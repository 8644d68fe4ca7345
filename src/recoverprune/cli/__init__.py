"""Layer 8: the ``recoverprune`` command (one parser per command, the commands, the error map).

Example:
    >>> from recoverprune.cli import build_parser
    >>> build_parser().parse_args(["models"]).command
    'models'
"""

from __future__ import annotations

from recoverprune.cli.main import main
from recoverprune.cli.parser import build_parser

__all__ = ["build_parser", "main"]
