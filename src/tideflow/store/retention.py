"""Retention: delete expired workflows batch by batch through :meth:`Store.delete_expired`.

No SQL here; each batch is one short transaction of the store, so a large backlog never holds
locks for long and a sweep cut short leaves nothing half-deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tideflow.store.protocol import Store

__all__ = ["sweep"]


def sweep(
    store: Store,
    before: float,
    statuses: Sequence[str],
    batch: int | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Delete every workflow whose tasks are all in ``statuses`` and last active before
    ``before`` (or until ``stop()`` says so, between batches), then the rows of workers gone
    since before ``before``; returns ``{"tasks_deleted", "events_deleted",
    "attempts_deleted"}``. ``batch`` defaults to the store's ``retention_batch``."""
    totals = {"tasks_deleted": 0, "events_deleted": 0, "attempts_deleted": 0}
    after: int | None = 0
    while after is not None and not stop():
        tasks, events, attempts, after = store.delete_expired(
            before, statuses, batch or store.retention_batch, after
        )
        totals["tasks_deleted"] += tasks
        totals["events_deleted"] += events
        totals["attempts_deleted"] += attempts
    if not stop():
        store.delete_stale_workers(before)
    return totals
