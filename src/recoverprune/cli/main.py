"""Command line: ``recoverprune {evaluate,prune,synthesize,recover,compress,quantize,models}``,
a thin layer over the public functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from recoverprune.cli.commands import init_distributed
from recoverprune.cli.parser import build_parser

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    """Run the command on the CPU threads the command's policy (never the library's) picks:
    ``--threads``, else all CPUs when idle, fewer beside a busy job, revisited as it runs."""
    if not hasattr(args, "threads"):
        return int(args.func(args))
    from recoverprune.core.progress import console, on_advance
    from recoverprune.core.runtime import dist_info
    from recoverprune.core.threads import revisit, set_threads, threads

    if dist_info()[0] > 0:  # one start-up summary and threads line, from rank 0
        args.quiet = True
    chosen = set_threads(args.threads) if args.threads is not None else threads()
    if not args.quiet and (args.command != "compress"):
        console.print(chosen.line(), markup=False, highlight=False)
    with on_advance(lambda: revisit(verbose=not args.quiet)):
        return int(args.func(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recoverprune`` console script.

    Expected failures (bad input, a corrupt or unwritable file, a full disk, a directory
    made with other settings) print one paragraph and return 2; ``--debug`` shows their
    traceback too. Anything else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, also after the command
    argv = [a for a in argv if a != "--debug"]
    if "torch" not in sys.modules:  # read once, when torch loads
        # Idle OpenMP threads sleep instead of spinning, so that a job starting beside this
        # one slows it gently (benchmarks/threads.py).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exc:  # a refused option, named (2); --help, --version (0)
        return int(exc.code or 0)
    import recoverprune.core.runtime  # noqa: F401  (torch._dynamo before any process group)
    from recoverprune.core.errors import explain

    try:
        init_distributed()
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = explain(exc)
        if message is None or debug:
            raise
        print(f"recoverprune {args.command}: error: {message}", file=sys.stderr)
        return 2
