"""SQLite dialect: one connection per store guarded by a lock, WAL, ``BEGIN IMMEDIATE`` writes.

A ``:memory:`` database is private to its manager and shared by the manager's threads through
that one connection. A file database may be shared by several processes: each write is a short
``BEGIN IMMEDIATE`` transaction and waits on the busy timeout instead of failing.

A SQLite database lives on one host, so its "now" is that host's clock: the SQL function
``tideflow_now()`` returns ``time.time()`` (looked up on each call, so a patched clock is seen).
It is not registered as deterministic (it is not, and SQLite would then accept it in indexes,
CHECK constraints and generated columns); statements call it through a scalar subquery, which
SQLite evaluates once per statement (like PostgreSQL's ``statement_timestamp()``) instead of
once per row scanned. The claim still walks its partial index (``EXPLAIN QUERY PLAN``).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tideflow.core.types import ClaimRequest
from tideflow.errors import StoreError
from tideflow.store.sql.base import (
    CLAIMABLE,
    COUNT_ATTEMPT_IDS,
    MOVE_OPEN_ATTEMPTS,
    TASK_SELECT,
    Cursor,
    Shape,
    SqlStore,
    T,
    guarded_update_terms,
)

__all__ = ["SqliteStore"]

SCHEMA_VERSION = 5

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tideflow_tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            payload TEXT,
            result TEXT,
            error TEXT,
            tag TEXT,
            stage INTEGER NOT NULL DEFAULT 0,
            context BLOB,
            created_at REAL NOT NULL,
            next_run_time REAL,
            start_time REAL,
            last_active_time REAL,
            last_event_type TEXT,
            last_event_time REAL,
            heartbeat_at REAL,
            timeout REAL NOT NULL,
            max_retries INTEGER NOT NULL,
            retry_count INTEGER NOT NULL DEFAULT 0,
            retry_interval REAL NOT NULL,
            retry_backoff TEXT NOT NULL,
            max_retry_interval REAL NOT NULL,
            retry_jitter INTEGER NOT NULL,
            cron_expr TEXT,
            tz TEXT,
            parent_id INTEGER,
            root_id INTEGER,
            parent_stage INTEGER,
            total_children INTEGER NOT NULL DEFAULT 0,
            completed_children INTEGER NOT NULL DEFAULT 0,
            worker_id TEXT,
            attempt INTEGER NOT NULL DEFAULT 0,
            requires TEXT,
            unique_key TEXT,
            suspend_reason TEXT,
            current_stage_name TEXT,
            progress_text TEXT,
            progress_percent REAL
        )""",
        """CREATE INDEX tideflow_tasks_claim ON tideflow_tasks (priority DESC, next_run_time, id)
            WHERE status IN ('pending', 'failed', 'timeout')""",
        """CREATE INDEX tideflow_tasks_running ON tideflow_tasks (worker_id)
            WHERE status = 'running'""",
        """CREATE INDEX tideflow_tasks_parent ON tideflow_tasks (parent_id, parent_stage)
            WHERE parent_id IS NOT NULL""",
        "CREATE INDEX tideflow_tasks_root ON tideflow_tasks (root_id)",
        "CREATE INDEX tideflow_tasks_status_name ON tideflow_tasks (status, name)",
        "CREATE INDEX tideflow_tasks_tag ON tideflow_tasks (tag) WHERE tag IS NOT NULL",
        """CREATE UNIQUE INDEX tideflow_tasks_unique_key ON tideflow_tasks (unique_key)
            WHERE unique_key IS NOT NULL AND status NOT IN ('completed', 'permanently_failed')""",
        """CREATE TABLE tideflow_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id INTEGER NOT NULL,
            root_id INTEGER NOT NULL,
            parent_id INTEGER,
            event_type TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT,
            stage INTEGER NOT NULL,
            worker_id TEXT,
            attempt INTEGER,
            event_time REAL NOT NULL,
            message TEXT,
            metadata TEXT
        )""",
        "CREATE INDEX tideflow_events_task ON tideflow_events (task_id)",
        "CREATE INDEX tideflow_events_root ON tideflow_events (root_id)",
        """CREATE TABLE tideflow_attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id INTEGER NOT NULL,
            root_id INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            worker_id TEXT NOT NULL,
            stage INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            outcome TEXT,
            error TEXT,
            timeout_flag INTEGER NOT NULL DEFAULT 0,
            duration_seconds REAL,
            UNIQUE (task_id, attempt)
        )""",
        "CREATE INDEX tideflow_attempts_root ON tideflow_attempts (root_id)",
        """CREATE TABLE tideflow_workers (
            worker_id TEXT PRIMARY KEY,
            pod_id TEXT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            status TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            handlers TEXT NOT NULL,
            concurrency INTEGER NOT NULL,
            registered_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ),
    # one worker at a time runs the sweeps for everyone (recovery, stalls, retention)
    2: (
        """CREATE TABLE tideflow_leases (
            name TEXT PRIMARY KEY,
            holder TEXT,
            renewed_at REAL NOT NULL
        )""",
        "INSERT INTO tideflow_leases (name, holder, renewed_at) VALUES ('maintenance', NULL, 0)",
    ),
    # the W3C trace context of the submit (JSON of the propagation headers), when traced
    3: ("ALTER TABLE tideflow_tasks ADD COLUMN trace_context TEXT",),
    # cheap to watch: the counts of tasks per name and status, kept by every write (see
    # SqlStore._counting), filled from the tasks there are; the finished tasks by time, for
    # the throughput histogram (only rows in a finished status are in it)
    4: (
        """CREATE TABLE tideflow_task_counts (
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            shard INTEGER NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (name, status, shard)
        ) WITHOUT ROWID""",
        """CREATE INDEX tideflow_tasks_finished ON tideflow_tasks (last_active_time, status)
            WHERE status IN ('completed', 'permanently_failed')""",
        "DELETE FROM tideflow_task_counts",
        """INSERT INTO tideflow_task_counts (name, status, shard, n)
            SELECT name, status, 0, COUNT(*) FROM tideflow_tasks GROUP BY name, status""",
    ),
    # each fact once: an attempt's row is written when it closes; while it is open, the
    # running task row states it, with the id its row will get (reserved at the claim from
    # the counter in tideflow_ids): the open attempt rows move onto their tasks
    5: (
        "ALTER TABLE tideflow_tasks ADD COLUMN attempt_id INTEGER",
        "CREATE TABLE tideflow_ids (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        COUNT_ATTEMPT_IDS,
        *MOVE_OPEN_ATTEMPTS,
    ),
}


def _now() -> float:
    """SQL function ``tideflow_now``: this host's clock (``time.time`` looked up per call)."""
    return time.time()


