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


def _latest(store: Any) -> int:
    """This tideflow's schema version for ``store``'s dialect."""
    module = importlib.import_module(f"tideflow.store.sql.{_MODULES[store.dialect]}")
    return int(module.SCHEMA_VERSION)


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

    tm.setup()  # version 3: tideflow_tasks.trace_context (and the versions after it)
    assert tm._store.schema_version() == _latest(tm._store)
    tm.setup()  # idempotent
    assert tm._store.schema_version() == _latest(tm._store)
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
    assert tm._store.schema_version() == _latest(tm._store)
    assert tm.get_task(tm.submit("job")).trace_context is None


def _kept_and_counted(tm: Any) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """``get_task_stats`` and a count of the tasks table, both sorted."""
    kept = sorted((r["name"], r["status"], r["count"]) for r in tm.get_task_stats())
    with tm._store._read() as cur:
        cur.execute("SELECT name, status, COUNT(*) FROM tideflow_tasks GROUP BY name, status")
        counted = sorted((str(n), str(s), int(c)) for n, s, c in cur.fetchall())
    return kept, counted


def _version_3_tasks(tm: Any) -> list[int]:
    """Tasks of several names and statuses in a version-3 database (written as it would have
    been: no kept counts)."""
    ids = [_insert_as_version_2(tm, name, None) for name in ("a", "a", "a", "b", "b", "c")]
    with tm._store._write() as cur:
        statuses = ("completed", "completed", "running", "failed", "pending", "pending")
        for task_id, status in zip(ids, statuses, strict=True):
            cur.execute(
                tm._store._q("UPDATE tideflow_tasks SET status = ? WHERE id = ?"), (status, task_id)
            )
    return ids


def test_version_3_database_migrates_to_4_with_its_counts(
    make_manager: Callable[..., Any],
) -> None:
    """Version 4 fills the kept counts from the tasks there are; from then on every write
    keeps them."""
    tm = make_manager(allow_unregistered=True)
    _build_version(tm._store, 3)
    ids = _version_3_tasks(tm)

    tm.setup()
    assert tm._store.schema_version() == _latest(tm._store) >= 4
    kept, counted = _kept_and_counted(tm)
    assert kept == counted
    assert ("a", "completed", 2) in kept
    assert ("c", "pending", 1) in kept
    tm.setup()  # idempotent: counted once
    assert _kept_and_counted(tm)[0] == counted

    tm.use("c", lambda task: "done")
    tm.use("b", lambda task: "done")
    tm.delete_tasks(ids=ids[:1])
    fresh = tm.submit("c")
    tm.start()
    wait_for_status(tm, ids[5], "completed")
    wait_for_status(tm, ids[3], "completed")  # the failed one, retried
    wait_for_status(tm, fresh, "completed")  # nothing changes between the two reads below
    kept, counted = _kept_and_counted(tm)
    assert kept == counted


def test_mysql_setup_repeats_version_4_after_an_interrupted_run(
    make_manager: Callable[..., Any],
) -> None:
    """A run that created the counts table and the index (each DDL commits at once) but did
    not record version 4 is repeated: no error on the index, the counts filled once."""
    tm = make_manager(allow_unregistered=True)
    if tm._store.dialect != "mysql":
        pytest.skip("only MySQL commits DDL outside the migration's transaction")
    _build_version(tm._store, 3)
    _version_3_tasks(tm)
    module = importlib.import_module("tideflow.store.sql.mysql")
    with tm._store._write() as cur:
        for statement in module.MIGRATIONS[4][:2]:
            cur.execute(statement.replace("{options}", _MYSQL_OPTIONS))
        cur.execute(  # counts a run left behind: refilled, not added to
            "INSERT INTO tideflow_task_counts (name, status, shard, n)"
            " VALUES ('a', 'pending', 3, 7)"
        )
    tm.setup()
    assert tm._store.schema_version() == _latest(tm._store)
    kept, counted = _kept_and_counted(tm)
    assert kept == counted
