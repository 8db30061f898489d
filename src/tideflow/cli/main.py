"""The ``tideflow`` command: argument parsing and dispatch.

Exit codes: 0 success, 1 a tideflow error (printed as its message), 2 a usage error (bad
arguments, bad APP), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import tideflow
from tideflow.cli import dashboard, demo, tasks, worker
from tideflow.cli.common import CliError
from tideflow.errors import TideflowError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tideflow",
        description="Durable task queues and workflows on the database you already have.",
        epilog="Start with: tideflow demo. Every --db defaults to $TIDEFLOW_DB.",
    )
    parser.add_argument("--version", action="version", version=f"tideflow {tideflow.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    demo.add_command(sub)
    worker.add_command(sub)
    tasks.add_commands(sub)
    dashboard.add_command(sub)

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tideflow`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"tideflow: error: {exc}", file=sys.stderr)
        return exc.code
    except TideflowError as exc:
        print(f"tideflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tideflow: interrupted", file=sys.stderr)
        return 130
    return code
