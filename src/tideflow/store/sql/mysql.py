"""MySQL 8 / MariaDB 10.6+ dialect: PyMySQL, a thin connection pool, ``SKIP LOCKED`` claims.

Driver: PyMySQL. It is pure Python (no libmysqlclient headers or compiler needed, unlike
``mysqlclient``), maintained by the PyMySQL organisation, ships universal wheels, speaks to both
MySQL and MariaDB, and is synchronous like the rest of the store (``asyncmy``/``aiomysql`` are
async-only, and ``aiomysql`` is itself built on PyMySQL).

Sessions run with ``autocommit`` off, ``READ COMMITTED``, utf8mb4, a strict ``sql_mode``
(``sql_mode``/``init_command`` connect arguments) and ``time_zone = '+00:00'``, so the server's
now (:data:`NOW`, which judges liveness and eligibility in the statement) never passes through
a time zone with daylight saving time. The pool holds at most ``pool_size`` connections (URL
option, default 8), in use or idle; a caller finding all of them in use waits up to
``pool_timeout`` seconds (default 15) and then gets a :class:`StoreError`. A pooled connection
is pinged on checkout and replaced by a new one when it was dropped (PyMySQL 1.2 deprecates
``ping(reconnect=True)``).
``CLIENT.FOUND_ROWS`` makes ``rowcount`` count matched rows (as SQLite and PostgreSQL do), so a
compare-and-set that writes unchanged values still reports that it held.

MySQL has no partial indexes. Two STORED generated columns stand in for them: ``claimable`` (1
for a claimable status, NULL otherwise) leads the claim index, so claims scan only claimable
rows however many tasks have finished; ``open_unique_key`` (``unique_key`` while the task is not
terminal, NULL after) carries the unique index. Neither appears in the column list the shared
``INSERT`` names. The claim index is ``(claimable, priority DESC, next_run_time, id)``: MySQL 8
and MariaDB 10.8+ walk it in claim order; older MariaDB ignores ``DESC`` and sorts only the
claimable rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import re
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql
from pymysql.constants import CLIENT
from pymysql.converters import escape_string

from tideflow.core.types import TASK_COLUMNS, ClaimRequest, NewTask, TaskRow
from tideflow.errors import StoreError
from tideflow.models import TERMINAL_STATUSES
from tideflow.store.factory import redact
from tideflow.store.sql.base import (
    CLAIMABLE,
    CLOSE_COLUMNS,
    COUNT_ATTEMPT_IDS,
    INSERT_COLUMNS,
    MOVE_OPEN_ATTEMPTS,
    A,
    Cursor,
    E,
    Shape,
    SqlStore,
    T,
    guarded_update_terms,
)

__all__ = ["MysqlStore"]

SCHEMA_VERSION = 5
#: the server's now as POSIX seconds (DECIMAL; compared with DOUBLE columns as DOUBLE). NOW() is
#: fixed for the statement; our sessions' time_zone is UTC, so no DST fold can skew it.
NOW = "UNIX_TIMESTAMP(NOW(6))"

_CLAIMABLE_SQL = ", ".join(f"'{s}'" for s in CLAIMABLE)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))

_TRACE_COLUMN = "trace_context"
_ATTEMPT_ID_COLUMN = "attempt_id"
_FINISHED_INDEX = "tideflow_tasks_finished"
#: ``{options}`` is replaced by the table options (engine, charset, collation) at setup
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE IF NOT EXISTS tideflow_tasks (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            type VARCHAR(32) NOT NULL,
            status VARCHAR(32) NOT NULL,
            priority INT NOT NULL DEFAULT 0,
            payload LONGTEXT,
            result LONGTEXT,
            error LONGTEXT,
            tag VARCHAR(255),
            stage INT NOT NULL DEFAULT 0,
            context LONGBLOB,
            created_at DOUBLE NOT NULL,
            next_run_time DOUBLE,
            start_time DOUBLE,
            last_active_time DOUBLE,
            last_event_type VARCHAR(64),
            last_event_time DOUBLE,
            heartbeat_at DOUBLE,
            timeout DOUBLE NOT NULL,
            max_retries INT NOT NULL,
            retry_count INT NOT NULL DEFAULT 0,
            retry_interval DOUBLE NOT NULL,
            retry_backoff VARCHAR(32) NOT NULL,
            max_retry_interval DOUBLE NOT NULL,
            retry_jitter TINYINT NOT NULL,
            cron_expr TEXT,
            tz VARCHAR(255),
            parent_id BIGINT,
            root_id BIGINT,
            parent_stage INT,
            total_children INT NOT NULL DEFAULT 0,
            completed_children INT NOT NULL DEFAULT 0,
            worker_id VARCHAR(255),
            attempt INT NOT NULL DEFAULT 0,
            requires TEXT,
            unique_key VARCHAR(255),
            suspend_reason VARCHAR(255),
            current_stage_name TEXT,
            progress_text LONGTEXT,
            progress_percent DOUBLE,
            claimable TINYINT AS (IF(status IN ({_CLAIMABLE_SQL}), 1, NULL)) STORED,
            open_unique_key VARCHAR(255)
                AS (IF(status IN ({_TERMINAL_SQL}), NULL, unique_key)) STORED,
            KEY tideflow_tasks_claim (claimable, priority DESC, next_run_time, id),
            KEY tideflow_tasks_running (status, worker_id),
            KEY tideflow_tasks_parent (parent_id, parent_stage),
            KEY tideflow_tasks_root (root_id),
            KEY tideflow_tasks_status_name (status, name),
            KEY tideflow_tasks_tag (tag),
            KEY tideflow_tasks_unique_key (unique_key),
            UNIQUE KEY tideflow_tasks_open_unique_key (open_unique_key)
        ) {{options}}""",
        """CREATE TABLE IF NOT EXISTS tideflow_events (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            task_id BIGINT NOT NULL,
            root_id BIGINT NOT NULL,
            parent_id BIGINT,
            event_type VARCHAR(64) NOT NULL,
            from_status VARCHAR(32),
            to_status VARCHAR(32),
            stage INT NOT NULL,
            worker_id VARCHAR(255),
            attempt INT,
            event_time DOUBLE NOT NULL,
            message LONGTEXT,
            metadata LONGTEXT,
            KEY tideflow_events_task (task_id),
            KEY tideflow_events_root (root_id)
        ) {options}""",
        """CREATE TABLE IF NOT EXISTS tideflow_attempts (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            task_id BIGINT NOT NULL,
            root_id BIGINT NOT NULL,
            attempt INT NOT NULL,
            worker_id VARCHAR(255) NOT NULL,
            stage INT NOT NULL,
            started_at DOUBLE NOT NULL,
            ended_at DOUBLE,
            outcome VARCHAR(32),
            error LONGTEXT,
            timeout_flag TINYINT NOT NULL DEFAULT 0,
            duration_seconds DOUBLE,
            UNIQUE KEY tideflow_attempts_task (task_id, attempt),
            KEY tideflow_attempts_root (root_id)
        ) {options}""",
        """CREATE TABLE IF NOT EXISTS tideflow_workers (
            worker_id VARCHAR(255) NOT NULL PRIMARY KEY,
            pod_id VARCHAR(255),
            host VARCHAR(255) NOT NULL,
            pid BIGINT NOT NULL,
            status VARCHAR(32) NOT NULL,
            capabilities LONGTEXT NOT NULL,
            handlers LONGTEXT NOT NULL,
            concurrency INT NOT NULL,
            registered_at DOUBLE NOT NULL,
            last_seen_at DOUBLE NOT NULL,
            expires_at DOUBLE NOT NULL
        ) {options}""",
    ),
    # one worker at a time runs the sweeps for everyone (recovery, stalls, retention)
    2: (
        """CREATE TABLE IF NOT EXISTS tideflow_leases (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            holder VARCHAR(255),
            renewed_at DOUBLE NOT NULL
        ) {options}""",
        "INSERT IGNORE INTO tideflow_leases (name, holder, renewed_at)"
        " VALUES ('maintenance', NULL, 0)",
    ),
    # the W3C trace context of the submit (JSON of the propagation headers), when traced;
    # MySQL has no ADD COLUMN IF NOT EXISTS: setup skips it when the column is there already
    # (a migration interrupted after it), see MysqlStore._migrate
    3: (f"ALTER TABLE tideflow_tasks ADD COLUMN {_TRACE_COLUMN} TEXT",),
    # cheap to watch: the counts of tasks per name and status, kept by every write (see
    # SqlStore._counting) in shards, filled from the tasks there are; the tasks by status and
    # time, for the throughput histogram (no partial indexes here). The DDL comes first (each
    # commits by itself; setup skips the index when it is there already), the refill last,
    # committed with the version row
    4: (
        """CREATE TABLE IF NOT EXISTS tideflow_task_counts (
            name VARCHAR(255) NOT NULL,
            status VARCHAR(32) NOT NULL,
            shard INT NOT NULL,
            n BIGINT NOT NULL,
            PRIMARY KEY (name, status, shard)
        ) {options}""",
        f"CREATE INDEX {_FINISHED_INDEX} ON tideflow_tasks (status, last_active_time)",
        "DELETE FROM tideflow_task_counts",
        """INSERT INTO tideflow_task_counts (name, status, shard, n)
            SELECT name, status, 0, COUNT(*) FROM tideflow_tasks GROUP BY name, status""",
    ),
    # each fact once: an attempt's row is written when it closes; while it is open, the
    # running task row states it, with the id its row will get (reserved at the claim from
    # the counter in tideflow_ids): the open attempt rows move onto their tasks. The DDL first
    # (setup skips the column when it is there), the moves committed with the version row
    5: (
        f"ALTER TABLE tideflow_tasks ADD COLUMN {_ATTEMPT_ID_COLUMN} BIGINT",
        """CREATE TABLE IF NOT EXISTS tideflow_ids (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            n BIGINT NOT NULL
        ) {options}""",
        "DELETE FROM tideflow_ids WHERE name = 'attempt'",
        COUNT_ATTEMPT_IDS,
        *MOVE_OPEN_ATTEMPTS,
    ),
}

