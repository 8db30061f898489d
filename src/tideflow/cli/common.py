"""What the commands share: the database option, opening a manager, and CLI errors."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from tideflow.manager import TaskManager
from tideflow.store.url import redact, sqlite_file

__all__ = [
    "DB_ENV",
    "CliError",
    "add_db_option",
    "command_prefix",
    "open_manager",
    "redact",
    "resolve_db",
    "same_database",
    "sqlite_file",
]

DB_ENV = "TIDEFLOW_DB"


class CliError(Exception):
    """A problem with how the command was called; printed as one line."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_db_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Add ``--db URL`` (default: ``$TIDEFLOW_DB``, else ``default``)."""
    env = f"${DB_ENV}" if default is None else f"${DB_ENV} or {default}"
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help=f"connection string, e.g. sqlite:tasks.db (default: {env})",
    )


def resolve_db(args: argparse.Namespace, default: str | None = None) -> str:
    """The connection string from ``--db``, then ``$TIDEFLOW_DB``, then ``default``."""
    db: str | None = args.db or os.environ.get(DB_ENV) or default
    if not db:
        raise CliError(f"no database given: pass --db URL or set {DB_ENV}")
    return db


def same_database(given: str, safe_url: str) -> bool:
    """Whether a manager's ``safe_url`` names the database of connection string ``given``."""
    a, b = sqlite_file(given), sqlite_file(safe_url)
    if a is not None and b is not None:
        return os.path.realpath(a) == os.path.realpath(b)
    if given.startswith("sqlite:") and safe_url.startswith("sqlite:"):
        return a is None and b is None  # both in memory
    return redact(given) == safe_url


def open_manager(db: str, *, must_exist: bool = True) -> TaskManager:
    """A client manager (no worker) on ``db``; refuses a SQLite file that does not exist."""
    path = sqlite_file(db)
    if must_exist and path is not None and not os.path.exists(path):
        raise CliError(
            f"database file {path!r} does not exist"
            f" (create it with: tideflow db migrate --db {db})",
            code=1,
        )
    return TaskManager(db, allow_unregistered=True)


def command_prefix() -> str:
    """How the user ran us (``tideflow``, ``.venv/bin/tideflow``), to print follow-up commands."""
    argv0 = sys.argv[0] if sys.argv else ""
    base = os.path.basename(argv0)
    if base == "tideflow":
        on_path = shutil.which("tideflow")
        if os.sep not in argv0 or (on_path and os.path.samefile(on_path, argv0)):
            return "tideflow"
        return shlex.quote(argv0)
    if base == "__main__.py" and "tideflow" in argv0:
        return "python -m tideflow.cli"
    return "tideflow"
