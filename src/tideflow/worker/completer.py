"""Group commit: attempt outcomes queue up and are written in batches.

The worker's loop takes whatever is queued and writes it in the same transaction as its next
claim (``Store.exchange``), so a batch of outcomes and the next batch of work share one commit.
Each change keeps its own compare-and-set guard, so batching never weakens fencing. When a
batch cannot be written, its changes are retried one by one with backoff; nothing queued is
dropped while the database can be reached at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tideflow.core.types import Change
from tideflow.errors import StoreError

__all__ = ["Completer", "Item"]

log = logging.getLogger("tideflow.worker")

#: called once with True (written), False (its guard did not hold) or the error that stopped it
Done = Callable[[bool | BaseException], None]
Item = tuple[Change, Done]
ApplyFn = Callable[[Sequence[Change]], Awaitable[list[bool]]]


class Completer:
    """The queue of outcome writes; each one's callback learns whether it held."""

    #: single-change attempts before an outcome is given up (about a minute of backoff)
    max_tries = 16

    def __init__(self, on_put: Callable[[], None], *, max_batch: int = 1000) -> None:
        self._on_put = on_put
        self._max_batch = max_batch
        self._queue: list[Item] = []
        self._in_flight = 0
        self._busy: dict[int, int] = {}  # task id -> taken batches not yet resolved
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, change: Change, done: Done = lambda _: None) -> None:
        """Queue ``change``; ``done`` is called once it is written (or given up)."""
        self._queue.append((change, done))
        self._idle.clear()
        self._on_put()

    def pending(self) -> bool:
        """Whether changes are queued that :meth:`take` would take now (a change waits while
        its task has one in a batch on its way)."""
        if not self._busy:
            return bool(self._queue)
        return any(change.task_id not in self._busy for change, _ in self._queue)

    def queued(self) -> int:
        """How many changes are queued (whether or not :meth:`take` would take them now)."""
        return len(self._queue)

    def take(self) -> list[Item]:
        """Take up to one batch of queued changes; :meth:`resolve` must follow.

        A task with a change in a batch still on its way has none in this one: two exchanges
        in flight never write one task row (which could deadlock them, or land out of order).
        """
        busy = self._busy
        if not busy:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        else:
            batch, rest, held_back = [], [], set()
            for item in self._queue:
                task_id = item[0].task_id
                if (
                    len(batch) < self._max_batch
                    and task_id not in busy
                    and task_id not in held_back
                ):
                    batch.append(item)
                else:
                    held_back.add(task_id)
                    rest.append(item)
            self._queue = rest
        if batch:
            self._in_flight += 1
            for change, _ in batch:
                busy[change.task_id] = busy.get(change.task_id, 0) + 1
        return batch

    def resolve(self, batch: list[Item], held: Sequence[bool]) -> None:
        """Report the outcome of a taken batch."""
        for (_, done), ok in zip(batch, held, strict=True):
            done(ok)
        self._done(batch)

    def _done(self, batch: list[Item]) -> None:
        if batch:
            self._in_flight -= 1
            busy = self._busy
            for change, _ in batch:
                left = busy[change.task_id] - 1
                if left:
                    busy[change.task_id] = left
                else:
                    del busy[change.task_id]
        if not self._queue and not self._in_flight:
            self._idle.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def write_each(self, batch: list[Item], apply: ApplyFn) -> None:
        """Write a taken batch change by change, retrying each with backoff."""
        for change, done in batch:
            delay = 0.05
            for attempt in range(self.max_tries):
                try:
                    (held,) = await apply([change])
                except StoreError as exc:
                    if attempt == self.max_tries - 1:
                        log.error(
                            "giving up writing the outcome of task %s: %s",
                            change.task_id,
                            exc,
                            extra=_extra(change),
                        )
                        done(exc)
                        break
                    log.warning(
                        "writing a task outcome failed, retrying in %.2fs: %s",
                        delay,
                        exc,
                        extra=_extra(change),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                else:
                    done(held)
                    break
        self._done(batch)


def _extra(change: Change) -> dict[str, Any]:
    """Log fields of a record about ``change`` (see :mod:`tideflow.logs`)."""
    fields: dict[str, Any] = {"task_id": change.task_id}
    if change.fence is not None:
        fields["attempt"] = change.fence.attempt
        fields["worker_id"] = change.fence.worker_id
    return fields
