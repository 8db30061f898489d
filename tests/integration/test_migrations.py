"""Schema migrations keep history: a database left at an older version is brought forward by
``setup()`` with its tasks intact and runnable."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import MYSQL
from support.wait import wait_for_status
from tideflow import TaskManager
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


@pytest.fixture
def mysql_manager() -> Iterator[Any]:
    """A manager on the MySQL server (skips, or fails under CI, when unreachable): the tests of
    a MySQL migration interrupted between its DDL (each commits at once there; SQLite and
    PostgreSQL run a migration in one transaction, so theirs cannot stop halfway)."""
    tm = TaskManager(MYSQL.url(), allow_unregistered=True, poll_interval=0.02)
    try:
        yield tm
    finally:
        tm.stop()
        tm.close()


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


def test_mysql_setup_repeats_version_3_after_an_interrupted_run(mysql_manager: Any) -> None:
    """MySQL commits DDL at once: a run that added the column but did not record version 3
    is repeated without failing on the existing column."""
    tm = mysql_manager
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


def test_mysql_setup_repeats_version_4_after_an_interrupted_run(mysql_manager: Any) -> None:
    """A run that created the counts table and the index (each DDL commits at once) but did
    not record version 4 is repeated: no error on the index, the counts filled once."""
    tm = mysql_manager
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


def _attempt_rows(store: Any) -> list[tuple[int, int, int, Any]]:
    """The attempts table itself: (id, task id, attempt, ended_at), by id."""
    with store._read() as cur:
        cur.execute("SELECT id, task_id, attempt, ended_at FROM tideflow_attempts ORDER BY id")
        return [(int(r[0]), int(r[1]), int(r[2]), r[3]) for r in cur.fetchall()]


def test_version_4_database_moves_its_open_attempts_onto_their_tasks(
    make_manager: Callable[..., Any],
) -> None:
    """Version 5 writes an attempt's row once, at its close: the open rows a version-4 worker
    left move onto their running tasks, keeping their ids, and close as before."""
    tm = make_manager(allow_unregistered=True)
    store = tm._store
    _build_version(store, 4)
    done, running = (_insert_as_version_2(tm, "job", None) for _ in range(2))
    q = store._q
    with store._write() as cur:  # as a version-4 worker left them
        cur.execute(
            q(
                "UPDATE tideflow_tasks SET status = 'completed', worker_id = 'w-old', attempt = 1,"
                " start_time = 10, last_active_time = 11 WHERE id = ?"
            ),
            (done,),
        )
        cur.execute(
            q(
                "UPDATE tideflow_tasks SET status = 'running', worker_id = 'w-old', attempt = 2,"
                " start_time = 20, heartbeat_at = 20 WHERE id = ?"
            ),
            (running,),
        )
        for task_id, attempt, start, end, outcome in (
            (done, 1, 10.0, 11.0, "completed"),
            (running, 1, 12.0, 13.0, "failed"),
            (running, 2, 20.0, None, None),
        ):
            cur.execute(
                q(
                    "INSERT INTO tideflow_attempts (task_id, root_id, attempt, worker_id, stage,"
                    " started_at, ended_at, outcome, timeout_flag)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?, ?, 0)"
                ),
                (task_id, task_id, attempt, "w-old", start, end, outcome),
            )
    before = _attempt_rows(store)
    open_id = before[-1][0]

    tm.setup()
    assert store.schema_version() == _latest(store)
    assert _attempt_rows(store) == before[:-1]  # the open row is on its task now
    page = tm.query_task_attempts(running)
    assert [(a.id, a.attempt, a.worker_id, a.outcome) for a in page.items] == [
        (before[1][0], 1, "w-old", "failed"),
        (open_id, 2, "w-old", None),
    ]
    assert page.items[1].started_at.timestamp() == 20.0
    assert page.items[1].ended_at is None
    tm.setup()  # idempotent
    assert [a.id for a in tm.query_task_attempts(running).items] == [before[1][0], open_id]

    tm.cancel_task(running)  # closes the open attempt: its row is written with its id
    closed = tm.query_task_attempts(running).items[1]
    assert (closed.id, closed.outcome, closed.started_at.timestamp()) == (
        open_id,
        "cancelled",
        20.0,
    )
    assert closed.ended_at is not None

    tm.use("job", lambda task: "done")
    fresh = tm.submit("job")
    tm.start()
    wait_for_status(tm, fresh, "completed")
    (new,) = tm.query_task_attempts(fresh).items
    assert new.id > open_id  # attempts keep the order of their claims across the migration
    assert tm.query_task_attempts(done).items[0].id == before[0][0]


def test_mysql_setup_repeats_version_5_after_an_interrupted_run(mysql_manager: Any) -> None:
    """A run that added ``attempt_id`` and the ids table (each DDL commits at once) but did not
    record version 5 is repeated: no error on the column, the counter set once."""
    tm = mysql_manager
    _build_version(tm._store, 4)
    module = importlib.import_module("tideflow.store.sql.mysql")
    with tm._store._write() as cur:
        for statement in module.MIGRATIONS[5][:2]:
            cur.execute(statement.replace("{options}", _MYSQL_OPTIONS))
        cur.execute("INSERT INTO tideflow_ids (name, n) VALUES ('attempt', 99)")
    tm.setup()
    assert tm._store.schema_version() == _latest(tm._store)
    tm.use("job", lambda task: "done")
    task_id = tm.submit("job")
    tm.start()
    wait_for_status(tm, task_id, "completed")
    (attempt,) = tm.query_task_attempts(task_id).items
    assert attempt.id == 1  # counted from the attempt rows there are, not the leftover
