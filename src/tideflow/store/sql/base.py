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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from tideflow.core.types import (
    TASK_COLUMNS,
    Change,
    ClaimRequest,
    EventFilter,
    FanIn,
    NewEvent,
    NewTask,
    TaskFilter,
    TaskRow,
    WorkerRow,
)
from tideflow.errors import InvalidOptionError, StoreError
from tideflow.models import TERMINAL_STATUSES, TaskAttempt, TaskEvent

log = logging.getLogger("tideflow.store")

T = "tideflow_tasks"
E = "tideflow_events"
A = "tideflow_attempts"
L = "tideflow_leases"
W = "tideflow_workers"

TASK_SELECT = ", ".join(TASK_COLUMNS)
_JITTER = TASK_COLUMNS.index("retry_jitter")
_CONTEXT = TASK_COLUMNS.index("context")
INSERT_COLUMNS = tuple(c for c in TASK_COLUMNS if c != "id")
CLAIMABLE = ("pending", "failed", "timeout")
_CLAIMABLE_LIST = ", ".join(f"'{s}'" for s in CLAIMABLE)
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
OPEN_ATTEMPT = (
    f"INSERT INTO {A} (task_id, root_id, attempt, worker_id, stage, started_at, timeout_flag)"
    " VALUES (?, ?, ?, ?, ?, ?, 0)"
)
CLOSE_ATTEMPT = (
    f"UPDATE {A} SET ended_at = ?, outcome = ?, error = ?, timeout_flag = ?,"
    " duration_seconds = ? - started_at WHERE task_id = ? AND attempt = ? AND ended_at IS NULL"
)


def open_params(change: Change) -> tuple[Any, ...]:
    """Parameters of :data:`OPEN_ATTEMPT` for a change that opens an attempt."""
    o = change.attempt_open
    assert o is not None
    return (change.task_id, change.root_id, o.attempt, o.worker_id, o.stage, o.started_at)


def close_params(change: Change) -> tuple[Any, ...]:
    """Parameters of :data:`CLOSE_ATTEMPT` for a change that closes an attempt."""
    c = change.attempt_close
    assert c is not None
    return (
        c.ended_at,
        c.outcome,
        c.error,
        1 if c.timeout_flag else 0,
        c.ended_at,
        change.task_id,
        c.attempt,
    )


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

    def __init__(self) -> None:
        self._clock_lock = threading.Lock()
        self._clock_offset = 0.0
        self._clock_measured: float | None = None  # time.monotonic() of the last measurement

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

    # --- tasks ---------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[NewTask]) -> list[int]:
        with self._write() as cur:
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

    def _write_attempts(
        self, cur: Cursor, opens: Sequence[Sequence[Any]], closes: Sequence[Sequence[Any]]
    ) -> None:
        """Open attempt rows (:func:`open_params`), then close others (:func:`close_params`)."""
        if opens:
            cur.executemany(self._q(OPEN_ATTEMPT), opens)
        if closes:
            cur.executemany(self._q(CLOSE_ATTEMPT), closes)

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
        with self._write() as cur:
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
            chosen.append((row, request.plan(row)))
        held = self._apply_batch(cur, [change for _, change in chosen])
        return [
            row.with_values(change.values)
            for (row, change), ok in zip(chosen, held, strict=True)
            if ok
        ]

    def _apply_batch(self, cur: Cursor, changes: Sequence[Change]) -> list[bool]:
        """Apply changes in order: runs of changes without children, each task once, go to
        :meth:`_apply_simple` together, then their parents' fan-in (one counter update per
        parent and round); a change with children goes to :meth:`_apply_one`. A run ends
        before a task it already touches (as a change or as a parent to count on) comes again,
        so every task sees its changes in the order given."""
        results: list[bool] = [False] * len(changes)
        run: list[int] = []
        tasks: set[int] = set()
        parents: set[int] = set()

        def flush() -> None:
            if run:
                held = self._apply_simple(cur, [changes[i] for i in run])
                for i, ok in zip(run, held, strict=True):
                    results[i] = ok
                fans = [changes[i].fan_in for i in run if results[i]]
                self._count_children(cur, [f for f in fans if f is not None])
            run.clear()
            tasks.clear()
            parents.clear()

        for i, change in enumerate(changes):
            if change.children:
                flush()
                results[i] = self._apply_one(cur, change)
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

    def _apply_simple(self, cur: Cursor, changes: Sequence[Change]) -> list[bool]:
        """Simple changes: one compare-and-set each, then their event and attempt rows in one
        ``executemany`` each. Dialects with costly round trips override this set-based."""
        held = [self._compare_and_set(cur, change) for change in changes]
        self._write_held_rows(cur, changes, held)
        return held

    def _write_held_rows(
        self, cur: Cursor, changes: Sequence[Change], held: Sequence[bool]
    ) -> None:
        events, opens, closes = self._held_rows(changes, held)
        self._insert_event_rows(cur, events)
        self._write_attempts(cur, opens, closes)

    @staticmethod
    def _shapes(changes: Sequence[Change]) -> dict[tuple[Any, ...], list[Change]]:
        """Changes grouped by what their statement looks like (columns, guard), in order."""
        shapes: dict[tuple[Any, ...], list[Change]] = {}
        for change in changes:
            shape = (
                tuple(change.values),
                tuple(sorted(change.from_statuses)),
                change.fence is not None,
                change.stage is not None,
            )
            shapes.setdefault(shape, []).append(change)
        return shapes

    def _shape_rows(self, cols: Sequence[str], group: Sequence[Change]) -> list[list[Any]]:
        """One row per change of one shape: task id, the new values of ``cols``, then the fence
        (worker id, attempt) and the stage where the shape guards on them."""
        rows: list[list[Any]] = []
        for c in group:
            row = [c.task_id, *(self._encode_value(col, c.values[col]) for col in cols)]
            if c.fence is not None:
                row += [c.fence.worker_id, c.fence.attempt]
            if c.stage is not None:
                row.append(c.stage)
            rows.append(row)
        return rows

    def _held_rows(
        self, changes: Sequence[Change], held: Sequence[bool]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The event rows, attempt opens and attempt closes of the changes that held (a dialect
        that batches its compare-and-sets writes these in a few statements)."""
        events: list[tuple[Any, ...]] = []
        opens: list[tuple[Any, ...]] = []
        closes: list[tuple[Any, ...]] = []
        for change, ok in zip(changes, held, strict=True):
            if not ok:
                log.info(
                    "write to task %s lost its guard (statuses %s, fence %s); nothing changed",
                    change.task_id,
                    sorted(change.from_statuses),
                    change.fence,
                )
                continue
            events += self._event_rows(change)
            if change.attempt_open is not None:
                opens.append(open_params(change))
            if change.attempt_close is not None:
                closes.append(close_params(change))
        return events, opens, closes

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

    def _event_rows(self, change: Change) -> list[tuple[Any, ...]]:
        return [
            self._event_params(change.task_id, change.root_id, change.parent_id, e)
            for e in change.events
        ]

    def append_event(self, change: Change) -> int | None:
        with self._write() as cur:
            if not self._apply_one(cur, change, events=False):
                return None
            (event,) = change.events
            return self._insert_id(
                cur,
                INSERT_EVENT,
                self._event_params(change.task_id, change.root_id, change.parent_id, event),
            )

    def _compare_and_set(self, cur: Cursor, change: Change) -> bool:
        """The guarded UPDATE of one change; True when it held."""
        cols = list(change.values)
        params: list[Any] = [self._encode_value(c, change.values[c]) for c in cols]
        statuses = sorted(change.from_statuses)
        sql = (
            f"UPDATE {T} SET {', '.join(f'{c} = ?' for c in cols)}"
            f" WHERE id = ? AND status IN ({_placeholders(len(statuses))})"
        )
        params += [change.task_id, *statuses]
        if change.fence is not None:
            sql += " AND worker_id = ? AND attempt = ?"
            params += [change.fence.worker_id, change.fence.attempt]
        if change.stage is not None:
            sql += " AND stage = ?"
            params.append(change.stage)
        cur.execute(self._q(sql), params)
        return bool(cur.rowcount == 1)

    def _apply_one(self, cur: Cursor, change: Change, *, events: bool = True) -> bool:
        if not self._compare_and_set(cur, change):
            return False
        new_events = change.events
        if change.children:
            child_ids = self._insert_many(cur, change.children)
            new_events = tuple(
                e._replace(metadata={**(e.metadata or {}), "child_task_ids": child_ids})
                if e.lists_children
                else e
                for e in new_events
            )
        if events:
            self._insert_events(cur, change.task_id, change.root_id, change.parent_id, new_events)
        self._write_attempts(
            cur,
            [open_params(change)] if change.attempt_open is not None else [],
            [close_params(change)] if change.attempt_close is not None else [],
        )
        if change.fan_in is not None:
            self._count_children(cur, [change.fan_in])
        return True

    def _count_children(self, cur: Cursor, fans: Sequence[FanIn]) -> None:
        """Count finished children on their parents: one counter update per parent and round
        (parents in id order, so concurrent batches lock them in the same order); a parent
        whose round is complete is resumed in the same transaction."""
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
            self._apply_one(
                cur,
                Change(
                    task_id=resume.task_id,
                    root_id=resume.root_id,
                    parent_id=found[2],
                    from_statuses=resume.from_statuses,
                    values=resume.values,
                    events=resume.events,
                    stage=resume.stage,
                ),
            )

    def get_task(self, task_id: int) -> TaskRow | None:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {TASK_SELECT} FROM {T} WHERE id = ?"), (task_id,))
            row = cur.fetchone()
        return None if row is None else self._decode_task(row)

    @staticmethod
    def _task_where(query: TaskFilter) -> tuple[str, list[Any]]:
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
                    f" ORDER BY id {self._order(query.order)}{page}"
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
        with self._write() as cur:
            cur.execute(self._q(f"SELECT id FROM {T} WHERE {where}"), params)
            ids = [int(r[0]) for r in cur.fetchall()]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = _placeholders(len(chunk))
                for table, column in ((E, "task_id"), (A, "task_id"), (T, "id")):
                    cur.execute(self._q(f"DELETE FROM {table} WHERE {column} IN ({marks})"), chunk)
        return len(ids)

    def delete_expired(
        self, before: float, statuses: Sequence[str], limit: int, after_id: int = 0
    ) -> tuple[int, int, int, int | None]:
        with self._write() as cur:
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
                    f"SELECT root_id, status, last_active_time FROM {T}"
                    f" WHERE root_id IN ({_placeholders(len(roots))}){self.lock_rows}"
                ),
                roots,
            )
            keep: set[int] = set()
            allowed = set(statuses)
            for root_id, status, last_active in cur.fetchall():
                if status not in allowed or last_active is None or float(last_active) >= before:
                    keep.add(int(root_id))
            gone = [r for r in roots if r not in keep]
            counts = [0, 0, 0]
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
        with self._read() as cur:
            cur.execute(
                f"SELECT name, status, COUNT(*) FROM {T}"
                " GROUP BY name, status ORDER BY name, status"
            )
            return [(str(r[0]), str(r[1]), int(r[2])) for r in cur.fetchall()]

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
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {slot} AS slot, status, COUNT(*) FROM {T}"
                    f" WHERE status IN ({_placeholders(len(statuses))}) AND last_active_time >= ?"
                    " GROUP BY slot, status ORDER BY slot, status"
                ),
                [bucket, *statuses, since],
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
        with self._read() as cur:
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
        self, table: str, columns: str, query: EventFilter, time_column: str
    ) -> tuple[list[Any], int]:
        where, params = self._audit_where(query, time_column)
        page, page_params = self._page(query.limit, query.offset)
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {columns} FROM {table} WHERE {where}"
                    f" ORDER BY id {self._order(query.order)}{page}"
                ),
                params + page_params,
            )
            rows = cur.fetchall()
            if query.limit is None and not query.offset:
                return rows, len(rows)
            cur.execute(self._q(f"SELECT COUNT(*) FROM {table} WHERE {where}"), params)
            return rows, int(cur.fetchone()[0])

    def query_events(self, query: EventFilter) -> tuple[list[TaskEvent], int]:
        rows, total = self._audit_query(E, EVENT_COLUMNS, query, "event_time")
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
        rows, total = self._audit_query(A, ATTEMPT_COLUMNS, query, "started_at")
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
        now = self.now_sql
        with self._write() as cur:
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

    def mark_dead_workers(self, silent_for: float, *, exclude: str) -> list[str]:
        with self._write() as cur:
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
