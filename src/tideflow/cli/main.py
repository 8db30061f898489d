"""The ``tideflow`` command: argument parsing and dispatch.

Exit codes: 0 success, 1 a tideflow error (printed as its message), 2 a usage error (bad
arguments, bad APP), 130 interrupted, 141 the reader of our output went away (``| head``: no
traceback, like a command killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tideflow
from tideflow.cli import completion, dashboard, demo, tasks, worker
from tideflow.cli.common import CliError
from tideflow.errors import TideflowError

__all__ = ["EXIT_BROKEN_PIPE", "build_parser", "main"]

#: exit code when the reader of stdout closed it (128 + SIGPIPE, as a shell reports ``yes | head``)
EXIT_BROKEN_PIPE = 141


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
    completion.add_command(sub, parser)

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
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again (and print
    "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass
