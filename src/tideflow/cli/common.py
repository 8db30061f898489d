"""What the commands share: the database option, opening a manager, and CLI errors."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tideflow.manager import TaskManager
from tideflow.store.url import backend_of, check_server_url, redact, sqlite_file

__all__ = [
    "CONNECT_TIMEOUT",
    "DB_ENV",
    "CliError",
    "add_db_option",
    "check_reachable",
    "command_prefix",
    "open_manager",
    "redact",
    "resolve_db",
    "same_database",
    "sqlite_file",
]

DB_ENV = "TIDEFLOW_DB"
#: seconds a command waits for a PostgreSQL/MySQL server to answer before it gives up (the
#: store's pool would wait 15 s and then name no cause)
CONNECT_TIMEOUT = 5.0


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
    """A client manager (no worker) on ``db``; refuses a SQLite file that does not exist and a
    server that does not answer within :data:`CONNECT_TIMEOUT` seconds."""
    path = sqlite_file(db)
    if must_exist and path is not None and not os.path.exists(path):
        raise CliError(
            f"database file {path!r} does not exist"
            f" (create it with: tideflow db migrate --db {db})",
            code=1,
        )
    check_reachable(db)
    return TaskManager(db, allow_unregistered=True)


def check_reachable(db: str, timeout: float | None = None) -> None:
    """Connect once to the PostgreSQL or MySQL server of ``db`` and disconnect; a server that
    refuses, does not answer within ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`) or
    rejects the login is a :class:`CliError` (exit 1) naming the redacted URL and the cause.

    Does nothing for SQLite, or when the driver is missing (opening the store says which extra
    to install)."""
    backend = backend_of(db)
    if backend not in ("postgres", "mysql"):
        return
    check_server_url(db)  # a malformed URL is the store's StoreError, before any driver
    wait = CONNECT_TIMEOUT if timeout is None else timeout
    parts = urlsplit(db)
    try:
        if backend == "postgres":
            _probe_postgres(db, wait)
        else:
            _probe_mysql(db, wait)
    except ImportError:
        return
    except Exception as exc:  # the driver's error: its text, with the password masked
        text = " ".join(str(exc).split()) or type(exc).__name__
        password = unquote(parts.password) if parts.password else ""
        if password:
            text = text.replace(password, "***")
        raise CliError(f"cannot connect to {redact(db)} within {wait:g}s: {text}", code=1) from None


def _probe_postgres(db: str, timeout: float) -> None:
    import psycopg

    conninfo = "postgresql://" + db.partition("://")[2]  # psql:// and postgres:// too
    # libpq's connect_timeout is whole seconds, at least 2
    psycopg.connect(conninfo, connect_timeout=max(2, round(timeout)), autocommit=True).close()


def _probe_mysql(db: str, timeout: float) -> None:
    import pymysql

    parts = urlsplit(db)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    args: dict[str, Any] = {
        "host": unquote(parts.hostname or "localhost"),
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
        "connect_timeout": max(1, round(timeout)),
        "read_timeout": max(1, round(timeout)),
    }
    if "unix_socket" in options:
        args["unix_socket"] = options["unix_socket"]
    pymysql.connect(**args).close()


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