#: binary, NO PAD collations (so 'a' <> 'a ' and 'A' <> 'a', as on SQLite/PostgreSQL), best first
_COLLATIONS = ("utf8mb4_0900_bin", "utf8mb4_nopad_bin", "utf8mb4_bin")
_SQL_MODE = (
    "STRICT_ALL_TABLES,ONLY_FULL_GROUP_BY,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)
#: deadlock: InnoDB rolled the whole transaction back, so running it again is safe (a lock wait
#: timeout, 1205, is not retried: it already waited innodb_lock_wait_timeout)
_TRANSIENT = frozenset({1213})
_TRIES = 5


def _json_table(columns: Sequence[tuple[str, str]]) -> str:
    """``JSON_TABLE`` over one parameter, a JSON array of rows (each an array), as typed
    columns: the keys cross in one escaped string instead of one escaped parameter each."""
    cols = ", ".join(
        f"{name} {sql_type} PATH '$[{k}]'" for k, (name, sql_type) in enumerate(columns)
    )
    return f"JSON_TABLE(%s, '$[*]' COLUMNS ({cols}))"


def _json(rows: Sequence[Any]) -> str:
    """Rows as the JSON parameter of :func:`_json_table` (bytes as hex)."""
    return json.dumps(rows, separators=(",", ":"), default=bytes.hex)


def _literal(value: Any) -> str:
    """One value as an SQL literal for our sessions (whose sql_mode keeps backslash escapes);
    floats with an exponent so they are DOUBLE, not DECIMAL."""
    if value is None:
        return "NULL"
    kind = type(value)
    if kind is str:
        return "'" + str(escape_string(value)) + "'"
    if kind is int:
        return str(value)
    if kind is float:
        text = repr(value)
        return text if "e" in text else text + "e0"
    if kind is bool:
        return "1" if value else "0"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex() + "'"
    raise TypeError(f"cannot write {kind.__name__} to MySQL")


def _values(rows: Sequence[Sequence[Any]]) -> str:
    """``(...), (...)`` literal rows for ``INSERT ... VALUES``: formatted here, several times
    cheaper than PyMySQL's generic escaping and cheaper for the server than parsing JSON."""
    return ",".join("(" + ",".join(map(_literal, row)) + ")" for row in rows)


def _derived(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A derived table of literal rows: ``SELECT a AS n1, ... UNION ALL SELECT ...``."""
    first = "SELECT " + ",".join(
        f"{_literal(v)} AS {n}" for v, n in zip(rows[0], names, strict=True)
    )
    rest = ["SELECT " + ",".join(map(_literal, row)) for row in rows[1:]]
    return " UNION ALL ".join([first, *rest])


#: columns read back as floats (JSON writes 60.0 as 60)
_FLOAT_COLUMNS = tuple(
    i
    for i, hint in enumerate(typing.get_type_hints(TaskRow).values())
    if float in (hint, *typing.get_args(hint))
)
_CONTEXT_INDEX = TASK_COLUMNS.index("context")


#: the claim returns each row as one JSON array: json.loads beats PyMySQL's per-column decoding
_TASK_JSON = (
    "JSON_ARRAY(" + ", ".join("HEX(context)" if c == "context" else c for c in TASK_COLUMNS) + ")"
)

_INSERT_EVENTS = (
    f"INSERT INTO {E} (task_id, root_id, parent_id, event_type, from_status, to_status, stage,"
    " worker_id, attempt, event_time, message, metadata) VALUES "
)
#: the rows of closing attempts (literal rows, :func:`_values`), each with the id its claim
#: reserved
_CLOSE_ATTEMPTS = f"INSERT INTO {A} ({CLOSE_COLUMNS}) VALUES {{}}"
_INSERT_TASKS = f"INSERT INTO {T} ({', '.join(INSERT_COLUMNS)}) VALUES {{}} RETURNING id"

#: JSON_TABLE types of the guard columns
_GUARD_TYPES = {"worker_id": "VARCHAR(255)", "attempt": "INT", "stage": "INT"}


@functools.lru_cache(maxsize=256)
def _written_names(shape: Shape) -> tuple[str, ...]:
    """Column names of the UPDATE's derived table: the id, then the new values."""
    n = 1 + len(shape.guards)
    return ("f0", *(f"f{n + k}" for k in range(len(shape.columns))))


@functools.lru_cache(maxsize=256)
def _guarded_update_sql(shape: Shape) -> tuple[str, str]:
    """The two statements of the guarded update of ``shape``: the locking SELECT of the rows
    whose guard holds, and the UPDATE of those (its derived table of rows left as ``{}``)."""
    sets, key, guard = guarded_update_terms(shape, lambda i: f"v.f{i}", "t.")
    keys = [("f0", "BIGINT"), *((f"f{1 + k}", _GUARD_TYPES[c]) for k, c in enumerate(shape.guards))]
    select = (
        # JSON rows first, then each task by primary key: locks exactly these rows
        f"SELECT t.id, t.name FROM {_json_table(keys)} AS v"
        f" STRAIGHT_JOIN {T} AS t FORCE INDEX (PRIMARY) ON {key}"
        f" WHERE {guard} ORDER BY t.id FOR UPDATE"
    )
    # the written rows leave out the guard values: f0, then f<n>... (their places in guard_row)
    update = f"UPDATE ({{}}) AS v STRAIGHT_JOIN {T} AS t FORCE INDEX (PRIMARY) ON {key} SET {sets}"
    return select, update


_URL_OPTIONS = ("pool_size", "pool_timeout", "connect_timeout", "unix_socket")


@functools.lru_cache(maxsize=4096)
def _paramstyle(sql: str) -> str:
    """``?`` placeholders to PyMySQL's ``%s`` (literal ``%`` doubled: PyMySQL %-formats)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _TransientError(StoreError):
    """A deadlock; the operation is retried."""


P = ParamSpec("P")
log = logging.getLogger("tideflow.store")
R = TypeVar("R")


def _retrying(
    method: Callable[Concatenate[SqlStore, P], R],
) -> Callable[Concatenate[SqlStore, P], R]:
    """Run a one-transaction store operation again when InnoDB aborted it for a deadlock."""

    @functools.wraps(method)
    def run(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(_TRIES):
            try:
                return method(self, *args, **kwargs)
            except _TransientError:
                if attempt == _TRIES - 1:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    return run


class _Pool:
    """At most ``size`` PyMySQL connections, in use or idle (idle ones in a LIFO queue).

    :meth:`get` waits up to ``timeout`` seconds for a connection when all are in use, then
    raises :class:`StoreError`; every :meth:`get` must be followed by one :meth:`put`. A dropped
    idle connection is replaced on checkout.
    """

    def __init__(
        self, connect: Callable[[], Any], size: int, timeout: float, safe_url: str
    ) -> None:
        self._connect = connect
        self._size = size
        self._timeout = timeout
        self._safe_url = safe_url
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self.closed = False

    def get(self) -> Any:
        if self.closed:
            raise StoreError("this store is closed; create a new TaskManager")
        if not self._slots.acquire(timeout=self._timeout):
            raise StoreError(
                f"all {self._size} connections to {self._safe_url} stayed in use for"
                f" {self._timeout:g}s; raise pool_size or pool_timeout in the URL"
            )
        try:
            return self._take()
        except BaseException:
            self._slots.release()
            raise

    def _take(self) -> Any:
        """An idle connection that answers a ping, or a new one (the caller holds a slot)."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            return self._connect()
        try:
            conn.ping(reconnect=False)  # one ~30us round trip
        except pymysql.MySQLError:
            # dropped (server restart, wait_timeout): a new connection gets the session settings
            with contextlib.suppress(Exception):
                conn.close()
            return self._connect()
        return conn

    def put(self, conn: Any, *, broken: bool = False) -> None:
        try:
            if broken or self.closed:
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


def _parse_url(url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """PyMySQL connect arguments and tideflow options from ``mysql://user:pass@host:port/db``."""
    safe = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as exc:
        raise StoreError(f"cannot read MySQL connection string {safe!r}: {exc}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise StoreError(
            f"MySQL connection string {safe!r} names no database:"
            " use mysql://user:password@host:3306/database"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_URL_OPTIONS))
    if unknown:
        raise StoreError(
            f"unknown option(s) {', '.join(unknown)} in {safe!r};"
            f" allowed: {', '.join(_URL_OPTIONS)}"
        )
    args: dict[str, Any] = {
        "host": unquote(parts.hostname or "localhost"),
        "port": port,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "database": database,
    }
    if "unix_socket" in options:
        args["unix_socket"] = options["unix_socket"]
    return args, options


def _number(options: dict[str, str], key: str, default: float, safe: str) -> float:
    try:
        value = float(options.get(key, default))
    except ValueError:
        raise StoreError(f"option {key} in {safe!r} must be a number") from None
    if value < 0:
        raise StoreError(f"option {key} in {safe!r} must be >= 0")
    return value


class MysqlStore(SqlStore):
    """MySQL 8 / MariaDB 10.6+ over PyMySQL."""

    dialect = "mysql"
    parallel_exchanges = 2
    lock_rows = " FOR UPDATE"
    # REPEATABLE READ for this one transaction: its locking read takes every row and gap of
    # the counts (no writer adds to them until it commits), and the count's snapshot is taken
    # after that, at its first plain read
    lock_counts = (
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT COUNT(*) FROM tideflow_task_counts FOR UPDATE",
    )
    count_shards = 16
    now_sql = NOW
    # with a few hundred ids in "root_id IN (...)" the optimizer prefers a full table scan to
    # the root index on tables of up to a few hundred thousand rows; 100 keeps it on the index
    retention_batch = 100
    #: ``requires`` is pre-filtered in SQL with a REGEXP; base.claim double-checks in Python

    def __init__(self, url: str) -> None:
        super().__init__()
        self.safe_url = redact(url)
        args, options = _parse_url(url)
        self.database: str = args["database"]
        timeout = _number(options, "connect_timeout", 10, self.safe_url)
        self._connect_args = {
            **args,
            "charset": "utf8mb4",
            "autocommit": False,
            "sql_mode": _SQL_MODE,
            "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "client_flag": CLIENT.FOUND_ROWS,
            "connect_timeout": max(1, int(timeout)),
        }
        self._pool = _Pool(
            self._connect,
            size=max(1, int(_number(options, "pool_size", 8, self.safe_url))),
            timeout=_number(options, "pool_timeout", 15, self.safe_url),
            safe_url=self.safe_url,
        )
        self._setup_lock = threading.Lock()
        self._returning: bool | None = None

    def _connect(self) -> Any:
        conn = pymysql.connect(**self._connect_args)
        try:
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    def _error(self, exc: Exception, doing: str = "") -> StoreError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = exc.args[1] if code is not None and len(exc.args) > 1 else str(exc)
        kind = _TransientError if code in _TRANSIENT else StoreError
        where = f" {doing}" if doing else ""
        return kind(f"MySQL error{where} on {self.safe_url}: ({code}) {text}")

    def _checkout(self) -> Any:
        try:
            return self._pool.get()
        except pymysql.MySQLError as exc:
            raise self._error(exc, "connecting") from None

    def _release(self, conn: Any, *, rollback: bool) -> None:
        broken = False
        if rollback:
            try:
                conn.rollback()
            except Exception:
                broken = True  # the connection is gone: do not pool it
        self._pool.put(conn, broken=broken)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        conn = self._checkout()
        ok = False
        try:
            cur = conn.cursor()
            yield cur
            conn.commit()
            ok = True
        except pymysql.MySQLError as exc:
            raise self._error(exc) from None
        finally:
            self._release(conn, rollback=not ok)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        conn = self._checkout()
        try:
            yield conn.cursor()
        except pymysql.MySQLError as exc:
            raise self._error(exc) from None
        finally:
            # end the read's snapshot and metadata locks
            self._release(conn, rollback=True)

    def _q(self, sql: str) -> str:
        return _paramstyle(sql)

    # --- operations retried on deadlock (each is one transaction) ------------------------------
    insert_tasks = _retrying(SqlStore.insert_tasks)
    exchange = _retrying(SqlStore.exchange)
    append_event = _retrying(SqlStore.append_event)
    delete_tasks = _retrying(SqlStore.delete_tasks)
    heartbeat_tasks = _retrying(SqlStore.heartbeat_tasks)
    register_worker = _retrying(SqlStore.register_worker)
    heartbeat_worker = _retrying(SqlStore.heartbeat_worker)
    update_worker = _retrying(SqlStore.update_worker)
    mark_dead_workers = _retrying(SqlStore.mark_dead_workers)
    orphaned_tasks = _retrying(SqlStore.orphaned_tasks)
    acquire_lease = _retrying(SqlStore.acquire_lease)
    release_lease = _retrying(SqlStore.release_lease)
    delete_expired = _retrying(SqlStore.delete_expired)
    delete_stale_workers = _retrying(SqlStore.delete_stale_workers)

    def _insert_one(self, cur: Cursor, task: NewTask) -> int:
        try:
            return super()._insert_one(cur, task)
        except pymysql.IntegrityError as exc:
            # another transaction committed an open task with this unique_key between our check
            # and our INSERT (InnoDB made us wait for it): only that INSERT was undone, so
            # return the winner like the check would have
            key = task.values.get("unique_key")
            if key is None or exc.args[0] != 1062 or "open_unique_key" not in str(exc):
                raise
            cur.execute(
                f"SELECT id FROM {T} WHERE open_unique_key = %s",
                (key,),
            )
            found = cur.fetchone()
            if found is None:
                raise
            return int(found[0])

    # --- the guarded update of a shape ---------------------------------------------------------
    def _guarded_update(
        self, cur: Cursor, shape: Shape, rows: Sequence[Sequence[Any]]
    ) -> Callable[[], Iterable[tuple[int, str]]]:
        """MySQL has no ``UPDATE ... RETURNING``: one ``SELECT ... FOR UPDATE`` finds and locks
        the rows whose guard holds (their keys one JSON parameter), and one ``UPDATE ... JOIN``
        of literal rows writes those. A single row takes the portable statement instead (its
        row count says whether it held: one statement, not two)."""
        if len(rows) == 1:
            return super()._guarded_update(cur, shape, rows)
        select, update = _guarded_update_sql(shape)
        n = 1 + len(shape.guards)
        cur.execute(select, (_json([row[:n] for row in rows]),))
        ok = {int(r[0]): str(r[1]) for r in cur.fetchall()}
        held = [[row[0], *row[n:]] for row in rows if row[0] in ok]
        if held:
            cur.execute(update.format(_derived(_written_names(shape), held)))
        return ok.items

    def _insert_event_rows(self, cur: Cursor, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.execute(_INSERT_EVENTS + _values(rows))

    def _counts_upsert(self, rows: int) -> str:
        values = ", ".join(["(?, ?, ?, ?)"] * rows)
        return (
            f"INSERT INTO tideflow_task_counts (name, status, shard, n) VALUES {values}"
            " ON DUPLICATE KEY UPDATE n = n + VALUES(n)"
        )

    def _write_attempts(self, cur: Cursor, closes: Sequence[Sequence[Any]]) -> None:
        if closes:
            cur.execute(_CLOSE_ATTEMPTS.format(_values(closes)))

    def _insert_many(self, cur: Cursor, tasks: Sequence[NewTask]) -> list[int]:
        """On MariaDB (``INSERT ... RETURNING``), tasks without a ``unique_key`` go in one
        statement and their events in another; otherwise one by one as the base does."""
        if (
            len(tasks) < 2
            or not self._has_returning(cur)
            or any(t.values.get("unique_key") is not None for t in tasks)
        ):
            return super()._insert_many(cur, tasks)
        rows = [[self._encode_value(c, t.values.get(c)) for c in INSERT_COLUMNS] for t in tasks]
        cur.execute(_INSERT_TASKS.format(_values(rows)))
        ids = sorted(int(r[0]) for r in cur.fetchall())
        if len(ids) != len(tasks):
            raise StoreError(f"inserted {len(ids)} of {len(tasks)} tasks; nothing was written")
        tally = self._tally()
        for task in tasks:
            counted = (task.values["name"], task.values["status"])
            tally[counted] = tally.get(counted, 0) + 1
        own_roots = [i for i, t in zip(ids, tasks, strict=True) if t.values.get("root_id") is None]
        if own_roots:
            cur.execute(f"UPDATE {T} SET root_id = id WHERE id IN ({_values([own_roots])[1:-1]})")
        events: list[tuple[Any, ...]] = []
        for task_id, task in zip(ids, tasks, strict=True):
            values = task.values
            root_id = values.get("root_id")
            parent_id = values.get("parent_id")
            events += [
                self._event_params(task_id, task_id if root_id is None else root_id, parent_id, e)
                for e in task.events
            ]
        self._insert_event_rows(cur, events)
        return ids

    def _has_returning(self, cur: Cursor) -> bool:
        """Whether the server is MariaDB (10.5+ has ``INSERT ... RETURNING``; MySQL has not)."""
        if self._returning is None:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            major_minor = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
            self._returning = "mariadb" in version.lower() and major_minor >= (10, 5)
        return self._returning

    def _claim_candidates(self, cur: Cursor, request: ClaimRequest, fetch: int) -> list[Any]:
        names = sorted(request.names)
        params: list[Any] = [*names]
        requires = "requires IS NULL OR requires = ''"
        if request.capabilities:
            # every comma-separated required capability is one of ours
            one = "|".join(re.escape(c) for c in sorted(request.capabilities))
            requires += " OR requires REGEXP %s"
            params.append(f"^({one})(,({one}))*$")
        params.append(fetch)
        cur.execute(
            f"SELECT {_TASK_JSON} FROM {T} FORCE INDEX (tideflow_tasks_claim)"
            f" WHERE claimable = 1 AND next_run_time <= {NOW}"
            f" AND name IN ({', '.join(['%s'] * len(names))}) AND ({requires})"
            " ORDER BY priority DESC, next_run_time, id LIMIT %s FOR UPDATE SKIP LOCKED",
            params,
        )
        rows = []
        for (text,) in cur.fetchall():
            row = json.loads(text)
            for i in _FLOAT_COLUMNS:
                if row[i] is not None:
                    row[i] = float(row[i])
            if row[_CONTEXT_INDEX] is not None:
                row[_CONTEXT_INDEX] = bytes.fromhex(row[_CONTEXT_INDEX])
            rows.append(row)
        return rows

    # --- schema ----------------------------------------------------------------------------------
    def _lock_name(self) -> str:
        return f"tideflow_migrate.{self.database}"[:64]

    def setup(self) -> None:
        with self._setup_lock:
            conn = self._checkout()
            ok = False
            try:
                cur = conn.cursor()
                cur.execute("SELECT GET_LOCK(%s, 30)", (self._lock_name(),))
                if cur.fetchone()[0] != 1:
                    raise StoreError(
                        f"another process has been migrating {self.safe_url} for 30s;"
                        " try again later"
                    )
                try:
                    self._migrate(cur)
                    conn.commit()
                    ok = True
                finally:
                    cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(),))
            except pymysql.MySQLError as exc:
                raise self._error(exc, "migrating the schema") from None
            finally:
                self._release(conn, rollback=not ok)

    def _migrate(self, cur: Any) -> None:
        # MySQL commits DDL implicitly: GET_LOCK, not a transaction, keeps setups apart, and
        # every CREATE is IF NOT EXISTS so a migration interrupted halfway can be run again
        placeholders = ", ".join(["%s"] * len(_COLLATIONS))
        cur.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS"
            f" WHERE COLLATION_NAME IN ({placeholders})",
            _COLLATIONS,
        )
        available = {r[0] for r in cur.fetchall()}
        collation = next((c for c in _COLLATIONS if c in available), "utf8mb4_bin")
        options = f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}"

        def prepare(statement: str) -> str:
            if statement == MIGRATIONS[3][0] and self._has_column(cur, _TRACE_COLUMN):
                return "SELECT 1"  # added by a run interrupted before it recorded version 3
            if statement == MIGRATIONS[5][0] and self._has_column(cur, _ATTEMPT_ID_COLUMN):
                return "SELECT 1"  # the same for version 5
            if statement == MIGRATIONS[4][1] and self._has_finished_index(cur):
                return "SELECT 1"  # the same for version 4
            return statement.replace("{options}", options)

        self._run_migrations(cur, MIGRATIONS, SCHEMA_VERSION, "DOUBLE", prepare=prepare)

    @staticmethod
    def _has_column(cur: Any, column: str) -> bool:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
            f" AND TABLE_NAME = '{T}' AND COLUMN_NAME = %s",
            (column,),
        )
        return int(cur.fetchone()[0]) > 0

    @staticmethod
    def _has_finished_index(cur: Any) -> bool:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
            f" AND TABLE_NAME = '{T}' AND INDEX_NAME = '{_FINISHED_INDEX}'"
        )
        return int(cur.fetchone()[0]) > 0

    def schema_version(self) -> int:
        """The version recorded in the database (0 before ``setup``)."""
        with self._read() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'tideflow_schema'"
            )
            if int(cur.fetchone()[0]) == 0:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM tideflow_schema")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        self._pool.close()
