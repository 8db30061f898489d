"""Group commit: attempt outcomes queue up and are written in small fenced batches.

Each change keeps its own compare-and-set guard, so batching never weakens fencing; a batch is one
transaction. A database error is retried with backoff; nothing queued is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from tideflow.core.types import Change
from tideflow.errors import StoreError

__all__ = ["Completer"]

log = logging.getLogger("tideflow.worker")

ApplyFn = Callable[[Sequence[Change]], Awaitable[list[bool]]]


class Completer:
    """Batches :class:`Change` writes from many attempts into few transactions."""

    #: single-change attempts before an outcome is given up (about a minute of backoff)
    max_tries = 16

    def __init__(self, apply: ApplyFn, *, max_batch: int = 512) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Change, asyncio.Future[bool]]] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, change: Change) -> asyncio.Future[bool]:
        """Queue ``change``; the future says whether its guard held."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._idle.clear()
        self._queue.put_nowait((change, future))
        return future

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while not (self._queue.empty() and self._idle.is_set()):
            await self._idle.wait()

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            if self._queue.empty():
                self._idle.set()

    async def _write(self, batch: list[tuple[Change, asyncio.Future[bool]]]) -> None:
        delay = 0.05
        for attempt in range(self.max_tries):
            try:
                results = await self._apply([c for c, _ in batch])
                break
            except StoreError as exc:
                if len(batch) > 1:
                    # one bad change must not hold back the others: write them one by one
                    for item in batch:
                        await self._write([item])
                    return
                if attempt == self.max_tries - 1:
                    log.error(
                        "giving up writing the outcome of task %s: %s", batch[0][0].task_id, exc
                    )
                    if not batch[0][1].done():
                        batch[0][1].set_exception(exc)
                    return
                log.warning("writing a task outcome failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for (_, future), held in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(held)