def _covers(requires: str | None, capabilities: str) -> int:
    """SQL function ``tideflow_covers``: 1 when every required capability (comma-joined) is
    among the offered ones."""
    if not requires:
        return 1
    offered = set(capabilities.split(",")) if capabilities else set()
    return 1 if offered.issuperset(requires.split(",")) else 0


def _lower(text: Any) -> Any:
    """SQL function ``tideflow_lower``: Python's ``str.lower`` (SQLite's LOWER folds only ASCII),
    for case-insensitive searches. Used in queries only, never in the schema, so other clients
    of the file need not know it."""
    return text.lower() if isinstance(text, str) else text


#: rows per set-based UPDATE (well under SQLite's 32,766 bound parameters)
_CHUNK = 256


@functools.lru_cache(maxsize=512)
def _guarded_update_sql(shape: Shape, size: int) -> str:
    """The guarded UPDATE of ``size`` rows of ``shape``: ``UPDATE ... FROM (VALUES ...)``."""
    width = 1 + len(shape.guards) + len(shape.columns)
    sets, key, guard = guarded_update_terms(shape, lambda i: f"v.column{i + 1}", f"{T}.")
    rows = ", ".join(["(" + ", ".join("?" * width) + ")"] * size)
    return (
        f"UPDATE {T} SET {sets} FROM (VALUES {rows}) AS v WHERE {key} AND {guard}"
        f" RETURNING {T}.id, {T}.name"
    )


