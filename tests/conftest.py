"""Shared fixtures: managers over every backend under test.

Backends are the entries of ``BACKENDS``: SQLite (in memory and a file) always, PostgreSQL and
MySQL when their servers answer. The servers are named by ``TIDEFLOW_TEST_POSTGRES_URL`` and
``TIDEFLOW_TEST_MYSQL_URL``; an unreachable server skips its tests (one line per backend in the
summary), or fails them when ``CI=true``.

Each test session works in its own PostgreSQL schema / MySQL database (created on first use,
dropped at the end), so test runs sharing a server do not disturb each other; each test starts
with no ``tideflow_*`` tables.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

POSTGRES_ENV = "TIDEFLOW_TEST_POSTGRES_URL"
MYSQL_ENV = "TIDEFLOW_TEST_MYSQL_URL"
POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_DEFAULT = "mysql://root@127.0.0.1:3306/test"
#: name of this session's private PostgreSQL schema / MySQL database
SESSION_NAME = f"tftest_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


class ServerBackend:
    """A database server for the test session: reachability, private namespace, clean reset."""

    def __init__(self, name: str, env: str, default: str) -> None:
        self.name = name
        self.env = env
        self.default = default
        self._state: tuple[str, str | None] | None = None  # (session url, error)

    @property
    def base_url(self) -> str:
        return os.environ.get(self.env) or self.default

    # --- per-driver pieces -----------------------------------------------------------------
    def _connect(self, url: str) -> Any:
        if self.name == "postgres":
            import psycopg

            return psycopg.connect(
                url.replace("psql://", "postgresql://", 1), autocommit=True, connect_timeout=3
            )
        import pymysql

        parts = urlsplit(url)
        return pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            database=parts.path.lstrip("/").split("?")[0] or None,
            connect_timeout=3,
            autocommit=True,
        )

    def _create_namespace(self) -> str:
        """Create this session's schema/database; return the URL the tests use."""
        base = self.base_url
        conn = self._connect(base)
        try:
            cur = conn.cursor()
            if self.name == "postgres":
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SESSION_NAME}")
                options = quote(f"-csearch_path={SESSION_NAME}", safe="")
                sep = "&" if "?" in base else "?"
                return f"{base}{sep}options={options}&application_name={SESSION_NAME}"
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {SESSION_NAME}")
            parts = urlsplit(base)
            return urlunsplit(parts._replace(path=f"/{SESSION_NAME}"))
        finally:
            conn.close()

    def drop_namespace(self) -> None:
        if self._state is None or self._state[1] is not None:
            return
        with contextlib.suppress(Exception):
            conn = self._connect(self.base_url)
            try:
                cur = conn.cursor()
                if self.name == "postgres":
                    cur.execute(f"DROP SCHEMA IF EXISTS {SESSION_NAME} CASCADE")
                else:
                    cur.execute(f"DROP DATABASE IF EXISTS {SESSION_NAME}")
            finally:
                conn.close()

    # --- what the fixtures call ------------------------------------------------------------
    def url(self) -> str:
        """The session URL on a clean database; skips (or fails under CI) when unreachable."""
        if self._state is None:
            try:
                self._state = (self._create_namespace(), None)
            except Exception as exc:
                reason = (
                    f"{self.name} server not reachable at {_redact(self.base_url)}"
                    f" ({type(exc).__name__}); set {self.env} to a reachable server"
                )
                self._state = ("", reason)
        url, error = self._state
        if error is not None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(error, pytrace=False)
            pytest.skip(error)
        self.reset(url)
        return url

    def reset(self, url: str) -> None:
        """Drop every ``tideflow_*`` table in the session namespace."""
        conn = self._connect(url)
        try:
            cur = conn.cursor()
            if self.name == "postgres":
                cur.execute("SET lock_timeout = '20s'")
                cur.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                    " AND tablename LIKE 'tideflow\\_%'"
                )
            else:
                cur.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name LIKE 'tideflow\\_%'"
                )
            tables = [row[0] for row in cur.fetchall()]
            if tables:
                cascade = " CASCADE" if self.name == "postgres" else ""
                cur.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}{cascade}")
        finally:
            conn.close()


POSTGRES = ServerBackend("postgres", POSTGRES_ENV, POSTGRES_DEFAULT)
MYSQL = ServerBackend("mysql", MYSQL_ENV, MYSQL_DEFAULT)
SERVERS = {"postgres": POSTGRES, "mysql": MYSQL}

# (id, factory of a connection string from the test's tmp_path); server factories skip the test
# when the server is unreachable and hand out a clean database otherwise
BACKENDS: list[tuple[str, Callable[[Path], str]]] = [
    ("sqlite-memory", lambda tmp_path: "sqlite::memory:"),
    ("sqlite-file", lambda tmp_path: f"sqlite:{tmp_path}/tasks.db"),
    ("postgres", lambda tmp_path: POSTGRES.url()),
    ("mysql", lambda tmp_path: MYSQL.url()),
]
#: the backends on which several managers (or processes) can share one database
SHARED_BACKENDS = [(name, f) for name, f in BACKENDS if name != "sqlite-memory"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in SERVERS.values():
        server.drop_namespace()


@pytest.fixture(params=[url for _, url in BACKENDS], ids=[name for name, _ in BACKENDS])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The connection string of the backend under test."""
    factory: Callable[[Path], str] = request.param
    return factory(tmp_path)


@pytest.fixture(
    params=[url for _, url in SHARED_BACKENDS], ids=[name for name, _ in SHARED_BACKENDS]
)
def shared_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database several managers can open at once: a SQLite file or a server database."""
    factory: Callable[[Path], str] = request.param
    return factory(tmp_path)


@pytest.fixture
def postgres_url() -> str:
    """A clean PostgreSQL database (skips, or fails under CI, when unreachable)."""
    return POSTGRES.url()


@pytest.fixture
def make_manager(db_url: str) -> Iterator[Callable[..., Any]]:
    """Factory ``make_manager(**options) -> TaskManager`` on the backend under test.

    Passes ``poll_interval=0.02`` unless given; ``db=`` overrides the connection string. Every
    manager made is stopped and closed at teardown.
    """
    from tideflow import TaskManager

    made: list[Any] = []

    def factory(**options: Any) -> Any:
        options.setdefault("poll_interval", 0.02)
        db = options.pop("db", db_url)
        tm = TaskManager(db, **options)
        made.append(tm)
        return tm

    yield factory

    for tm in reversed(made):
        with contextlib.suppress(Exception):
            tm.stop(timeout=5)
        with contextlib.suppress(Exception):
            tm.close()


@pytest.fixture
def db_file(tmp_path: Path) -> str:
    """Path of a SQLite file for tests that need several managers on one database."""
    return str(tmp_path / "shared.db")
