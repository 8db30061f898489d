"""Shared fixtures: managers over every backend under test.

More backends (PostgreSQL, MySQL) are added by appending to ``BACKENDS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# (id, factory of a connection string from the test's tmp_path)
BACKENDS: list[tuple[str, Callable[[Path], str]]] = [
    ("sqlite-memory", lambda tmp_path: "sqlite::memory:"),
    ("sqlite-file", lambda tmp_path: f"sqlite:{tmp_path}/tasks.db"),
]


@pytest.fixture(params=[url for _, url in BACKENDS], ids=[name for name, _ in BACKENDS])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The connection string of the backend under test."""
    factory: Callable[[Path], str] = request.param
    return factory(tmp_path)


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
