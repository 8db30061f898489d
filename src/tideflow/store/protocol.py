"""The store seam: one method per domain operation, each one transaction.

The runtime and the manager talk to storage only through :class:`Store`. Writes arrive planned
(:class:`~tideflow.core.types.Change`, :class:`~tideflow.core.types.NewTask`); the store applies
them as compare-and-set and reports whether they held. It never picks a status.

One clock: every time that decides liveness or eligibility (task and worker heartbeats, worker
expiry, leases, stall and recovery cut-offs, ``next_run_time <= now``) is the database's "now",
taken inside the statement that decides (PostgreSQL and MySQL: the server's clock; SQLite: the
one host's clock), never a time the caller passes in. Times the caller writes into plans (event
times, ``next_run_time`` from a delay, a claim's start and heartbeat) come from :meth:`Store.clock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tideflow.core.types import (
    Change,
    ClaimRequest,
    EventFilter,
    NewTask,
    SweepRead,
    SweepRequest,
    TaskFilter,
    TaskRow,
    WorkerRow,
)
from tideflow.models import TaskAttempt, TaskEvent

__all__ = ["Store"]


class Store(Protocol):
    """What every backend (SQLite, PostgreSQL, MySQL) provides."""

    dialect: str
    #: the connection string with any password replaced by ``***``
    safe_url: str
    #: how many :meth:`exchange` calls a worker should keep on their way at once: more than one
    #: only pays where the database works on several transactions in parallel
    parallel_exchanges: int
    #: root tasks looked at per retention transaction
    retention_batch: int

    def setup(self) -> None:
        """Create or migrate the schema to the current version (idempotent, safe concurrently)."""

    def schema_version(self) -> int:
        """The schema version recorded in the database (0 before ``setup``)."""

    def close(self) -> None:
        """Release connections; further calls raise :class:`StoreError`."""

    def clock(self) -> float:
        """Now on the database's clock, as POSIX seconds: ``time.time()`` plus an offset.

        The offset (server minus local) is measured on first use and again once it is older
        than 10 s; a failed measurement keeps the old offset (logged at debug) and never raises.
        Callers take every time they write into plans from here.
        """

    def sync_clock(self) -> float:
        """Measure the offset to the database's clock now (``SELECT`` of its "now", against the
        midpoint of the local times before and after); return it. Never raises: on failure the
        old offset is kept and returned. SQLite's offset is 0 (one host, one clock)."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from any thread) when new work may be due, e.g. on PostgreSQL NOTIFY.

        Returns a function that unsubscribes, or None when the backend has no push channel (the
        worker then relies on polling alone).
        """

    def watch_finished(
        self, on_finished: Callable[[Sequence[int] | None], None]
    ) -> Callable[[], None] | None:
        """Call ``on_finished(ids)`` (from any thread) after a transaction that moved tasks to a
        terminal status (``completed``, ``permanently_failed``) committed, with their ids; and
        ``on_finished(None)`` each time the channel (re)connects, as tasks may have finished
        while it was not listening. One channel per store, shared by every watcher.

        Returns a function that unsubscribes, or None when the backend has no push channel
        (waiters then poll).
        """

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from any thread) soon after a transaction that changed tasks committed,
        and each time the channel (re)connects (PostgreSQL: LISTEN on the wake-up, finished and
        ``tideflow_changed`` channels). Returns a function that unsubscribes, or None when the
        backend has no push channel (watchers then poll :meth:`change_mark`)."""

    def change_mark(self) -> str:
        """A short text that differs after tasks were created, changed (status, progress, any
        event) or deleted by this store, or workers came or went: cheap (index-only lookups),
        so a dashboard can poll it for all its readers at once."""

    # --- tasks -------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[NewTask]) -> list[int]:
        """Insert all tasks with their events in one transaction; return their ids in order.

        A task whose ``unique_key`` matches a non-terminal task is not inserted: that task's id
        is returned in its place.
        """

    def claim(self, request: ClaimRequest) -> list[TaskRow]:
        """Atomically claim up to ``request.limit`` due tasks; return them as now written.

        Due means ``next_run_time <=`` the database's now, in the statement; ``request.now``
        is only the plan's time (take it from :meth:`clock`)."""

    def next_due(self) -> float | None:
        """The earliest ``next_run_time`` of the tasks waiting to be claimed (pending, failed,
        timeout; whatever their name or requirements), or None when none waits: an idle worker
        on a store with a push channel sleeps until then (or a wake-up) instead of polling."""

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        """Apply each change as compare-and-set, all in one transaction; say which held."""

    def exchange(
        self, changes: Sequence[Change], request: ClaimRequest | None
    ) -> tuple[list[bool], list[TaskRow]]:
        """Write ``changes`` (as :meth:`apply`), then claim (as :meth:`claim`, due by the
        database's now), in ONE transaction: the worker's hot path, so a finished batch and the
        next claim share a commit."""

    def append_event(self, change: Change) -> int | None:
        """Apply a change that writes exactly one event; return the event id, or None if fenced."""

    def get_task(self, task_id: int) -> TaskRow | None:
        """One task row, or None."""

    def query_tasks(self, query: TaskFilter) -> tuple[list[TaskRow], int]:
        """Matching rows (paged as asked) and the total number of matches."""

    def delete_tasks(self, query: TaskFilter) -> int:
        """Delete matching tasks with their events and attempts; return how many tasks."""

    def tag_stats(self, tag: str, status: str | None) -> list[dict[str, Any]]:
        """Counts per (tag, name, status) for one tag."""

    def task_counts(self) -> list[tuple[str, str, int]]:
        """``(name, status, count)`` for every name and status with tasks, in that order.
        Called per dashboard page and ``/metrics`` scrape: it must not cost more with more
        tasks (the SQL stores keep the counts as they write, see ``SqlStore._counting``)."""

    def recount_tasks(self) -> list[tuple[str, str, int, int]]:
        """Count the tasks table afresh into the kept counts, in one transaction; return
        ``(name, status, kept, counted)`` for each name and status where they differed."""

    def waiting_counts(self) -> list[tuple[str, str | None, int]]:
        """``(name, requires, count)`` of the tasks waiting to be claimed (pending, failed,
        timeout), ``requires`` as stored (comma-separated, or None)."""

    def finished_histogram(
        self, since: float, bucket: float, statuses: Sequence[str]
    ) -> list[tuple[int, str, int]]:
        """Tasks now in ``statuses`` last active at or after ``since``, counted per ``bucket``
        seconds: ``(bucket number, status, count)`` where the bucket starts at number x
        ``bucket``. Reads the tasks finished since ``since``, not every finished task."""

    def descendants(self, task_id: int) -> list[TaskRow]:
        """Every task below ``task_id`` in its workflow tree."""

    def children_of_round(self, parent_id: int, stage: int, count: int) -> list[TaskRow]:
        """The last ``count`` children a parent spawned at ``stage``, in creation order.

        (A cron parent spawns at stage 0 on every run: only the latest round is wanted.)
        """

    def running_tasks(
        self,
        *,
        worker_id: str | None = None,
        heartbeat_older_than: float | None = None,
        limit: int = 1000,
    ) -> list[TaskRow]:
        """Running tasks (up to ``limit``, by id), optionally of one worker, or only those whose
        ``heartbeat_at`` is before the database's now minus ``heartbeat_older_than`` seconds."""

    def heartbeat_tasks(self, worker_id: str) -> dict[int, int]:
        """Set ``heartbeat_at`` to the database's now on every task this worker runs; return
        ``{task_id: attempt}`` of those tasks."""

    # --- audit ---------------------------------------------------------------------------------
    def query_events(self, query: EventFilter) -> tuple[list[TaskEvent], int]:
        """Events matching ``query`` (paged) and their total."""

    def query_attempts(self, query: EventFilter) -> tuple[list[TaskAttempt], int]:
        """Attempts matching ``query`` (paged) and their total."""

    # --- workers -------------------------------------------------------------------------------
    def register_worker(self, worker: WorkerRow) -> list[str]:
        """Insert or replace this worker's row, with the row's own times (callers take them
        from :meth:`clock`); with a ``pod_id``, every other active worker of that pod is marked
        ``superseded`` in the same transaction. Returns the ids so marked (the new worker
        recovers their running tasks itself)."""

    def delete_expired(
        self, before: float, statuses: Sequence[str], limit: int, after_id: int = 0
    ) -> tuple[int, int, int, int | None]:
        """One bounded batch of retention in one transaction.

        Looks at up to ``limit`` root tasks with ids above ``after_id``, in ``statuses`` and
        last active before ``before``, and deletes each whole workflow (the root and every
        task under it; a plain task is a workflow of one) whose tasks all qualify, with their
        events and attempts. Returns the tasks, events and attempts deleted and the last root
        id looked at (the next batch's ``after_id``; None when there was none)."""

    def acquire_lease(self, name: str, holder: str, stale_after: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` (``renewed_at`` = the database's
        now), in one statement: it holds when nobody has it, when ``holder`` already has it,
        when it was last renewed before the database's now minus ``stale_after`` seconds, or
        when its holder is not an active worker (no row, or ``dead``, ``superseded``,
        ``stopped``): a lease dies with its holder. Returns whether ``holder`` has it now."""

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` (None: nobody), however long ago it was renewed."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease ``name`` up if ``holder`` has it."""

    def delete_stale_workers(self, before: float) -> int:
        """Delete the rows of workers that are not ``active``, were last seen before
        ``before`` and own no running task; returns how many."""

    def mark_dead_workers(self, silent_for: float, *, exclude: str) -> list[str]:
        """Mark ``dead`` every ``active`` worker other than ``exclude`` (the caller) last seen
        before the database's now minus ``silent_for`` seconds; return their ids."""

    def sweep(self, request: SweepRequest) -> SweepRead:
        """One maintenance round's reads and marks in one transaction: what
        :meth:`mark_dead_workers` does (excluding ``request.worker_id``), then, unless
        ``request.fenced``, :meth:`acquire_lease` (stale after ``silent_for``), and, if the
        lease is held, :meth:`orphaned_tasks` (when ``request.recover``) and the running tasks
        whose heartbeat is older than ``stalled_after`` (:meth:`running_tasks`), up to 1,000
        each. The worker falls back to the steps one by one when it fails."""

    def orphaned_tasks(self, *, exclude: str, limit: int = 1000) -> list[TaskRow]:
        """Running tasks (up to ``limit``, by id) whose worker row is missing or not ``active``,
        for ``exclude`` (the caller, whose own tasks are left out) to recover. Marks nobody
        dead (:meth:`mark_dead_workers` does)."""

    def heartbeat_worker(self, worker_id: str, timeout: float) -> str | None:
        """Set the worker's ``last_seen_at`` to the database's now and ``expires_at`` to now
        plus ``timeout``; return its status as stored (None if the row is gone)."""

    def heartbeat(self, worker_id: str, timeout: float) -> tuple[dict[int, int], str | None, float]:
        """:meth:`heartbeat_tasks` and :meth:`heartbeat_worker` in one transaction, which also
        reads the database's now: returns ``{task_id: attempt}`` of the worker's running tasks,
        its status as stored (None if the row is gone) and the clock offset measured against
        that read (server minus the midpoint of the local times around the transaction; 0 on
        SQLite), which :meth:`clock` then uses as if :meth:`sync_clock` had measured it."""

    def set_worker_status(self, worker_id: str, status: str, now: float) -> None:
        """Set a worker's status (e.g. ``stopped`` after a graceful stop)."""

    def list_workers(self, status: str | None = None) -> list[WorkerRow]:
        """Registered workers, optionally with one status."""