class SqliteStore(SqlStore):
    """The embedded default store."""

    dialect = "sqlite"
    now_sql = "(SELECT tideflow_now())"
    _finished_index = " INDEXED BY tideflow_tasks_finished"

    def __init__(self, path: str, *, busy_timeout: float = 30.0, synchronous: str = "FULL"):
        super().__init__()
        self.path = path
        self.safe_url = "sqlite::memory:" if path == ":memory:" else f"sqlite:{path}"
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from None
        conn.create_function("tideflow_covers", 2, _covers, deterministic=True)
        conn.create_function("tideflow_now", 0, _now)
        conn.create_function("tideflow_lower", 1, _lower, deterministic=True)
        if path != ":memory:":
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        self._conn: sqlite3.Connection | None = conn

    def _fold(self, column: str) -> str:
        return f"tideflow_lower({column})"

    @staticmethod
    def _retry_busy(fn: Any, attempts: int = 50) -> Any:
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or i == attempts - 1:
                    raise StoreError(f"SQLite error: {exc}") from None
                time.sleep(0.05)
        return None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("this store is closed; create a new TaskManager")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        with self._lock:
            conn = self._connection()
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error starting a write: {exc}") from None
            try:
                yield cur
            except sqlite3.Error as exc:
                conn.rollback()
                raise StoreError(f"SQLite error: {exc}") from None
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except sqlite3.Error as exc:
                conn.rollback()
                raise StoreError(f"SQLite error at commit: {exc}") from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._connection().cursor()
            try:
                yield cur
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error: {exc}") from None

    def _guarded_update(
        self, cur: Cursor, shape: Shape, rows: Sequence[Sequence[Any]]
    ) -> Callable[[], Iterable[tuple[int, str]]]:
        """Where SQLite has ``UPDATE ... FROM`` and ``RETURNING`` (3.35+): one statement per
        :data:`_CHUNK` rows, the rows bound as a ``VALUES`` list, returning the ids (and
        names) that held; older SQLite gets the portable statement per row."""
        if sqlite3.sqlite_version_info < (3, 35):
            return super()._guarded_update(cur, shape, rows)
        width = len(rows[0])
        held: list[tuple[int, str]] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            # padded to a power of two with rows that match nothing (NULL ids), so a few
            # statement texts cover every batch and stay in sqlite3's statement cache
            size = 1 << (len(chunk) - 1).bit_length()
            params = [v for row in chunk for v in row]
            params += [None] * (width * (size - len(chunk)))
            cur.execute(_guarded_update_sql(shape, size), params)
            held += [(r[0], r[1]) for r in cur.fetchall()]
        return lambda: held

    def _floor(self, expression: str) -> str:
        # FLOOR() needs SQLite's optional math functions; times are never negative
        return f"CAST({expression} AS INTEGER)"

    def _claim_candidates(self, cur: Cursor, request: ClaimRequest, fetch: int) -> list[Any]:
        names = sorted(request.names)
        # literal statuses: SQLite uses a partial index only when the terms match its own
        statuses = ", ".join(f"'{s}'" for s in CLAIMABLE)
        cur.execute(
            f"SELECT {TASK_SELECT} FROM {T} INDEXED BY tideflow_tasks_claim"
            f" WHERE status IN ({statuses}) AND next_run_time <= {self.now_sql}"
            f" AND name IN ({', '.join('?' * len(names))})"
            " AND (requires IS NULL OR tideflow_covers(requires, ?) = 1)"
            " ORDER BY priority DESC, next_run_time, id LIMIT ?",
            (
                *names,
                ",".join(sorted(request.capabilities)),
                fetch,
            ),
        )
        return cur.fetchall()

    def _measure_offset(self) -> float:
        """One host, one clock: the offset is 0 (and no query waits on the store's lock)."""
        return 0.0

    def setup(self) -> None:
        with self._write() as cur:
            self._run_migrations(cur, MIGRATIONS, SCHEMA_VERSION, "REAL")

    def schema_version(self) -> int:
        """The version recorded in the database (0 before ``setup``)."""
        with self._read() as cur:
            cur.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'tideflow_schema'"
            )
            if cur.fetchone() is None:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM tideflow_schema")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
