"""Schema migrations keep history: a database left at an older version is brought forward by
``setup()`` with its tasks intact and runnable."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from support.wait import wait_for_status
from tideflow.store.sql.base import INSERT_COLUMNS

_MODULES = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}
_FLOAT = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE"}
_MYSQL_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def _build_version(store: Any, version: int) -> None:
    """Create the schema as an older tideflow left it: migrations 1..``version`` only."""
    module = importlib.import_module(f"tideflow.store.sql.{_MODULES[store.dialect]}")
    with store._write() as cur:
        store._run_migrations(
            cur,
            module.MIGRATIONS,
            version,
            _FLOAT[store.dialect],
            prepare=lambda statement: statement.replace("{options}", _MYSQL_OPTIONS),
        )


def _insert_as_version_2(tm: Any, name: str, payload: Any) -> int:
    """Insert a task with the columns a version-2 schema has (no ``trace_context``)."""
    store = tm._store
    task = tm._plan(name, payload, {}, now=store.clock())
    columns = [c for c in INSERT_COLUMNS if c != "trace_context"]
    params = [store._encode_value(c, task.values.get(c)) for c in columns]
    with store._write() as cur:
        cur.execute(
            store._q(
                f"INSERT INTO tideflow_tasks ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})"
            ),
            params,
        )
        cur.execute("UPDATE tideflow_tasks SET root_id = id WHERE root_id IS NULL")
        cur.execute("SELECT MAX(id) FROM tideflow_tasks")
        return int(cur.fetchone()[0])


def test_version_2_database_migrates_to_3_with_its_tasks(
    make_manager: Callable[..., Any],
) -> None:
    tm = make_manager(allow_unregistered=True)
    _build_version(tm._store, 2)
    assert tm._store.schema_version() == 2
    old = _insert_as_version_2(tm, "job", {"n": 1})

    tm.setup()  # version 3: tideflow_tasks.trace_context
    assert tm._store.schema_version() == 3
    tm.setup()  # idempotent
    assert tm._store.schema_version() == 3
    info = tm.get_task(old)
    assert info is not None
    assert (info.status, info.payload, info.trace_context) == ("pending", {"n": 1}, None)

    tm.use("job", lambda task: task.payload["n"] + 1)
    new = tm.submit("job", {"n": 41})
    tm.start()
    assert wait_for_status(tm, old, "completed").result == 2
    assert wait_for_status(tm, new, "completed").result == 42


def test_mysql_setup_repeats_version_3_after_an_interrupted_run(
    make_manager: Callable[..., Any],
) -> None:
    """MySQL commits DDL at once: a run that added the column but did not record version 3
    is repeated without failing on the existing column."""
    tm = make_manager(allow_unregistered=True)
    if tm._store.dialect != "mysql":
        pytest.skip("only MySQL commits DDL outside the migration's transaction")
    _build_version(tm._store, 2)
    with tm._store._write() as cur:
        cur.execute("ALTER TABLE tideflow_tasks ADD COLUMN trace_context TEXT")
    tm.setup()
    assert tm._store.schema_version() == 3
    assert tm.get_task(tm.submit("job")).trace_context is None
