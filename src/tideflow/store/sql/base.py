"""Portable SQL for every store operation; dialect files override only what differs.

Statements are written once with ``?`` placeholders and named after the store operation they
serve. A dialect provides connections and transactions (:meth:`SqlStore._write`,
:meth:`SqlStore._read`), the database's "now" (:attr:`SqlStore.now_sql`), the claim's candidate
query, the schema and row decoding quirks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from tideflow.core.types import (
    TASK_COLUMNS,
    Change,
    ClaimRequest,
    EventFilter,
    FanIn,
    NewEvent,
    NewTask,
    SweepRead,
    SweepRequest,
    TaskFilter,
    TaskRow,
    WorkerRow,
)
from tideflow.errors import InvalidOptionError, StoreError
from tideflow.models import TERMINAL_STATUSES, Status, TaskAttempt, TaskEvent

log = logging.getLogger("tideflow.store")

T = "tideflow_tasks"
E = "tideflow_events"
A = "tideflow_attempts"
L = "tideflow_leases"
W = "tideflow_workers"
#: the kept counts of tasks per (name, status), in shards: see :meth:`SqlStore._counting`
C = "tideflow_task_counts"
#: the last id handed out, by name, where the database has no sequences (SQLite, MySQL): see
#: :meth:`SqlStore._attempt_ids`
IDS = "tideflow_ids"

TASK_SELECT = ", ".join(TASK_COLUMNS)
_JITTER = TASK_COLUMNS.index("retry_jitter")
_CONTEXT = TASK_COLUMNS.index("context")
#: a new task's columns (no attempt is open yet)
INSERT_COLUMNS = tuple(c for c in TASK_COLUMNS if c not in ("id", "attempt_id"))
CLAIMABLE = ("pending", "failed", "timeout")
_CLAIMABLE_LIST = ", ".join(f"'{s}'" for s in CLAIMABLE)
_TERMINAL_LIST = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
EVENT_COLUMNS = (
    "id, task_id, root_id, parent_id, event_type, from_status, to_status, stage, worker_id,"
    " attempt, event_time, message, metadata"
)
ATTEMPT_COLUMNS = (
    "id, task_id, attempt, worker_id, stage, started_at, ended_at, outcome, error,"
    " timeout_flag, duration_seconds"
)
WORKER_COLUMNS = (
    "worker_id, pod_id, host, pid, status, capabilities, handlers, concurrency, registered_at,"
    " last_seen_at, expires_at"
)


class Cursor(Protocol):
    """The DB-API cursor surface the store uses."""

    @property
    def rowcount(self) -> int: ...
    @property
    def lastrowid(self) -> Any: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]], /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


INSERT_EVENT = (
    f"INSERT INTO {E} (task_id, root_id, parent_id, event_type, from_status, to_status, stage,"
    " worker_id, attempt, event_time, message, metadata)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Each fact once: an attempt's row is written once, when it closes. While it is open, the task
# row (status 'running') states it: worker_id, attempt, stage, start_time, and attempt_id, the
# id reserved for it at the claim (so attempts keep the order of their claims, and an open
# attempt keeps its id when it closes). Reads take the attempt rows and the running tasks. The
# close knows the id from the row its worker holds: a plain insert, no read of the task row.
#: the columns of an attempt row, as its close writes them
CLOSE_COLUMNS = (
    "id, task_id, root_id, attempt, worker_id, stage, started_at, ended_at, outcome, error,"
    " timeout_flag, duration_seconds"
)
#: the row of a closing attempt, its id the one reserved at its claim. An attempt closes once:
#: only a change that held its fence (the task ``running``, this worker, this attempt) closes
#: it, and that change moves the task off ``running``, so no later one can
CLOSE_ATTEMPT = f"INSERT INTO {A} ({CLOSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: the open attempts, read from the running task rows in the columns of an attempt row (the
#: CASEs are NULLs of the column's type, which a UNION with the stored rows needs)
OPEN_ATTEMPTS = (
    "SELECT attempt_id AS id, id AS task_id, root_id, attempt, worker_id, stage,"
    " start_time AS started_at, CASE WHEN 1 = 0 THEN start_time END AS ended_at,"
    " CASE WHEN 1 = 0 THEN status END AS outcome, CASE WHEN 1 = 0 THEN status END AS error,"
    " 0 AS timeout_flag, CASE WHEN 1 = 0 THEN start_time END AS duration_seconds"
    f" FROM {T} WHERE status = 'running' AND attempt_id IS NOT NULL"
)


#: schema 5's move of the open attempt rows onto their running tasks (each dialect adds the
#: column first, and where it has no sequence, the counter of attempt ids from the rows there
#: are, before these run)
MOVE_OPEN_ATTEMPTS = (
    f"UPDATE {T} SET attempt_id = (SELECT a.id FROM {A} a WHERE a.task_id = {T}.id"
    f" AND a.attempt = {T}.attempt AND a.ended_at IS NULL) WHERE status = 'running'",
    f"DELETE FROM {A} WHERE ended_at IS NULL AND id IN"
    f" (SELECT attempt_id FROM {T} WHERE status = 'running' AND attempt_id IS NOT NULL)",
)
#: schema 5's counter of attempt ids where there are no sequences (SQLite, MySQL)
COUNT_ATTEMPT_IDS = f"INSERT INTO {IDS} (name, n) SELECT 'attempt', COALESCE(MAX(id), 0) FROM {A}"


def close_params(change: Change) -> tuple[Any, ...]:
    """Parameters of :data:`CLOSE_ATTEMPT` (the attempt row, :data:`CLOSE_COLUMNS`) for a change
    that closes an attempt."""
    c = change.attempt_close
    assert c is not None
    started = c.ended_at if c.started_at is None else c.started_at
    return (
        c.attempt_id,
        change.task_id,
        change.root_id,
        c.attempt,
        c.worker_id,
        c.stage,
        started,
        c.ended_at,
        c.outcome,
        c.error,
        1 if c.timeout_flag else 0,
        c.ended_at - started,
    )


class Shape(NamedTuple):
    """The form of the guarded UPDATE shared by a group of changes (see
    :meth:`SqlStore._apply_run`).

    ``columns``: the columns the changes set; ``statuses``: the task's status must be one of
    these; ``guards``: the columns that must equal each change's own values (the fence
    ``worker_id``, ``attempt``, then the round's ``stage``). Each change is one row of
    :func:`guard_row`.
    """

    columns: tuple[str, ...]
    statuses: tuple[str, ...]
    guards: tuple[str, ...]


#: the guard columns of a change by (fenced, staged)
_GUARDS: dict[tuple[bool, bool], tuple[str, ...]] = {
    (False, False): (),
    (True, False): ("worker_id", "attempt"),
    (False, True): ("stage",),
    (True, True): ("worker_id", "attempt", "stage"),
}
_STATUS_NAMES = frozenset(s.value for s in Status)


def guard_row(change: Change, encode: Callable[[str, Any], Any]) -> list[Any]:
    """One change as a row of its shape's guarded UPDATE: the task id, the guard values (fence
    worker id and attempt, stage, where set), then the new values of its columns."""
    row: list[Any] = [change.task_id]
    if change.fence is not None:
        row += change.fence
    if change.stage is not None:
        row.append(change.stage)
    for column, value in change.values.items():
        row.append(encode(column, value))
    return row


def guarded_update_terms(
    shape: Shape, field: Callable[[int], str], table: str
) -> tuple[str, str, str]:
    """The terms of the guarded UPDATE of ``shape``, as every dialect writes it: the SET list,
    the key (the row's task), and the guard, with ``field(i)`` the SQL naming the ``i``-th
    value of a :func:`guard_row` row and ``table`` the target's prefix (``"t."`` or ``""``).
    Statuses are written as literals (they are :class:`Status` names, checked here)."""
    unknown = set(shape.statuses) - _STATUS_NAMES
    if unknown or not shape.statuses:
        raise ValueError(f"not task statuses: {sorted(unknown) or 'none'}")
    n = 1 + len(shape.guards)
    sets = ", ".join(f"{column} = {field(n + k)}" for k, column in enumerate(shape.columns))
    statuses = ", ".join(f"'{s}'" for s in shape.statuses)
    guard = f"{table}status IN ({statuses})" + "".join(
        f" AND {table}{column} = {field(1 + k)}" for k, column in enumerate(shape.guards)
    )
    return sets, f"{table}id = {field(0)}", guard


#: the SQL of each ``TaskFilter.sort``
_SORT_SQL: Mapping[str, str] = {
    "id": "id",
    "name": "name",
    "status": "status",
    "priority": "priority",
    "tag": "tag",
    "worker": "worker_id",
    "created": "created_at",
    "started": "start_time",
    "finished": f"(CASE WHEN status IN ({_TERMINAL_LIST}) THEN last_active_time END)",
    "progress": "progress_percent",
    "duration": (
        f"(CASE WHEN status IN ({_TERMINAL_LIST}) THEN last_active_time - start_time END)"
    ),
}


def _sort(key: str, direction: str) -> str:
    """ORDER BY terms for ``key``: rows without a value last on every database (PostgreSQL
    would put NULLs first when descending, SQLite and MySQL first when ascending), ties by id."""
    if key not in _SORT_SQL:
        raise InvalidOptionError(f"sort must be one of {', '.join(_SORT_SQL)}, got {key!r}")
    if key == "id":
        return f"id {direction}"
    expression = _SORT_SQL[key]
    empty_last = f"CASE WHEN {expression} IS NULL THEN 1 ELSE 0 END"
    return f"{empty_last}, {expression} {direction}, id {direction}"


def _like_escape(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern with ``ESCAPE '!'``."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


#: seconds after which :meth:`SqlStore.clock` measures its offset to the database again
CLOCK_MAX_AGE = 10.0


class SqlStore:
    """Shared implementation of :class:`~tideflow.store.protocol.Store` over DB-API drivers."""

    dialect = "sql"
    safe_url = ""
    parallel_exchanges = 1
    #: appended to a SELECT whose rows the transaction is about to change (SQLite: nothing,
    #: its write transactions are exclusive)
    lock_rows = ""
    #: root tasks per retention transaction (:meth:`delete_expired`)
    retention_batch = 500
    #: SQL for the database's now as POSIX float seconds, evaluated inside the statements that
    #: judge liveness and eligibility (each dialect sets it)
    now_sql = ""
    #: how finished_histogram names the index of finished rows when it asks for every
    #: finished status (SQLite: INDEXED BY; its planner prefers the status index otherwise)
    _finished_index = ""
    #: rows per (name, status) of the kept counts, one chosen at random by each transaction:
    #: concurrent transactions rarely wait on the same row (SQLite has one writer: 1)
    count_shards = 1
    #: run first by :meth:`recount_tasks`: keep writers from adding to the counts until it
    #: commits, so each task change is either in its count or added after it, never both
    #: (SQLite: nothing, its write transaction already excludes them)
    lock_counts: tuple[str, ...] = ()

    def __init__(self) -> None:
        #: the tally of the counting transaction running on this thread (:meth:`_counting`)
        self._tallies = threading.local()
        self._clock_lock = threading.Lock()
        self._clock_offset = 0.0
        self._clock_measured: float | None = None  # time.monotonic() of the last measurement
        #: deletions this store made (part of :meth:`change_mark`)
        self._deletions = 0

    # --- the database's clock ------------------------------------------------------------------
    def clock(self) -> float:
        measured = self._clock_measured
        if measured is None:
            # first use: wait for a measurement (another thread's or ours)
            with self._clock_lock:
                if self._clock_measured is None:
                    self._measure()
        elif time.monotonic() - measured > CLOCK_MAX_AGE and self._clock_lock.acquire(
            blocking=False
        ):
            # stale: one thread measures, the others go on with the old offset
            try:
                self._measure()
            finally:
                self._clock_lock.release()
        return time.time() + self._clock_offset

    def sync_clock(self) -> float:
        with self._clock_lock:
            self._measure()
        return self._clock_offset

    def _measure(self) -> None:
        """Measure the offset now (the caller holds the clock lock); keep the old one on error."""
        try:
            self._clock_offset = self._measure_offset()
        except Exception as exc:
            log.debug(
                "could not read the clock of %s, keeping the offset %.3fs: %s",
                self.safe_url,
                self._clock_offset,
                exc,
            )
        finally:
            self._clock_measured = time.monotonic()

    def _measure_offset(self) -> float:
        """The database's now minus the midpoint of the local times around reading it."""
        with self._read() as cur:
            before = time.time()
            cur.execute(f"SELECT {self.now_sql}")
            server = float(cur.fetchone()[0])
            after = time.time()
        return server - (before + after) / 2

    # --- what a dialect provides ---------------------------------------------------------------
    def _write(self) -> contextlib.AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        """Rewrite a portable statement for the driver's parameter style."""
        return sql

    def _insert_id(self, cur: Cursor, sql: str, params: Sequence[Any]) -> int:
        cur.execute(self._q(sql), params)
        return int(cur.lastrowid)

    def _claim_candidates(self, cur: Cursor, request: ClaimRequest, fetch: int) -> list[Any]:
        """Select (and lock, where the dialect can) due candidate rows, best first."""
        raise NotImplementedError

    def _decode_task(self, row: Sequence[Any]) -> TaskRow:
        values = list(row)
        values[_JITTER] = bool(values[_JITTER])
        context = values[_CONTEXT]
        if context is not None and not isinstance(context, bytes):
            values[_CONTEXT] = bytes(context)
        return TaskRow._make(values)

    def _encode_value(self, column: str, value: Any) -> Any:
        if column == "retry_jitter":
            return 1 if value else 0
        return value

    def _plan_by_id(self, cur: Cursor) -> None:
        """Before the statements of a transaction that walks an index in order (the hot path's
        claims and batched writes, retention's roots): make the planner reach rows by id and
        take them in index order, whatever its statistics say (a no-op by default)."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """No push channel by default: workers poll."""
        return None

    def watch_finished(
        self, on_finished: Callable[[Sequence[int] | None], None]
    ) -> Callable[[], None] | None:
        """No push channel by default: waiters poll."""
        return None

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """No push channel by default: watchers poll :meth:`change_mark`."""
        return None

    def change_mark(self) -> str:
        """A text that differs after any task changed: the newest event id (every change of a
        task writes one), the oldest and newest task ids (deletions of old tasks, inserts),
        this store's own deletions, and the workers' count and newest registration. Each
        part is one lookup at an end of a primary key, or a small table."""
        with self._read() as cur:
            cur.execute(
                f"SELECT (SELECT MAX(id) FROM {E}), (SELECT MIN(id) FROM {T}),"
                f" (SELECT MAX(id) FROM {T}), (SELECT COUNT(*) FROM {W}),"
                f" (SELECT COUNT(*) FROM {W} WHERE status = 'active')"
            )
            row = cur.fetchone()
        parts = [str(v) if v is not None else "-" for v in row]
        return ":".join([*parts, str(self._deletions)])

    # --- the kept task counts ------------------------------------------------------------------
    # tideflow_task_counts holds numbers of tasks per (name, status, shard); their sum over the
    # shards is the number of tasks with that name and status (task_counts reads it instead of
    # counting the tasks table). Every write transaction that inserts or deletes tasks or changes
    # a status runs in _counting: it tallies what it did (inserts +1, deletes -1, a change -1 on
    # its old status and +1 on its new one, from the rows it wrote: a change that lost its guard
    # counts nothing) and adds the tally to one shard in one statement just before it commits,
    # so a transaction that rolls back adds nothing. A change's old status is its only
    # from-status, or the row's status read and locked before the write (_statuses_before); a
    # claim narrows its from-statuses to the locked candidate's.

    @contextlib.contextmanager
    def _counting(self) -> Iterator[Cursor]:
        """A write transaction whose inserts, deletions and status changes are added to the
        kept counts (:data:`C`) before it commits."""
        with self._write() as cur:
            tally: dict[tuple[str, str], int] = {}
            self._tallies.current = tally
            try:
                yield cur
                rows = [(name, status, n) for (name, status), n in sorted(tally.items()) if n]
                if rows:
                    self._write_counts(cur, rows)
            finally:
                self._tallies.current = None

    def _tally(self) -> dict[tuple[str, str], int]:
        """The running counting transaction's tally: ``{(name, status): delta}``."""
        tally: dict[tuple[str, str], int] | None = getattr(self._tallies, "current", None)
        if tally is None:
            raise RuntimeError("tasks written outside SqlStore._counting: their counts would drift")
        return tally

    def _counts_upsert(self, rows: int) -> str:
        """The statement adding ``rows`` (name, status, shard, delta) rows to the counts."""
        values = ", ".join(["(?, ?, ?, ?)"] * rows)
        return (
            f"INSERT INTO {C} (name, status, shard, n) VALUES {values}"
            f" ON CONFLICT (name, status, shard) DO UPDATE SET n = {C}.n + excluded.n"
        )

    def _write_counts(self, cur: Cursor, rows: Sequence[tuple[str, str, int]]) -> None:
        """Add ``(name, status, delta)`` rows (sorted: concurrent writers lock them in the same
        order) to one shard of the counts, the transaction's last statement."""
        shard = random.randrange(self.count_shards) if self.count_shards > 1 else 0
        cur.execute(
            self._q(self._counts_upsert(len(rows))),
            [v for name, status, n in rows for v in (name, status, shard, n)],
        )

    def _statuses_before(self, cur: Cursor, changes: Sequence[Change]) -> dict[int, str]:
        """The current statuses of the tasks of status changes that may start from several
        statuses, read and locked before the guarded write: the old status the kept counts
        take one off. A change from one status started from that one when it held (the core
        plans outcomes from ``running``, an operator's action from the status it read, and
        ``_claim_in`` narrows a claim to its candidate's), so this reads nothing on the hot
        path."""
        ids = sorted(
            {c.task_id for c in changes if len(c.from_statuses) > 1 and "status" in c.values}
        )
        found: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cur.execute(
                self._q(
                    f"SELECT id, status FROM {T} WHERE id IN ({_placeholders(len(chunk))})"
                    f" ORDER BY id{self.lock_rows}"
                ),
                chunk,
            )
            found.update((int(r[0]), str(r[1])) for r in cur.fetchall())
        return found

    # --- tasks ---------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[NewTask]) -> list[int]:
        with self._counting() as cur:
            return self._insert_many(cur, tasks)

    def _insert_many(self, cur: Cursor, tasks: Sequence[NewTask]) -> list[int]:
        """Insert tasks (with their events) in order; a dialect may batch the round trips."""
        return [self._insert_one(cur, task) for task in tasks]

    def _insert_one(self, cur: Cursor, task: NewTask) -> int:
        values = task.values
        key = values.get("unique_key")
        if key is not None:
            cur.execute(
                self._q(
                    f"SELECT id FROM {T} WHERE unique_key = ?"
                    f" AND status NOT IN ({_placeholders(len(TERMINAL_STATUSES))})"
                ),
                (key, *sorted(TERMINAL_STATUSES)),
            )
            found = cur.fetchone()
            if found is not None:
                return int(found[0])
        params = [self._encode_value(c, values.get(c)) for c in INSERT_COLUMNS]
        task_id = self._insert_id(
            cur,
            f"INSERT INTO {T} ({', '.join(INSERT_COLUMNS)})"
            f" VALUES ({_placeholders(len(INSERT_COLUMNS))})",
            params,
        )
        tally = self._tally()
        key = (values["name"], values["status"])
        tally[key] = tally.get(key, 0) + 1
        root_id = values.get("root_id")
        if root_id is None:
            root_id = task_id
            cur.execute(self._q(f"UPDATE {T} SET root_id = ? WHERE id = ?"), (task_id, task_id))
        self._insert_events(cur, task_id, root_id, values.get("parent_id"), task.events)
        return task_id

    def _insert_events(
        self,
        cur: Cursor,
        task_id: int,
        root_id: int,
        parent_id: int | None,
        events: Sequence[NewEvent],
    ) -> None:
        self._insert_event_rows(
            cur, [self._event_params(task_id, root_id, parent_id, e) for e in events]
        )

    def _insert_event_rows(self, cur: Cursor, rows: Sequence[Sequence[Any]]) -> None:
        """Insert event rows (:data:`INSERT_EVENT` parameters) in order."""
        if rows:
            cur.executemany(self._q(INSERT_EVENT), rows)

    def _write_attempts(self, cur: Cursor, closes: Sequence[Sequence[Any]]) -> None:
        """Write the rows of closing attempts (:func:`close_params`)."""
        if closes:
            cur.executemany(self._q(CLOSE_ATTEMPT), closes)

    def _attempt_ids(self, cur: Cursor, rows: Sequence[TaskRow]) -> Sequence[int | None]:
        """Reserve the ids of the attempts the claim of ``rows`` opens, in order: the ids their
        rows get when they close. Portable: a counter row in :data:`IDS`, taken in the claim's
        transaction (PostgreSQL's claim reads them from the attempts' sequence with the rows)."""
        n = len(rows)
        cur.execute(self._q(f"UPDATE {IDS} SET n = n + ? WHERE name = 'attempt'"), (n,))
        cur.execute(f"SELECT n FROM {IDS} WHERE name = 'attempt'")
        last = int(cur.fetchone()[0])
        return range(last - n + 1, last + 1)

    @staticmethod
    def _event_params(
        task_id: int, root_id: int, parent_id: int | None, e: NewEvent
    ) -> tuple[Any, ...]:
        return (
            task_id,
            root_id,
            parent_id,
            e.event_type,
            e.from_status,
            e.to_status,
            e.stage,
            e.worker_id,
            e.attempt,
            e.event_time,
            e.message,
            json.dumps(dict(e.metadata), separators=(",", ":")) if e.metadata else None,
        )

    def claim(self, request: ClaimRequest) -> list[TaskRow]:
        return self.exchange((), request)[1]

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        if not changes:
            return []
        return self.exchange(changes, None)[0]

    def exchange(
        self, changes: Sequence[Change], request: ClaimRequest | None
    ) -> tuple[list[bool], list[TaskRow]]:
        if not changes and (request is None or request.limit <= 0 or not request.names):
            return [], []
        with self._counting() as cur:
            self._plan_by_id(cur)
            held = self._apply_batch(cur, changes) if changes else []
            rows = self._claim_in(cur, request) if request is not None else []
        return held, rows

    def _claim_in(self, cur: Cursor, request: ClaimRequest) -> list[TaskRow]:
        """Pick due candidates within the request's limits, then apply the claim plan to them."""
        if request.limit <= 0 or not request.names:
            return []
        capped = any(v is not None for v in request.names.values())
        fetch = request.limit if not capped else request.limit * 2 + 16
        chosen: list[tuple[TaskRow, Change]] = []
        taken: dict[str, int] = {}
        for raw in self._claim_candidates(cur, request, fetch):
            if len(chosen) >= request.limit:
                break
            row = self._decode_task(raw)
            cap = request.names.get(row.name)
            if cap is not None and taken.get(row.name, 0) >= cap:
                continue
            taken[row.name] = taken.get(row.name, 0) + 1
            change = request.plan(row)
            if len(change.from_statuses) > 1 and row.status in change.from_statuses:
                # the candidate is locked: its status is the one the change starts from
                change = change._replace(from_statuses=frozenset((row.status,)))
            chosen.append((row, change))
        # the attempts the plan opens: their ids, set on the task rows with the claim
        opening = [i for i, (_, change) in enumerate(chosen) if change.attempt_open is not None]
        if opening:
            ids = self._attempt_ids(cur, [chosen[i][0] for i in opening])
            for i, attempt_id in zip(opening, ids, strict=True):
                row, change = chosen[i]
                values = {**change.values, "attempt_id": attempt_id}
                chosen[i] = (row, change._replace(values=values))
        held = self._apply_batch(cur, [change for _, change in chosen])
        return [
            row.with_values(change.values)
            for (row, change), ok in zip(chosen, held, strict=True)
            if ok
        ]

    # --- the fenced write rule -----------------------------------------------------------------
    # Every write the core plans (a Change) is applied here, and only here, as a compare-and-set.
    # A dialect supplies the text of one statement, :meth:`_guarded_update`, rendered from the
    # terms of :func:`guarded_update_terms`; what the guard is, what a change sets, and what
    # follows when it holds or not is this section.

    def _apply_batch(self, cur: Cursor, changes: Sequence[Change]) -> list[bool]:
        """Apply changes in order, as runs (:meth:`_apply_run`) in which each task appears
        once. A run ends before a task it already touches (as a change, or as a parent its
        children are counted on) comes again, so every task sees its changes in the order
        given; a change with children is a run of its own, so its children's rows come between
        the rows of the changes before and after it. Returns, per change, whether it held."""
        results: list[bool] = [False] * len(changes)
        run: list[int] = []
        tasks: set[int] = set()
        parents: set[int] = set()

        def flush() -> None:
            if run:
                held = self._apply_run(cur, [changes[i] for i in run])
                for i, ok in zip(run, held, strict=True):
                    results[i] = ok
            run.clear()
            tasks.clear()
            parents.clear()

        for i, change in enumerate(changes):
            if change.children:
                flush()
                results[i] = self._apply_run(cur, [change])[0]
                continue
            parent = change.fan_in.parent_id if change.fan_in is not None else None
            if change.task_id in tasks or change.task_id in parents or parent in tasks:
                flush()
            run.append(i)
            tasks.add(change.task_id)
            if parent is not None:
                parents.add(parent)
        flush()
        return results

    def _apply_run(self, cur: Cursor, changes: Sequence[Change]) -> list[bool]:
        """The fenced write of a run of changes, each task at most once; True per change that
        held. In this order, all in the caller's transaction:

        1. **guard**: a change holds when its task's ``status`` is in ``from_statuses`` and,
           where set, ``worker_id``/``attempt`` equal the ``fence`` and ``stage`` equals
           ``stage``; it then sets exactly the columns of ``values``, and nothing else (a
           claim's values include ``attempt_id``, reserved by :meth:`_attempt_ids`: the task
           row states the open attempt).
           Changes of one :class:`Shape` share one statement (:meth:`_guarded_update`).
        2. a change that lost its guard writes nothing more (it is logged);
        3. each change that held, in order: its ``children`` inserted (with their creation
           events; a ``lists_children`` event gets their ids in its metadata);
        4. their events, in order of changes and within each change; then the rows of the
           attempts they close (each once: the change that closes it held its fence and moved
           the task off ``running``);
        5. :meth:`_on_held`, a dialect's bookkeeping (wake-ups);
        6. the ``fan_in`` of those that held, counted on their parents
           (:meth:`_count_children`), which resumes a parent whose round is complete.
        """
        before = self._statuses_before(cur, changes)
        shapes = self._shapes(changes)
        readers = [self._guarded_update(cur, shape, rows) for shape, rows in shapes.items()]
        names: dict[int, str] = {}
        for read in readers:
            names.update(read())
        held = [c.task_id in names for c in changes]
        written: list[Change] = []
        fans: list[FanIn] = []
        for c, ok in zip(changes, held, strict=True):
            if ok:
                new = c.values.get("status")
                if new is not None:  # the kept counts: one off the old status, one on the new
                    old = before[c.task_id] if len(c.from_statuses) > 1 else min(c.from_statuses)
                    if old != new:
                        tally = self._tally()
                        name = names[c.task_id]
                        tally[name, old] = tally.get((name, old), 0) - 1
                        tally[name, new] = tally.get((name, new), 0) + 1
                written.append(self._with_children(cur, c) if c.children else c)
                if c.fan_in is not None:
                    fans.append(c.fan_in)
            else:
                self._lost(c)
        events, closes = self._held_rows(written)
        self._insert_event_rows(cur, events)
        self._write_attempts(cur, closes)
        self._on_held(cur, written)
        if fans:
            self._count_children(cur, fans)
        return held

    def _guarded_update(
        self, cur: Cursor, shape: Shape, rows: Sequence[Sequence[Any]]
    ) -> Callable[[], Iterable[tuple[int, str]]]:
        """Send the guarded UPDATE of ``rows`` (:func:`guard_row` layout), all of one
        ``shape``; return a reader of the ids whose guard held, each with its task's name (the
        kept counts'; read after every shape of the run was sent, so a pipelining dialect
        waits once). Portable: one statement per row, its guard held when it changed one row
        (then, when the shape sets the status, the name is read). Dialects override this with
        one set-based statement per shape, its text rendered from :func:`guarded_update_terms`,
        returning ids and names."""
        n = 1 + len(shape.guards)
        sets, key, guard = guarded_update_terms(shape, lambda _: "?", "")
        sql = self._q(f"UPDATE {T} SET {sets} WHERE {key} AND {guard}")
        named = "status" in shape.columns
        held: list[tuple[int, str]] = []
        for row in rows:
            cur.execute(sql, [*row[n:], *row[:n]])
            if cur.rowcount == 1:
                name = ""
                if named:
                    cur.execute(self._q(f"SELECT name FROM {T} WHERE id = ?"), (row[0],))
                    name = str(cur.fetchone()[0])
                held.append((row[0], name))
        return lambda: held

    def _on_held(self, cur: Cursor, changes: Sequence[Change]) -> None:
        """After the rows of changes that held are written: a dialect's bookkeeping (none by
        default; PostgreSQL notes wake-ups to send at commit)."""

    def _shapes(self, changes: Sequence[Change]) -> dict[Shape, list[list[Any]]]:
        """The rows (:func:`guard_row`) of ``changes`` grouped by :class:`Shape`, in order."""
        shapes: dict[Shape, list[list[Any]]] = {}
        encode = self._encode_value
        for change in changes:
            shape = Shape(
                tuple(change.values),
                tuple(sorted(change.from_statuses)),
                _GUARDS[change.fence is not None, change.stage is not None],
            )
            rows = shapes.get(shape)
            if rows is None:
                rows = shapes[shape] = []
            rows.append(guard_row(change, encode))
        return shapes

    def _with_children(self, cur: Cursor, change: Change) -> Change:
        """Insert the children of a change that held; returns the change with the child ids
        in the metadata of its ``lists_children`` events."""
        child_ids = self._insert_many(cur, change.children)
        return change._replace(
            events=tuple(
                e._replace(metadata={**(e.metadata or {}), "child_task_ids": child_ids})
                if e.lists_children
                else e
                for e in change.events
            )
        )

    @staticmethod
    def _lost(change: Change) -> None:
        log.info(
            "write to task %s lost its guard (statuses %s, fence %s, stage %s); nothing changed",
            change.task_id,
            sorted(change.from_statuses),
            change.fence,
            change.stage,
        )

    def _held_rows(
        self, changes: Sequence[Change]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The event rows and attempt closes of changes that held (an attempt's opening is
        written by the guarded update itself: its task row states it)."""
        events: list[tuple[Any, ...]] = []
        closes: list[tuple[Any, ...]] = []
        for change in changes:
            events += self._event_rows(change)
            if change.attempt_close is not None:
                closes.append(close_params(change))
        return events, closes

    def _event_rows(self, change: Change) -> list[tuple[Any, ...]]:
        return [
            self._event_params(change.task_id, change.root_id, change.parent_id, e)
            for e in change.events
        ]

    def _count_children(self, cur: Cursor, fans: Sequence[FanIn]) -> None:
        """Count finished children on their parents: one counter update per parent and round
        (parents in id order, so concurrent batches lock them in the same order), held only
        while the parent is ``suspended`` at the round's stage; a parent whose round is then
        complete gets the resume of the round's last fan-in that carries one, applied by
        :meth:`_apply_run` (guarded by status and stage, so it resumes once)."""
        rounds: dict[tuple[int, int], list[FanIn]] = {}
        for fan in fans:
            rounds.setdefault((fan.parent_id, fan.stage), []).append(fan)
        for (parent_id, stage), group in sorted(rounds.items()):
            # the UPDATE row-locks the parent, so concurrent batches are counted one at a time
            cur.execute(
                self._q(
                    f"UPDATE {T} SET completed_children = completed_children + ?"
                    " WHERE id = ? AND stage = ? AND status = 'suspended'"
                ),
                (sum(f.delta for f in group), parent_id, stage),
            )
            resume = next((f.resume for f in reversed(group) if f.resume is not None), None)
            if cur.rowcount != 1 or resume is None:
                continue
            cur.execute(
                self._q(
                    f"SELECT completed_children, total_children, parent_id FROM {T} WHERE id = ?"
                ),
                (parent_id,),
            )
            found = cur.fetchone()
            if found is None or int(found[0]) < int(found[1]):
                continue
            self._apply_run(
                cur,
                [
                    Change(
                        task_id=resume.task_id,
                        root_id=resume.root_id,
                        parent_id=found[2],
                        from_statuses=resume.from_statuses,
                        values=resume.values,
                        events=resume.events,
                        stage=resume.stage,
                    )
                ],
            )

    def _run_migrations(
        self,
        cur: Cursor,
        migrations: Mapping[int, Sequence[str]],
        version: int,
        float_type: str,
        *,
        prepare: Callable[[str], str] = lambda statement: statement,
    ) -> None:
        """Bring the schema to ``version`` (inside the caller's lock or transaction)."""
        cur.execute(
            "CREATE TABLE IF NOT EXISTS tideflow_schema"
            f" (version INTEGER NOT NULL PRIMARY KEY, applied_at {float_type} NOT NULL)"
        )
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM tideflow_schema")
        current = int(cur.fetchone()[0])
        if current > version:
            raise StoreError(
                f"the database schema is version {current}, newer than this tideflow"
                f" ({version}); upgrade tideflow"
            )
        for step in range(current + 1, version + 1):
            for statement in migrations[step]:
                cur.execute(prepare(statement))
            cur.execute(
                self._q("INSERT INTO tideflow_schema (version, applied_at) VALUES (?, ?)"),
                (step, time.time()),
            )

    def append_event(self, change: Change) -> int | None:
        with self._counting() as cur:
            if not self._apply_run(cur, [change._replace(events=())])[0]:
                return None
            (event,) = change.events
            return self._insert_id(
                cur,
                INSERT_EVENT,
                self._event_params(change.task_id, change.root_id, change.parent_id, event),
            )

    def get_task(self, task_id: int) -> TaskRow | None:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {TASK_SELECT} FROM {T} WHERE id = ?"), (task_id,))
            row = cur.fetchone()
        return None if row is None else self._decode_task(row)

    def _fold(self, column: str) -> str:
        """SQL lower-casing ``column`` as Python's ``str.lower`` does (searches compare it with
        a lower-cased pattern); SQLite's own LOWER folds ASCII only, so it overrides this."""
        return f"LOWER({column})"

    def _task_where(self, query: TaskFilter) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.ids is not None:
            ids = list(query.ids)
            if not ids:
                return "1 = 0", []
            clauses.append(f"id IN ({_placeholders(len(ids))})")
            params += ids
        for column in (
            "name",
            "status",
            "type",
            "tag",
            "worker_id",
            "parent_id",
            "root_id",
            "suspend_reason",
        ):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.statuses is not None:
            statuses = list(query.statuses)
            if not statuses:
                return "1 = 0", []
            clauses.append(f"status IN ({_placeholders(len(statuses))})")
            params += statuses
        # case-insensitive searches: the pattern is lower-cased by the caller, its LIKE
        # wildcards escaped with '!' (a backslash means something else in MySQL literals)
        for column, value, pattern in (
            ("name", query.name_prefix, "{}%"),
            ("tag", query.tag_contains, "%{}%"),
            ("worker_id", query.worker_contains, "%{}%"),
        ):
            if value is not None:
                clauses.append(f"{self._fold(column)} LIKE ? ESCAPE '!'")
                params.append(pattern.format(_like_escape(value)))
        for column, value, op in (
            ("created_at", query.created_after, ">="),
            ("created_at", query.created_before, "<"),
            ("last_active_time", query.finished_after, ">="),
            ("last_active_time", query.finished_before, "<"),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if query.finished_after is not None or query.finished_before is not None:
            clauses.append(f"status IN ({_TERMINAL_LIST})")
        return (" AND ".join(clauses) or "1 = 1"), params

    @staticmethod
    def _page(limit: int | None, offset: int) -> tuple[str, list[Any]]:
        if limit is None and not offset:
            return "", []
        return " LIMIT ? OFFSET ?", [limit if limit is not None else 2**62, offset]

    @staticmethod
    def _order(order: str) -> str:
        if order not in ("asc", "desc"):
            raise InvalidOptionError(f"order must be 'asc' or 'desc', got {order!r}")
        return order.upper()

    def query_tasks(self, query: TaskFilter) -> tuple[list[TaskRow], int]:
        where, params = self._task_where(query)
        page, page_params = self._page(query.limit, query.offset)
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {TASK_SELECT} FROM {T} WHERE {where}"
                    f" ORDER BY {_sort(query.sort, self._order(query.order))}{page}"
                ),
                params + page_params,
            )
            rows = [self._decode_task(r) for r in cur.fetchall()]
            if query.limit is None and not query.offset:
                return rows, len(rows)
            cur.execute(self._q(f"SELECT COUNT(*) FROM {T} WHERE {where}"), params)
            total = int(cur.fetchone()[0])
        return rows, total

    def delete_tasks(self, query: TaskFilter) -> int:
        where, params = self._task_where(query)
        with self._counting() as cur:
            # locked, so the statuses taken off the kept counts are the ones deleted
            cur.execute(
                self._q(
                    f"SELECT id, name, status FROM {T} WHERE {where} ORDER BY id{self.lock_rows}"
                ),
                params,
            )
            found = cur.fetchall()
            ids = [int(r[0]) for r in found]
            tally = self._tally()
            for _, name, status in found:
                tally[name, status] = tally.get((name, status), 0) - 1
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = _placeholders(len(chunk))
                for table, column in ((E, "task_id"), (A, "task_id"), (T, "id")):
                    cur.execute(self._q(f"DELETE FROM {table} WHERE {column} IN ({marks})"), chunk)
        if ids:
            self._deletions += 1
        return len(ids)

    def delete_expired(
        self, before: float, statuses: Sequence[str], limit: int, after_id: int = 0
    ) -> tuple[int, int, int, int | None]:
        with self._counting() as cur:
            # roots are walked in id order from after_id, stopping at the limit: the planner
            # would rather scan and sort the whole table ("id = root_id" looks rare to it)
            self._plan_by_id(cur)
            marks = _placeholders(len(statuses))
            cur.execute(
                self._q(
                    f"SELECT id FROM {T} WHERE id = root_id AND id > ? AND status IN ({marks})"
                    f" AND last_active_time < ? ORDER BY id LIMIT ?"
                ),
                [after_id, *statuses, before, limit],
            )
            roots = [int(r[0]) for r in cur.fetchall()]
            if not roots:
                return 0, 0, 0, None
            cur.execute(
                self._q(
                    f"SELECT root_id, status, last_active_time, name FROM {T}"
                    f" WHERE root_id IN ({_placeholders(len(roots))}){self.lock_rows}"
                ),
                roots,
            )
            keep: set[int] = set()
            allowed = set(statuses)
            found = cur.fetchall()
            for root_id, status, last_active, _ in found:
                if status not in allowed or last_active is None or float(last_active) >= before:
                    keep.add(int(root_id))
            gone = [r for r in roots if r not in keep]
            counts = [0, 0, 0]
            tally = self._tally()
            for root_id, status, _, name in found:
                if int(root_id) not in keep:  # deleted below, with its workflow
                    tally[name, status] = tally.get((name, status), 0) - 1
            if gone:
                for i, table in enumerate((T, E, A)):
                    counts[i] = self._delete_by_root(cur, table, gone)
        return counts[0], counts[1], counts[2], roots[-1]

    def _delete_by_root(self, cur: Cursor, table: str, roots: Sequence[int]) -> int:
        """Delete the rows of ``table`` in the workflows ``roots``; returns how many."""
        cur.execute(
            self._q(f"DELETE FROM {table} WHERE root_id IN ({_placeholders(len(roots))})"), roots
        )
        return max(0, int(cur.rowcount))

    def task_counts(self) -> list[tuple[str, str, int]]:
        # the kept counts (a few rows per name and status), not a count of the tasks table
        with self._read() as cur:
            cur.execute(
                f"SELECT name, status, SUM(n) FROM {C}"
                " GROUP BY name, status HAVING SUM(n) <> 0 ORDER BY name, status"
            )
            return [(str(r[0]), str(r[1]), int(r[2])) for r in cur.fetchall()]

    def recount_tasks(self) -> list[tuple[str, str, int, int]]:
        with self._write() as cur:
            for statement in self.lock_counts:
                cur.execute(statement)
            cur.execute(f"SELECT name, status, SUM(n) FROM {C} GROUP BY name, status")
            kept = {(str(r[0]), str(r[1])): int(r[2]) for r in cur.fetchall()}
            cur.execute(f"SELECT name, status, COUNT(*) FROM {T} GROUP BY name, status")
            counted = {(str(r[0]), str(r[1])): int(r[2]) for r in cur.fetchall()}
            cur.execute(f"DELETE FROM {C}")
            rows = sorted(counted.items())
            for start in range(0, len(rows), 500):  # into shard 0 of the emptied counts
                chunk = rows[start : start + 500]
                cur.execute(
                    self._q(self._counts_upsert(len(chunk))),
                    [v for (name, status), n in chunk for v in (name, status, 0, n)],
                )
        return [
            (name, status, kept.get((name, status), 0), counted.get((name, status), 0))
            for name, status in sorted(kept.keys() | counted.keys())
            if kept.get((name, status), 0) != counted.get((name, status), 0)
        ]

    def next_due(self) -> float | None:
        with self._read() as cur:
            cur.execute(f"SELECT MIN(next_run_time) FROM {T} WHERE status IN ({_CLAIMABLE_LIST})")
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def waiting_counts(self) -> list[tuple[str, str | None, int]]:
        with self._read() as cur:
            cur.execute(
                f"SELECT name, requires, COUNT(*) FROM {T}"
                f" WHERE status IN ({_CLAIMABLE_LIST})"
                " GROUP BY name, requires ORDER BY name, requires"
            )
            return [(str(r[0]), r[1], int(r[2])) for r in cur.fetchall()]

    def _floor(self, expression: str) -> str:
        """SQL rounding a non-negative number down to an integer."""
        return f"FLOOR({expression})"

    def finished_histogram(
        self, since: float, bucket: float, statuses: Sequence[str]
    ) -> list[tuple[int, str, int]]:
        slot = self._floor("last_active_time / ?")
        unknown = set(statuses) - _STATUS_NAMES
        if unknown or not statuses:
            raise InvalidOptionError(f"not task statuses: {sorted(unknown) or 'none'}")
        # literal statuses: the finished rows' partial index (schema 4) is used only when the
        # planner can see that the query's statuses are among its own
        listed = ", ".join(f"'{s}'" for s in sorted(set(statuses)))
        index = self._finished_index if set(statuses) == TERMINAL_STATUSES else ""
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {slot} AS slot, status, COUNT(*) FROM {T}{index}"
                    f" WHERE status IN ({listed}) AND last_active_time >= ?"
                    " GROUP BY slot, status ORDER BY slot, status"
                ),
                [bucket, since],
            )
            return [(int(r[0]), str(r[1]), int(r[2])) for r in cur.fetchall()]

    def tag_stats(self, tag: str, status: str | None) -> list[dict[str, Any]]:
        sql = f"SELECT tag, name, status, COUNT(*) FROM {T} WHERE tag = ?"
        params: list[Any] = [tag]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        sql += " GROUP BY tag, name, status ORDER BY name, status"
        with self._read() as cur:
            cur.execute(self._q(sql), params)
            return [
                {"tag": r[0], "name": r[1], "status": r[2], "count": int(r[3])}
                for r in cur.fetchall()
            ]

    def descendants(self, task_id: int) -> list[TaskRow]:
        found: list[TaskRow] = []
        frontier = [task_id]
        with self._read() as cur:
            while frontier:
                marks = _placeholders(len(frontier))
                cur.execute(
                    self._q(
                        f"SELECT {TASK_SELECT} FROM {T} WHERE parent_id IN ({marks}) ORDER BY id"
                    ),
                    frontier,
                )
                rows = [self._decode_task(r) for r in cur.fetchall()]
                found += rows
                frontier = [r.id for r in rows]
        return found

    def children_of_round(self, parent_id: int, stage: int, count: int) -> list[TaskRow]:
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {TASK_SELECT} FROM {T} WHERE parent_id = ? AND parent_stage = ?"
                    " ORDER BY id DESC LIMIT ?"
                ),
                (parent_id, stage, count),
            )
            return [self._decode_task(r) for r in reversed(cur.fetchall())]

    def running_tasks(
        self,
        *,
        worker_id: str | None = None,
        heartbeat_older_than: float | None = None,
        limit: int = 1000,
    ) -> list[TaskRow]:
        with self._read() as cur:
            return self._running(cur, worker_id, heartbeat_older_than, limit)

    def _running(
        self, cur: Cursor, worker_id: str | None, heartbeat_older_than: float | None, limit: int
    ) -> list[TaskRow]:
        sql = f"SELECT {TASK_SELECT} FROM {T} WHERE status = 'running'"
        params: list[Any] = []
        if worker_id is not None:
            sql += " AND worker_id = ?"
            params.append(worker_id)
        if heartbeat_older_than is not None:
            sql += f" AND heartbeat_at < {self.now_sql} - ?"
            params.append(heartbeat_older_than)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        cur.execute(self._q(sql), params)
        return [self._decode_task(r) for r in cur.fetchall()]

    def heartbeat_tasks(self, worker_id: str) -> dict[int, int]:
        with self._write() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {T} SET heartbeat_at = {self.now_sql}"
                    " WHERE worker_id = ? AND status = 'running'"
                ),
                (worker_id,),
            )
            cur.execute(
                self._q(f"SELECT id, attempt FROM {T} WHERE worker_id = ? AND status = 'running'"),
                (worker_id,),
            )
            return {int(r[0]): int(r[1]) for r in cur.fetchall()}

    # --- audit ---------------------------------------------------------------------------------
    def _audit_where(self, query: EventFilter, time_column: str) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("task_id", "root_id", "worker_id", "attempt", "stage"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.event_types:
            clauses.append(f"event_type IN ({_placeholders(len(query.event_types))})")
            params += list(query.event_types)
        if query.outcome is not None:
            clauses.append("outcome = ?")
            params.append(query.outcome)
        if query.started_after is not None:
            clauses.append(f"{time_column} >= ?")
            params.append(query.started_after)
        if query.started_before is not None:
            clauses.append(f"{time_column} <= ?")
            params.append(query.started_before)
        if query.ended_after is not None:
            clauses.append("ended_at >= ?")
            params.append(query.ended_after)
        if query.ended_before is not None:
            clauses.append("ended_at <= ?")
            params.append(query.ended_before)
        if query.open_only:
            clauses.append("ended_at IS NULL")
        return (" AND ".join(clauses) or "1 = 1"), params

    def _audit_query(
        self, sources: Sequence[str], columns: str, query: EventFilter, time_column: str
    ) -> tuple[list[Any], int]:
        """Rows of ``columns`` from the union of ``sources`` (each filtered on its own, so each
        uses its indexes), ordered by id and paged, and their total."""
        where, params = self._audit_where(query, time_column)
        page, page_params = self._page(query.limit, query.offset)
        branches = [f"SELECT {columns} FROM {source} WHERE {where}" for source in sources]
        rows_sql = (
            branches[0]
            if len(branches) == 1
            else f"SELECT {columns} FROM ({' UNION ALL '.join(branches)}) AS u"
        )
        with self._read() as cur:
            cur.execute(
                self._q(f"{rows_sql} ORDER BY id {self._order(query.order)}{page}"),
                params * len(sources) + page_params,
            )
            rows = cur.fetchall()
            if query.limit is None and not query.offset:
                return rows, len(rows)
            counts = " + ".join(f"(SELECT COUNT(*) FROM {s} WHERE {where})" for s in sources)
            cur.execute(self._q(f"SELECT {counts}"), params * len(sources))
            return rows, int(cur.fetchone()[0])

    def query_events(self, query: EventFilter) -> tuple[list[TaskEvent], int]:
        rows, total = self._audit_query((E,), EVENT_COLUMNS, query, "event_time")
        return [
            TaskEvent(
                id=int(r[0]),
                task_id=int(r[1]),
                root_id=int(r[2]),
                parent_id=r[3],
                event_type=r[4],
                from_status=r[5],
                to_status=r[6],
                stage=int(r[7]),
                worker_id=r[8],
                attempt=r[9],
                event_time=_ts(r[10]),  # type: ignore[arg-type]
                message=r[11],
                metadata=json.loads(r[12]) if r[12] else {},
            )
            for r in rows
        ], total

    def query_attempts(self, query: EventFilter) -> tuple[list[TaskAttempt], int]:
        rows, total = self._audit_query(
            (A, f"({OPEN_ATTEMPTS}) AS o"), ATTEMPT_COLUMNS, query, "started_at"
        )
        return [
            TaskAttempt(
                id=int(r[0]),
                task_id=int(r[1]),
                attempt=int(r[2]),
                worker_id=r[3],
                stage=int(r[4]),
                started_at=_ts(r[5]),  # type: ignore[arg-type]
                ended_at=_ts(r[6]),
                outcome=r[7],
                error=r[8],
                timeout_flag=bool(r[9]),
                duration_seconds=None if r[10] is None else float(r[10]),
            )
            for r in rows
        ], total

    # --- workers -------------------------------------------------------------------------------
    def register_worker(self, worker: WorkerRow) -> list[str]:
        superseded: list[str] = []
        with self._write() as cur:
            if worker.pod_id is not None:
                cur.execute(
                    self._q(
                        f"SELECT worker_id FROM {W} WHERE pod_id = ? AND worker_id <> ?"
                        f" AND status = 'active' ORDER BY worker_id{self.lock_rows}"
                    ),
                    (worker.pod_id, worker.worker_id),
                )
                superseded = [str(r[0]) for r in cur.fetchall()]
                self._set_status(cur, superseded, "superseded")
            cur.execute(self._q(f"DELETE FROM {W} WHERE worker_id = ?"), (worker.worker_id,))
            cur.execute(
                self._q(
                    f"INSERT INTO {W} ({WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    worker.worker_id,
                    worker.pod_id,
                    worker.host,
                    worker.pid,
                    worker.status,
                    worker.capabilities,
                    worker.handlers,
                    worker.concurrency,
                    worker.registered_at,
                    worker.last_seen_at,
                    worker.expires_at,
                ),
            )
        return superseded

    def _set_status(self, cur: Cursor, worker_ids: Sequence[str], status: str) -> None:
        """Set the status of the workers ``worker_ids`` (rows the transaction has locked)."""
        if worker_ids:
            cur.execute(
                self._q(
                    f"UPDATE {W} SET status = ?"
                    f" WHERE worker_id IN ({_placeholders(len(worker_ids))})"
                ),
                (status, *worker_ids),
            )

    def heartbeat(self, worker_id: str, timeout: float) -> tuple[dict[int, int], str | None, float]:
        now = self.now_sql
        before = time.time()
        with self._write() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {T} SET heartbeat_at = {now}"
                    " WHERE worker_id = ? AND status = 'running'"
                ),
                (worker_id,),
            )
            cur.execute(
                self._q(
                    f"UPDATE {W} SET last_seen_at = {now}, expires_at = {now} + ?"
                    " WHERE worker_id = ?"
                ),
                (timeout, worker_id),
            )
            cur.execute(
                self._q(f"SELECT id, attempt FROM {T} WHERE worker_id = ? AND status = 'running'"),
                (worker_id,),
            )
            owned = {int(r[0]): int(r[1]) for r in cur.fetchall()}
            cur.execute(
                self._q(f"SELECT (SELECT status FROM {W} WHERE worker_id = ?), {now}"),
                (worker_id,),
            )
            row = cur.fetchone()
        after = time.time()
        status = None if row[0] is None else str(row[0])
        with self._clock_lock:
            if self.dialect != "sqlite":  # SQLite: one host, one clock, offset 0
                self._clock_offset = float(row[1]) - (before + after) / 2
            self._clock_measured = time.monotonic()
            offset = self._clock_offset
        return owned, status, offset

    def heartbeat_worker(self, worker_id: str, timeout: float) -> str | None:
        now = self.now_sql
        with self._write() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {W} SET last_seen_at = {now}, expires_at = {now} + ?"
                    " WHERE worker_id = ?"
                ),
                (timeout, worker_id),
            )
            cur.execute(self._q(f"SELECT status FROM {W} WHERE worker_id = ?"), (worker_id,))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def acquire_lease(self, name: str, holder: str, stale_after: float) -> bool:
        with self._write() as cur:
            return self._acquire_lease(cur, name, holder, stale_after)

    def _acquire_lease(self, cur: Cursor, name: str, holder: str, stale_after: float) -> bool:
        now = self.now_sql
        cur.execute(
            self._q(
                f"UPDATE {L} SET holder = ?, renewed_at = {now} WHERE name = ?"
                f" AND (holder IS NULL OR holder = ? OR renewed_at < {now} - ?"
                f" OR NOT EXISTS (SELECT 1 FROM {W} WHERE {W}.worker_id = {L}.holder"
                f" AND {W}.status = 'active'))"
            ),
            (holder, name, holder, stale_after),
        )
        return int(cur.rowcount) > 0

    def lease_holder(self, name: str) -> str | None:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT holder FROM {L} WHERE name = ?"), (name,))
            row = cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def release_lease(self, name: str, holder: str) -> None:
        with self._write() as cur:
            cur.execute(
                self._q(f"UPDATE {L} SET holder = NULL WHERE name = ? AND holder = ?"),
                (name, holder),
            )

    def delete_stale_workers(self, before: float) -> int:
        with self._write() as cur:
            cur.execute(
                self._q(
                    f"DELETE FROM {W} WHERE status <> 'active' AND last_seen_at < ?"
                    f" AND NOT EXISTS (SELECT 1 FROM {T} WHERE {T}.status = 'running'"
                    f" AND {T}.worker_id = {W}.worker_id)"
                ),
                (before,),
            )
            return max(0, int(cur.rowcount))

    def sweep(self, request: SweepRequest) -> SweepRead:
        with self._write() as cur:
            dead = self._mark_dead(cur, request.silent_for, request.worker_id)
            if request.fenced or not self._acquire_lease(
                cur, request.lease, request.worker_id, request.silent_for
            ):
                return SweepRead(dead, False, [], [])
            orphaned = self._orphaned(cur, request.worker_id, 1000) if request.recover else []
            stalled = self._running(cur, None, request.stalled_after, 1000)
        return SweepRead(dead, True, orphaned, stalled)

    def mark_dead_workers(self, silent_for: float, *, exclude: str) -> list[str]:
        with self._write() as cur:
            return self._mark_dead(cur, silent_for, exclude)

    def _mark_dead(self, cur: Cursor, silent_for: float, exclude: str) -> list[str]:
        # the rows stay locked until the UPDATE: a heartbeat committed meanwhile is seen
        cur.execute(
            self._q(
                f"SELECT worker_id FROM {W} WHERE status = 'active' AND worker_id <> ?"
                f" AND last_seen_at < {self.now_sql} - ? ORDER BY worker_id{self.lock_rows}"
            ),
            (exclude, silent_for),
        )
        dead = [str(r[0]) for r in cur.fetchall()]
        self._set_status(cur, dead, "dead")
        return dead

    def orphaned_tasks(self, *, exclude: str, limit: int = 1000) -> list[TaskRow]:
        with self._read() as cur:
            return self._orphaned(cur, exclude, limit)

    def _orphaned(self, cur: Cursor, exclude: str, limit: int) -> list[TaskRow]:
        cur.execute(
            self._q(
                f"SELECT {TASK_SELECT} FROM {T} WHERE status = 'running' AND worker_id <> ?"
                f" AND worker_id NOT IN (SELECT worker_id FROM {W} WHERE status = 'active')"
                " ORDER BY id LIMIT ?"
            ),
            (exclude, limit),
        )
        return [self._decode_task(r) for r in cur.fetchall()]

    def update_worker(self, worker_id: str, values: Mapping[str, Any]) -> None:
        """Set columns of one worker row."""
        cols = list(values)
        with self._write() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {W} SET {', '.join(f'{c} = ?' for c in cols)} WHERE worker_id = ?"
                ),
                [*values.values(), worker_id],
            )

    def set_worker_status(self, worker_id: str, status: str, now: float) -> None:
        self.update_worker(worker_id, {"status": status, "last_seen_at": now})

    def list_workers(self, status: str | None = None) -> list[WorkerRow]:
        sql = f"SELECT {WORKER_COLUMNS} FROM {W}"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        with self._read() as cur:
            cur.execute(self._q(sql + " ORDER BY registered_at"), params)
            return [
                WorkerRow(
                    worker_id=r[0],
                    pod_id=r[1],
                    host=r[2],
                    pid=int(r[3]),
                    status=r[4],
                    capabilities=r[5],
                    handlers=r[6],
                    concurrency=int(r[7]),
                    registered_at=float(r[8]),
                    last_seen_at=float(r[9]),
                    expires_at=float(r[10]),
                )
                for r in cur.fetchall()
            ]
