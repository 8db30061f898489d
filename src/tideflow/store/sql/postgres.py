"""PostgreSQL dialect: psycopg 3 with a connection pool, ``SKIP LOCKED`` claims, LISTEN/NOTIFY.

Every store operation borrows a pooled connection for one transaction (committed on exit, rolled
back on error); the pool checks a connection before lending it (with a round trip only when its
idle socket has something to say, see :func:`_check_idle`), so connections the server dropped
are replaced. Workers claim with ``FOR UPDATE SKIP LOCKED`` over a partial index on claimable
statuses. A transaction that makes a task claimable (due now or later) sends ``NOTIFY
tideflow_tasks``; subscribers hold one dedicated autocommit connection that LISTENs and wakes
the claim loop (an idle worker then sleeps until ``next_due()``; polling stays as the
fallback). A transaction that moves tasks to a terminal status sends their ids on
``tideflow_done`` (one ``pg_notify`` per transaction, comma-separated); ``tm.wait`` listens there
on one connection per store, shared by every waiter. Any other transaction that changes tasks
(a claim, progress, a pause) sends ``NOTIFY tideflow_changed``, so a dashboard listening on the
three channels (:meth:`PostgresStore.watch_changes`) hears of every change.

Liveness and eligibility are judged by the server's clock in the statement (:data:`NOW`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import select
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import ConnectionPool

from tideflow.core.types import TASK_COLUMNS, Change, ClaimRequest, NewTask, TaskRow
from tideflow.errors import StoreError
from tideflow.models import TERMINAL_STATUSES
from tideflow.store.factory import redact
from tideflow.store.sql.base import (
    CLAIMABLE,
    CLOSE_COLUMNS,
    INSERT_COLUMNS,
    INSERT_EVENT,
    MOVE_OPEN_ATTEMPTS,
    A,
    C,
    Cursor,
    E,
    Shape,
    SqlStore,
    T,
    guarded_update_terms,
)

__all__ = ["CHANGED_CHANNEL", "CHANNEL", "DONE_CHANNEL", "PostgresStore"]

log = logging.getLogger("tideflow.store")

SCHEMA_VERSION = 5
#: NOTIFY channel announcing that a task may be due now
CHANNEL = "tideflow_tasks"
#: NOTIFY channel carrying the ids of tasks that reached a terminal status: ``schema:id,id,...``
#: (channels are per database; the schema keeps tideflows in other schemas from waking ours)
DONE_CHANNEL = "tideflow_done"
#: NOTIFY channel announcing that tasks changed otherwise (claimed, progress, paused, ...): sent
#: by a transaction that sends neither of the two above; dashboards listen on all three
CHANGED_CHANNEL = "tideflow_changed"
#: the longest payload of one NOTIFY is 8000 bytes: longer id lists go in several
_DONE_PAYLOAD_MAX = 7900
#: ``pg_advisory_xact_lock`` key serialising concurrent ``setup()`` calls ("tideflow")
SETUP_LOCK = 0x7469646566_6C6F77 & 0x7FFFFFFFFFFFFFFF

#: the server's now as POSIX seconds. EXTRACT returns numeric: the cast keeps every comparison
#: float8 against the float8 time columns, so it stays an index condition (a column cast to
#: numeric could use no index). statement_timestamp() is stable, one value per statement
#: (unlike clock_timestamp()), so an index scan may use it.
NOW = "EXTRACT(EPOCH FROM statement_timestamp())::float8"

_CLAIMABLE_SQL = ", ".join(f"'{s}'" for s in CLAIMABLE)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tideflow_tasks (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            payload TEXT,
            result TEXT,
            error TEXT,
            tag TEXT,
            stage INTEGER NOT NULL DEFAULT 0,
            context BYTEA,
            created_at DOUBLE PRECISION NOT NULL,
            next_run_time DOUBLE PRECISION,
            start_time DOUBLE PRECISION,
            last_active_time DOUBLE PRECISION,
            last_event_type TEXT,
            last_event_time DOUBLE PRECISION,
            heartbeat_at DOUBLE PRECISION,
            timeout DOUBLE PRECISION NOT NULL,
            max_retries INTEGER NOT NULL,
            retry_count INTEGER NOT NULL DEFAULT 0,
            retry_interval DOUBLE PRECISION NOT NULL,
            retry_backoff TEXT NOT NULL,
            max_retry_interval DOUBLE PRECISION NOT NULL,
            retry_jitter INTEGER NOT NULL,
            cron_expr TEXT,
            tz TEXT,
            parent_id BIGINT,
            root_id BIGINT,
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
            progress_percent DOUBLE PRECISION
        )""",
        f"""CREATE INDEX tideflow_tasks_claim ON tideflow_tasks (priority DESC, next_run_time, id)
            WHERE status IN ({_CLAIMABLE_SQL})""",
        """CREATE INDEX tideflow_tasks_running ON tideflow_tasks (worker_id)
            WHERE status = 'running'""",
        """CREATE INDEX tideflow_tasks_parent ON tideflow_tasks (parent_id, parent_stage)
            WHERE parent_id IS NOT NULL""",
        "CREATE INDEX tideflow_tasks_root ON tideflow_tasks (root_id)",
        "CREATE INDEX tideflow_tasks_status_name ON tideflow_tasks (status, name)",
        "CREATE INDEX tideflow_tasks_tag ON tideflow_tasks (tag) WHERE tag IS NOT NULL",
        f"""CREATE UNIQUE INDEX tideflow_tasks_unique_key ON tideflow_tasks (unique_key)
            WHERE unique_key IS NOT NULL AND status NOT IN ({_TERMINAL_SQL})""",
        """CREATE TABLE tideflow_events (
            id BIGSERIAL PRIMARY KEY,
            task_id BIGINT NOT NULL,
            root_id BIGINT NOT NULL,
            parent_id BIGINT,
            event_type TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT,
            stage INTEGER NOT NULL,
            worker_id TEXT,
            attempt INTEGER,
            event_time DOUBLE PRECISION NOT NULL,
            message TEXT,
            metadata TEXT
        )""",
        "CREATE INDEX tideflow_events_task ON tideflow_events (task_id)",
        "CREATE INDEX tideflow_events_root ON tideflow_events (root_id)",
        """CREATE TABLE tideflow_attempts (
            id BIGSERIAL PRIMARY KEY,
            task_id BIGINT NOT NULL,
            root_id BIGINT NOT NULL,
            attempt INTEGER NOT NULL,
            worker_id TEXT NOT NULL,
            stage INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            outcome TEXT,
            error TEXT,
            timeout_flag INTEGER NOT NULL DEFAULT 0,
            duration_seconds DOUBLE PRECISION,
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
            registered_at DOUBLE PRECISION NOT NULL,
            last_seen_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    # one worker at a time runs the sweeps for everyone (recovery, stalls, retention)
    2: (
        """CREATE TABLE tideflow_leases (
            name TEXT PRIMARY KEY,
            holder TEXT,
            renewed_at DOUBLE PRECISION NOT NULL
        )""",
        "INSERT INTO tideflow_leases (name, holder, renewed_at) VALUES ('maintenance', NULL, 0)",
    ),
    # the W3C trace context of the submit (JSON of the propagation headers), when traced
    3: ("ALTER TABLE tideflow_tasks ADD COLUMN trace_context TEXT",),
    # cheap to watch: the counts of tasks per name and status, kept by every write (see
    # SqlStore._counting) in shards, filled from the tasks there are; the finished tasks by
    # time, for the throughput histogram (only rows in a finished status are in it)
    4: (
        """CREATE TABLE tideflow_task_counts (
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            shard INTEGER NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (name, status, shard)
        )""",
        f"""CREATE INDEX tideflow_tasks_finished ON tideflow_tasks (last_active_time, status)
            WHERE status IN ({_TERMINAL_SQL})""",
        "DELETE FROM tideflow_task_counts",
        """INSERT INTO tideflow_task_counts (name, status, shard, n)
            SELECT name, status, 0, COUNT(*) FROM tideflow_tasks GROUP BY name, status""",
    ),
    # each fact once: an attempt's row is written when it closes; while it is open, the
    # running task row states it, with the id its row will get (taken from the attempts'
    # sequence by the claim): the open attempt rows move onto their tasks
    5: ("ALTER TABLE tideflow_tasks ADD COLUMN attempt_id BIGINT", *MOVE_OPEN_ATTEMPTS),
}

_INSERT_TASK = (
    f"INSERT INTO {T} (id, {', '.join(INSERT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * (len(INSERT_COLUMNS) + 1))})"
)
_INSERT_UNIQUE = (
    _INSERT_TASK + " ON CONFLICT (unique_key)"
    f" WHERE unique_key IS NOT NULL AND status NOT IN ({_TERMINAL_SQL}) DO NOTHING RETURNING id"
)
_PLAN_BY_ID = "SELECT " + ", ".join(
    f"set_config('enable_{name}', 'off', true)"
    for name in ("seqscan", "bitmapscan", "sort", "hashjoin", "mergejoin")
)
#: the attempts' sequence: the claim reads the ids of the attempts it opens from it. Looked up
#: once per statement (a subquery): per row, the lookup cost 10 times the nextval
_ATTEMPT_SEQ = f"(SELECT pg_get_serial_sequence('{A}', 'id'))"
#: the due candidates, each read with a fresh attempt id in place of its stored one: the id of
#: the attempt a claim of it opens (no round trip to reserve them; a candidate left unclaimed
#: leaves a gap in the ids, nothing else)
_CLAIM = (
    "SELECT "
    + ", ".join(f"nextval({_ATTEMPT_SEQ})" if c == "attempt_id" else c for c in TASK_COLUMNS)
    + f" FROM {T}"
    f" WHERE status IN ({_CLAIMABLE_SQL}) AND next_run_time <= {NOW} AND name = ANY(%s)"
    " AND (requires IS NULL OR string_to_array(requires, ',') <@ %s::text[])"
    " ORDER BY priority DESC, next_run_time, id LIMIT %s FOR UPDATE SKIP LOCKED"
)


def _column_types(ddl: str) -> dict[str, str]:
    types = {"INTEGER": "integer", "BIGINT": "bigint", "BIGSERIAL": "bigint", "TEXT": "text"}
    types |= {"DOUBLE PRECISION": "float8", "BYTEA": "bytea"}
    found: dict[str, str] = {}
    for line in ddl.splitlines():
        parts = line.strip().rstrip(",").split(" ", 1)
        if len(parts) == 2:
            for sql_type, array_type in types.items():
                if parts[1].startswith(sql_type):
                    found[parts[0]] = array_type
    return found


#: the SQL type of each task column, for batched writes
_COLUMN_TYPES = _column_types(MIGRATIONS[1][0]) | {"trace_context": "text", "attempt_id": "bigint"}


def _q_style(sql: str) -> str:
    """A portable ``?`` statement in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


