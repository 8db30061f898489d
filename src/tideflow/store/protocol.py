"""The store seam: one method per domain operation, each one transaction.

The runtime and the manager talk to storage only through :class:`Store`. Writes arrive planned
(:class:`~tideflow.core.types.Change`, :class:`~tideflow.core.types.NewTask`); the store applies
them as compare-and-set and reports whether they held. It never picks a status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tideflow.core.types import (
    Change,
    ClaimRequest,
    EventFilter,
    NewTask,
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

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from any thread) when new work may be due, e.g. on PostgreSQL NOTIFY.

        Returns a function that unsubscribes, or None when the backend has no push channel (the
        worker then relies on polling alone).
        """

    # --- tasks -------------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[NewTask]) -> list[int]:
        """Insert all tasks with their events in one transaction; return their ids in order.

        A task whose ``unique_key`` matches a non-terminal task is not inserted: that task's id
        is returned in its place.
        """

    def claim(self, request: ClaimRequest) -> list[TaskRow]:
        """Atomically claim up to ``request.limit`` due tasks; return them as now written."""

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        """Apply each change as compare-and-set, all in one transaction; say which held."""

    def exchange(
        self, changes: Sequence[Change], request: ClaimRequest | None
    ) -> tuple[list[bool], list[TaskRow]]:
        """Write ``changes`` (as :meth:`apply`), then claim (as :meth:`claim`), in ONE
        transaction: the worker's hot path, so a finished batch and the next claim share a
        commit."""

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
        """``(name, status, count)`` for every name and status with tasks."""

    def waiting_counts(self) -> list[tuple[str, str | None, int]]:
        """``(name, requires, count)`` of the tasks waiting to be claimed (pending, failed,
        timeout), ``requires`` as stored (comma-separated, or None)."""

    def finished_histogram(
        self, since: float, bucket: float, statuses: Sequence[str]
    ) -> list[tuple[int, str, int]]:
        """Tasks now in ``statuses`` last active at or after ``since``, counted per ``bucket``
        seconds: ``(bucket number, status, count)`` where the bucket starts at number x
        ``bucket``."""

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
        heartbeat_before: float | None = None,
        limit: int = 1000,
    ) -> list[TaskRow]:
        """Running tasks, optionally of one worker or with a heartbeat older than a time."""

    def heartbeat_tasks(self, worker_id: str, now: float) -> dict[int, int]:
        """Refresh the heartbeat of every task this worker runs; return ``{task_id: attempt}``."""

    # --- audit ---------------------------------------------------------------------------------
    def query_events(self, query: EventFilter) -> tuple[list[TaskEvent], int]:
        """Events matching ``query`` (paged) and their total."""

    def query_attempts(self, query: EventFilter) -> tuple[list[TaskAttempt], int]:
        """Attempts matching ``query`` (paged) and their total."""

    # --- workers -------------------------------------------------------------------------------
    def register_worker(self, worker: WorkerRow) -> None:
        """Insert or replace this worker's row; with a ``pod_id``, every other active worker of
        that pod is marked ``superseded`` in the same transaction."""

    def delete_expired(
        self, before: float, statuses: Sequence[str], limit: int, after_id: int = 0
    ) -> tuple[int, int, int, int | None]:
        """One bounded batch of retention in one transaction.

        Looks at up to ``limit`` root tasks with ids above ``after_id``, in ``statuses`` and
        last active before ``before``, and deletes each whole workflow (the root and every
        task under it; a plain task is a workflow of one) whose tasks all qualify, with their
        events and attempts. Returns the tasks, events and attempts deleted and the last root
        id looked at (the next batch's ``after_id``; None when there was none)."""

    def acquire_lease(self, name: str, holder: str, now: float, stale_before: float) -> bool:
        """Take or renew the lease ``name`` for ``holder``: it holds when nobody has it, when
        ``holder`` already has it, or when its holder last renewed it before ``stale_before``.
        Returns whether ``holder`` has it now."""

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` (None: nobody), however long ago it was renewed."""

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease ``name`` up if ``holder`` has it."""

    def delete_stale_workers(self, before: float) -> int:
        """Delete the rows of workers that are not ``active``, were last seen before
        ``before`` and own no running task; returns how many."""

    def orphaned_tasks(
        self, seen_before: float, *, exclude: str, limit: int = 1000
    ) -> list[TaskRow]:
        """Running tasks whose worker is not live, for ``exclude`` (the caller) to recover.

        Active workers last seen before ``seen_before`` are marked ``dead`` first; then a task's
        worker is live only if its row exists and is ``active``. The caller's own tasks are left
        out."""

    def heartbeat_worker(self, worker_id: str, now: float, expires_at: float) -> str | None:
        """Refresh liveness; return the worker's status as stored (None if the row is gone)."""

    def set_worker_status(self, worker_id: str, status: str, now: float) -> None:
        """Set a worker's status (e.g. ``stopped`` after a graceful stop)."""

    def list_workers(self, status: str | None = None) -> list[WorkerRow]:
        """Registered workers, optionally with one status."""