def _json(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as one JSON array of arrays: a single parameter however many rows (bytes as hex)."""
    return json.dumps(rows, separators=(",", ":"), default=bytes.hex)


def _json_rows(types: Sequence[str]) -> str:
    """A SELECT turning the JSON parameter of :func:`_json` back into typed columns c0, c1..."""
    cols = ", ".join(
        f"decode(e->>{k}, 'hex') AS c{k}" if ty == "bytea" else f"(e->>{k})::{ty} AS c{k}"
        for k, ty in enumerate(types)
    )
    return f"SELECT {cols} FROM json_array_elements(%s::json) AS e"


#: below this many rows, plain pipelined INSERTs beat COPY (which costs round trips of its own)
COPY_MIN_ROWS = 32
_INSERT_EVENT = _q_style(INSERT_EVENT)
_ROOT_PARAM = INSERT_COLUMNS.index("root_id")
_JITTER_PARAM = INSERT_COLUMNS.index("retry_jitter")
_TASK_TYPES = ("bigint", *(_COLUMN_TYPES[c] for c in INSERT_COLUMNS))
_COPY_TASKS = f"COPY {T} (id, {', '.join(INSERT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_EVENT_TYPES = (
    "bigint", "bigint", "bigint", "text", "text", "text", "integer", "text", "integer",
    "float8", "text", "text",
)  # fmt: skip
_COPY_EVENTS = (
    f"COPY {E} (task_id, root_id, parent_id, event_type, from_status, to_status, stage,"
    " worker_id, attempt, event_time, message, metadata) FROM STDIN (FORMAT BINARY)"
)
_SEQ = f"pg_get_serial_sequence('{T}', 'id')"
#: one task without a unique key (``submit``) in one statement, run on its own (autocommit):
#: its id taken from the sequence in the statement (no round trip to reserve it; a root's
#: root_id is its own id), its events (one JSON parameter), its kept count, and the wake-up
_SUBMIT_ONE = (
    f"WITH r AS MATERIALIZED (SELECT nextval({_SEQ}) AS id),"
    f" t AS (INSERT INTO {T} (id, {', '.join(INSERT_COLUMNS)}) SELECT r.id, "
    + ", ".join(
        "COALESCE(%s::bigint, r.id)" if c == "root_id" else f"%s::{_COLUMN_TYPES[c]}"
        for c in INSERT_COLUMNS
    )
    + " FROM r RETURNING id, root_id),"
    f" e AS (INSERT INTO {E} (task_id, root_id, parent_id, event_type, from_status, to_status,"
    " stage, worker_id, attempt, event_time, message, metadata)"
    " SELECT t.id, t.root_id, v.* FROM t, (" + _json_rows(_EVENT_TYPES[2:]) + ") AS v),"
    f" c AS (INSERT INTO {C} (name, status, shard, n) VALUES (%s, %s, %s, 1)"
    f" ON CONFLICT (name, status, shard) DO UPDATE SET n = {C}.n + 1)"
    " SELECT t.id, pg_notify(%s, '') FROM t"
)
_CLOSE_TYPES = (
    "bigint", "bigint", "bigint", "integer", "text", "integer", "float8", "float8", "text",
    "text", "integer", "float8",
)  # fmt: skip
#: the rows of closing attempts (:func:`~tideflow.store.sql.base.close_params`, one JSON
#: parameter), each with the id its claim gave it (a task claimed before schema 5 has none:
#: one from the sequence)
_CLOSE_ATTEMPTS = (
    f"INSERT INTO {A} ({CLOSE_COLUMNS}) SELECT COALESCE(v.c0, nextval({_ATTEMPT_SEQ})), "
    + ", ".join(f"v.c{k}" for k in range(1, 12))
    + " FROM ("
    + _json_rows(_CLOSE_TYPES)
    + ") AS v"
)


@functools.lru_cache(maxsize=256)
def _guarded_update_sql(shape: Shape) -> str:
    """The guarded UPDATE of ``shape``, its rows one JSON parameter (:func:`_json`). The guard
    sits in ``COALESCE``, out of the planner's reach: the rows are found by id alone."""
    types = ["bigint", *(_COLUMN_TYPES[c] for c in shape.guards)]
    types += [_COLUMN_TYPES[c] for c in shape.columns]
    sets, key, guard = guarded_update_terms(shape, lambda i: f"v.c{i}", "t.")
    return (
        f"UPDATE {T} AS t SET {sets} FROM ({_json_rows(types)}) AS v"
        f" WHERE {key} AND COALESCE({guard}, false) RETURNING t.id, t.name"
    )


def _check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before it lends a connection: a round trip only when needed.

    ``ConnectionPool.check_connection`` sends an empty query every time a connection is lent,
    which doubled an idle worker's transactions. A pooled connection sits idle outside any
    transaction and LISTENs to nothing, so its socket has nothing to read unless the server
    wrote to it: a terminated backend (``pg_terminate_backend``, a restart, an idle timeout)
    sends its FATAL error and closes the socket. So the round trip is made only when the socket
    is readable; a check that fails makes the pool discard the connection and lend another.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    try:
        readable = bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        readable = True
    if readable:
        ConnectionPool.check_connection(conn)


def _conninfo(url: str) -> str:
    """``url`` as libpq accepts it (``psql://`` and ``postgres://`` become ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("psql", "postgres", "postgresql"):
        return f"postgresql://{rest}"
    return url


def _notify(cur: Cursor) -> None:
    """Announce on commit that a task may be due now."""
    assert isinstance(cur, _Tx)
    cur.notify = True


def _done_payloads(task_ids: Sequence[int]) -> list[str]:
    """``task_ids`` as comma-separated NOTIFY payloads, each within the 8000-byte limit."""
    payloads: list[str] = []
    part: list[str] = []
    size = 0
    for task_id in task_ids:
        text = str(task_id)
        if part and size + len(text) + 1 > _DONE_PAYLOAD_MAX:
            payloads.append(",".join(part))
            part, size = [], 0
        part.append(text)
        size += len(text) + 1
    if part:
        payloads.append(",".join(part))
    return payloads


def _parse_done(payload: str, schema: str | None) -> list[int] | None:
    """The task ids of a :data:`DONE_CHANNEL` payload from ``schema`` (anything unreadable is
    skipped); None when it comes from another schema."""
    sender, _, ids = payload.rpartition(":")
    if sender != schema:
        return None
    return [int(part) for part in ids.split(",") if part.strip().isdigit()]


def _task_params(values: Any) -> list[Any]:
    """A new task's values in :data:`INSERT_COLUMNS` order, as PostgreSQL takes them."""
    params = [*map(values.get, INSERT_COLUMNS)]
    params[_JITTER_PARAM] = 1 if params[_JITTER_PARAM] else 0
    return params


def _waits(values: Any) -> bool:
    """Whether a row written with ``values`` waits to be claimed, now or later: a worker woken
    for a task due later finds its claim short and sleeps until ``next_due()``."""
    return values.get("status") in CLAIMABLE


class _Tx:
    """The store's cursor for one write transaction, in pipeline mode while it runs statements.

    Statements are queued and their results read only when needed; each runs on its own psycopg
    cursor (a pipelined cursor that ran several statements may still hold an earlier one's
    result), and ``rowcount`` and ``fetch*`` answer for the latest after syncing the pipeline.
    Events wait until :meth:`finish`, which writes them just before the commit (many with one
    ``COPY``, several times cheaper than INSERTs for the server; ``COPY`` cannot run in
    pipeline mode, so the pipeline is left for it).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._stack: contextlib.ExitStack | None = None
        self._pipeline: psycopg.Pipeline | None = None
        self._last: psycopg.Cursor[Any] | None = None
        #: whether statements were queued since the pipeline was last synced
        self._queued = False
        self.events: list[Sequence[Any]] = []
        self.notify = False
        #: whether this transaction changed tasks (announced on commit when nothing else is)
        self.changed = False
        #: ids of tasks this transaction moved to a terminal status (announced on commit)
        self.done: list[int] = []
        #: the kept counts' upsert (statement, parameters), run last before the commit, so
        #: the counts row stays locked for the shortest time
        self.counts: tuple[str, Sequence[Any]] | None = None

    def _pipelined(self) -> None:
        if self._stack is None:
            stack = contextlib.ExitStack()
            self._pipeline = stack.enter_context(self._conn.pipeline())
            self._stack = stack

    def _leave(self, *exc: Any) -> None:
        """Leave pipeline mode (sending and checking everything queued)."""
        stack, self._stack, self._pipeline = self._stack, None, None
        self._queued = False
        if stack is not None:
            stack.__exit__(*(exc or (None, None, None)))

    def _latest(self) -> psycopg.Cursor[Any]:
        if self._last is None:
            raise psycopg.ProgrammingError("no statement was executed")
        self.sync()
        return self._last

    @property
    def rowcount(self) -> int:
        return self._latest().rowcount

    @property
    def lastrowid(self) -> Any:  # pragma: no cover - PostgreSQL uses RETURNING
        raise NotImplementedError("use RETURNING id")

    def sync(self) -> None:
        """Send everything queued and wait for the results (nothing to do, and no round trip,
        when nothing was queued since the last sync)."""
        if self._pipeline is not None and self._queued:
            self._pipeline.sync()
            self._queued = False

    def new_cursor(self) -> psycopg.Cursor[Any]:
        """A cursor of its own for one statement whose result is read later."""
        self._pipelined()
        self._queued = True
        return self._conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        self._pipelined()
        self._queued = True
        self._last = self._conn.cursor()
        return self._last.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> Any:
        self._pipelined()
        self._queued = True
        self._last = self._conn.cursor()
        return self._last.executemany(sql, params)

    def fetchone(self) -> Any:
        return self._latest().fetchone()

    def fetchall(self) -> list[Any]:
        return self._latest().fetchall()

    def copy(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """``COPY ... FROM STDIN`` of ``rows`` in binary, now (leaving the pipeline)."""
        self._leave()
        with self._conn.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def finish(self) -> None:
        """Write the held-back audit rows, then whatever must precede the commit."""
        if len(self.events) >= COPY_MIN_ROWS:
            self.copy(_COPY_EVENTS, _EVENT_TYPES, self.events)
        elif self.events:
            self.executemany(_INSERT_EVENT, self.events)
        if self.counts is not None:
            self.execute(*self.counts)
        if self.notify:
            self.execute(f"NOTIFY {CHANNEL}")
        if self.done:
            for payload in _done_payloads(self.done):
                self.execute(
                    "SELECT pg_notify(%s, current_schema() || ':' || %s)", (DONE_CHANNEL, payload)
                )
        if self.changed and not self.notify and not self.done:
            self.execute(f"NOTIFY {CHANGED_CHANNEL}")
        if self._pipeline is not None:
            # the COMMIT goes with the statements still queued: one round trip for both
            self._conn.commit()
        self._leave()

    def abort(self, exc: BaseException) -> None:
        """Leave the pipeline after an error (the caller rolls back)."""
        with contextlib.suppress(psycopg.Error):
            self._leave(type(exc), exc, exc.__traceback__)


class _Listener:
    """A daemon thread that LISTENs on ``channel`` and calls ``on_notify(payload)`` per
    notification, and ``on_notify(None)`` each time it starts listening (notifications sent
    while it was not are lost)."""

    def __init__(
        self,
        conninfo: str,
        safe_url: str,
        channel: str,
        on_notify: Callable[[str | None], None],
    ) -> None:
        self._conninfo = conninfo
        self._safe_url = safe_url
        self._channel = channel
        self._on_notify = on_notify
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        #: the schema tables are found in on this connection (read on each connect)
        self.schema: str | None = None
        self._thread = threading.Thread(target=self._run, name="tideflow-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                log.warning(
                    "LISTEN on %s failed, retrying in %.1fs: %s", self._safe_url, delay, exc
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._conn = conn
            try:
                found = conn.execute("SELECT current_schema()").fetchone()
                self.schema = None if found is None else found[0]
                for channel in self._channel.split(","):  # one or several, comma-separated
                    conn.execute(f"LISTEN {channel}")
                delay = 0.1
                self._call(None)  # anything that happened while we were not listening
                while not self._stop.is_set():
                    for notify in conn.notifies(timeout=0.5):
                        self._call(notify.payload)
                        if self._stop.is_set():
                            break
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning(
                        "LISTEN connection to %s lost, reconnecting: %s", self._safe_url, exc
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, 5.0)
            finally:
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()

    def _call(self, payload: str | None) -> None:
        try:
            self._on_notify(payload)
        except Exception:  # pragma: no cover - the waker must not kill the listener
            log.exception("tideflow wake-up callback failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class PostgresStore(SqlStore):
    """PostgreSQL 12+ through psycopg 3."""

    dialect = "postgresql"
    parallel_exchanges = 2
    lock_rows = " FOR UPDATE"
    now_sql = NOW
    count_shards = 16
    # readers go on; a writer waits at its counts statement, its last before the commit
    lock_counts = (f"LOCK TABLE {C} IN EXCLUSIVE MODE",)

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self.safe_url = redact(url)
        self._password = urlsplit(url).password if "://" in url else None
        self._conninfo = _conninfo(url)
        try:
            psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot read PostgreSQL connection string: {self._clean(exc)}"
            ) from None
        self._sql_cache: dict[str, str] = {}
        self._listeners: list[_Listener] = []
        #: the waiters' LISTEN on DONE_CHANNEL: one connection, started by the first watcher
        self._done_listener: _Listener | None = None
        self._done_watchers: dict[int, Callable[[Sequence[int] | None], None]] = {}
        self._done_next = 0
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = ConnectionPool(
            self._conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            check=_check_idle,
            kwargs={"connect_timeout": 10},
            name="tideflow",
            open=True,
        )

    # --- errors --------------------------------------------------------------------------------
    def _clean(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _error(self, exc: BaseException, doing: str = "") -> StoreError:
        where = f" {doing}" if doing else ""
        return StoreError(f"PostgreSQL error{where} ({self.safe_url}): {self._clean(exc)}")

    # --- hooks ---------------------------------------------------------------------------------
    def _q(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = _q_style(sql)
            self._sql_cache[sql] = cached
        return cached

    def _get_pool(self) -> ConnectionPool[Any]:
        pool = self._pool
        if pool is None:
            raise StoreError("this store is closed; create a new TaskManager")
        return pool

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        pool = self._get_pool()
        try:
            # leaving pool.connection() commits (or rolls back on error)
            with pool.connection() as conn:
                tx = _Tx(conn)
                try:
                    yield tx
                    tx.finish()
                except BaseException as exc:
                    tx.abort(exc)
                    raise
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        pool = self._get_pool()
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def _plan_by_id(self, cur: Cursor) -> None:
        # Statistics lag behind a queue's bursts: freshly loaded or long-idle tables estimate
        # "status = 'pending'" as a handful of rows, and the planner then scans the whole backlog
        # (bitmap scan plus sort, or a join that filters every pending row) on every batch. With
        # these off for this transaction only, the claim walks the partial claim index in order
        # and the batched writes find their rows through the primary key.
        cur.execute(_PLAN_BY_ID)

    def _insert_id(self, cur: Cursor, sql: str, params: Sequence[Any]) -> int:
        cur.execute(self._q(sql) + " RETURNING id", params)
        return int(cur.fetchone()[0])

    def _claim_candidates(self, cur: Cursor, request: ClaimRequest, fetch: int) -> list[Any]:
        cur.execute(
            _CLAIM,
            (sorted(request.names), sorted(request.capabilities), fetch),
        )
        return cur.fetchall()

    # --- batched inserts and wake-ups ----------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[NewTask]) -> list[int]:
        if len(tasks) != 1 or tasks[0].values.get("unique_key") is not None:
            return super().insert_tasks(tasks)
        # one task (``submit``): one statement in its own implicit transaction, one round trip
        task = tasks[0]
        values = task.values
        params = _task_params(values)
        events = [self._event_params(0, 0, values.get("parent_id"), e)[2:] for e in task.events]
        channel = CHANNEL if _waits(values) else CHANGED_CHANNEL
        shard = random.randrange(self.count_shards)
        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                conn.autocommit = True
                try:
                    row = conn.execute(
                        _SUBMIT_ONE,
                        (*params, _json(events), values["name"], values["status"], shard, channel),
                    ).fetchone()
                finally:
                    # fails only on a broken connection, which the pool then discards
                    with contextlib.suppress(psycopg.Error):
                        conn.autocommit = False
        except psycopg.Error as exc:
            raise self._error(exc) from None
        if row is None:  # pragma: no cover - the statement returns the task's row
            raise StoreError("the task insert returned no id")
        return [int(row[0])]

    def _insert_many(self, cur: Cursor, tasks: Sequence[NewTask]) -> list[int]:
        """Insert in three round trips for the batch: reserve ids, insert rows, insert events."""
        if not tasks:
            return []
        cur.execute(
            f"SELECT nextval({_SEQ}) FROM generate_series(1, %s)",
            (len(tasks),),
        )
        reserved = sorted(int(r[0]) for r in cur.fetchall())
        tally = self._tally()
        ids: list[int] = []
        rows: list[list[Any]] = []
        events: list[tuple[Any, ...]] = []
        for task, task_id in zip(tasks, reserved, strict=True):
            values = task.values
            root_id = values.get("root_id")
            if root_id is None:
                root_id = task_id
            params = [task_id, *_task_params(values)]
            params[1 + _ROOT_PARAM] = root_id
            key = values.get("unique_key")
            if key is not None:
                found = self._insert_unique(cur, params, key)
                if found is not None:
                    ids.append(found)
                    continue
            else:
                rows.append(params)
            ids.append(task_id)
            counted = (values["name"], values["status"])
            tally[counted] = tally.get(counted, 0) + 1
            parent_id = values.get("parent_id")
            events += [self._event_params(task_id, root_id, parent_id, e) for e in task.events]
            if _waits(values):
                _notify(cur)
        assert isinstance(cur, _Tx)
        cur.changed = True
        if len(rows) >= COPY_MIN_ROWS:
            assert isinstance(cur, _Tx)
            cur.copy(_COPY_TASKS, _TASK_TYPES, rows)
        elif rows:
            cur.executemany(_INSERT_TASK, rows)
        self._insert_event_rows(cur, events)
        return ids

    def _insert_unique(self, cur: Cursor, params: list[Any], key: str) -> int | None:
        """Insert a task with a ``unique_key``; return the open task's id if one holds the key."""
        for _ in range(5):
            cur.execute(_INSERT_UNIQUE, params)
            if cur.fetchone() is not None:
                return None
            cur.execute(
                f"SELECT id FROM {T} WHERE unique_key = %s AND status NOT IN ({_TERMINAL_SQL})",
                (key,),
            )
            found = cur.fetchone()
            if found is not None:
                return int(found[0])
        raise StoreError(f"could not insert or find the open task with unique_key {key!r}")

    # --- the guarded update of a shape, and wake-ups -----------------------------------------
    def _guarded_update(
        self, cur: Cursor, shape: Shape, rows: Sequence[Sequence[Any]]
    ) -> Callable[[], Iterable[tuple[int, str]]]:
        """One ``UPDATE ... FROM`` (the rows as one JSON parameter) ``RETURNING`` the ids (and
        names) that held, on a pipelined cursor of its own: every shape of a run costs one
        round trip."""
        assert isinstance(cur, _Tx)
        update = cur.new_cursor()
        update.execute(_guarded_update_sql(shape), (_json(rows),))

        def read() -> list[tuple[int, str]]:
            cur.sync()
            ids = [(int(r[0]), r[1]) for r in update.fetchall()]
            update.close()
            return ids

        return read

    def _on_held(self, cur: Cursor, changes: Sequence[Change]) -> None:
        """Note the wake-ups to send at commit: ``tideflow_tasks`` when a change made a task
        claimable (due now or later), the ids of tasks it made terminal on ``tideflow_done``."""
        assert isinstance(cur, _Tx)
        cur.changed = cur.changed or bool(changes)
        for c in changes:
            status = c.values.get("status")
            if status in TERMINAL_STATUSES:
                cur.done.append(c.task_id)
            elif not cur.notify and _waits(c.values):
                cur.notify = True

    def _insert_event_rows(self, cur: Cursor, rows: Sequence[Sequence[Any]]) -> None:
        assert isinstance(cur, _Tx)
        cur.events += rows

    def _write_counts(self, cur: Cursor, rows: Sequence[tuple[str, str, int]]) -> None:
        """The counts' upsert waits in the transaction until :meth:`_Tx.finish`, after the
        audit rows: it is the last statement before the commit."""
        assert isinstance(cur, _Tx)
        shard = random.randrange(self.count_shards)
        cur.counts = (
            self._q(self._counts_upsert(len(rows))),
            [v for name, status, n in rows for v in (name, status, shard, n)],
        )

    def _write_attempts(self, cur: Cursor, closes: Sequence[Sequence[Any]]) -> None:
        if closes:
            cur.execute(_CLOSE_ATTEMPTS, (_json(closes),))

    def _attempt_ids(self, cur: Cursor, rows: Sequence[TaskRow]) -> Sequence[int | None]:
        # the candidates were read with fresh ids from the sequence (_CLAIM): no round trip
        return [row.attempt_id for row in rows]

    def _listen(self, channels: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` on every notification on ``channels``; return the unsubscribe."""
        self._get_pool()
        listener = _Listener(self._conninfo, self.safe_url, channels, lambda _payload: wake())
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            listener.stop()
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return self._listen(CHANNEL, wake)

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return self._listen(f"{CHANNEL},{DONE_CHANNEL},{CHANGED_CHANNEL}", wake)

    def watch_finished(
        self, on_finished: Callable[[Sequence[int] | None], None]
    ) -> Callable[[], None] | None:
        self._get_pool()
        with self._lock:
            key = self._done_next
            self._done_next += 1
            self._done_watchers[key] = on_finished
            if self._done_listener is None:
                self._done_listener = _Listener(
                    self._conninfo, self.safe_url, DONE_CHANNEL, self._finished
                )

        def unsubscribe() -> None:
            with self._lock:
                self._done_watchers.pop(key, None)

        return unsubscribe

    def _finished(self, payload: str | None) -> None:
        """Hand a :data:`DONE_CHANNEL` notification (None: after (re)connecting) to watchers."""
        with self._lock:
            watchers = list(self._done_watchers.values())
            listener = self._done_listener
        task_ids: list[int] | None = None
        if payload is not None:
            task_ids = _parse_done(payload, None if listener is None else listener.schema)
            if not task_ids:
                return  # another schema's tasks
        for on_finished in watchers:
            try:
                on_finished(task_ids)
            except Exception:  # pragma: no cover - a watcher must not kill the listener
                log.exception("tideflow finish callback failed")

    # --- schema --------------------------------------------------------------------------------
    def setup(self) -> None:
        with self._write() as cur:
            # concurrent setup() calls (several processes starting at once) queue here
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
            self._run_migrations(cur, MIGRATIONS, SCHEMA_VERSION, "DOUBLE PRECISION")

    def schema_version(self) -> int:
        """The version recorded in the database (0 before ``setup``)."""
        with self._read() as cur:
            cur.execute("SELECT to_regclass('tideflow_schema') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM tideflow_schema")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            listeners, self._listeners = self._listeners, []
            if self._done_listener is not None:
                listeners.append(self._done_listener)
            self._done_listener = None
            self._done_watchers.clear()
            pool, self._pool = self._pool, None
        for listener in listeners:
            listener.stop()
        if pool is not None:
            pool.close()
