"""The executor's parts: sync handlers on threads, and one timer for every deadline.

Two speed tricks live here, each for a cost the hot path paid once per task:

- **Handler threads with batched hand-back** (:class:`HandlerThreads`). A sync handler used to
  run through ``loop.run_in_executor`` and an ``asyncio.wait`` for its deadline: per task an
  asyncio Task, a concurrent future chained to an asyncio future, a timer, and one
  ``call_soon_threadsafe`` (a write to the loop's wake-up pipe) when it returned. Outcomes
  trickled back one at a time, so the claim loop wrote them in small batches, and a no-op drain
  with ``def`` handlers ran at 0.6x the speed of ``async def``. Here a fixed set of threads
  (grown on demand up to the attempts running at once, which the worker's slots bound) takes
  jobs from one queue; a thread that returns appends ``(job, value, error)`` to one deque and
  wakes the loop only when no wake-up is pending already, so the loop takes every outcome
  that arrived meanwhile in one call.
- **One timer for all deadlines** (:class:`Deadlines`): a heap of deadlines and one
  ``call_at`` for the earliest, instead of one ``asyncio.timeout`` (a timer and its
  cancellation) per attempt.

Both take the clock they are given (``time.monotonic`` by default), so tests move time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["Deadlines", "HandlerThreads", "Returned"]

J = TypeVar("J")
K = TypeVar("K", bound=Hashable)

#: one sync handler's return: (job, value, error); error is None when it returned normally
Returned = tuple[J, Any, BaseException | None]


class HandlerThreads(Generic[J]):
    """Runs blocking calls on threads and hands their results to the event loop in batches.

    ``on_returned`` is called on the loop's thread with every call that returned since the last
    batch, in the order they returned. Threads are daemons (a handler that never returns must
    not keep the process alive) and are started lazily: one more whenever more calls are
    outstanding than threads exist, so their number is the largest number of calls outstanding
    at once, never more.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_returned: Callable[[list[Returned[J]]], None],
        *,
        name: str = "tideflow-handler",
    ) -> None:
        self._loop = loop
        self._on_returned = on_returned
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[J, Callable[[], Any]] | None] = queue.SimpleQueue()
        self._returned: collections.deque[Returned[J]] = collections.deque()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # submitted and not yet handed back (touched on the loop only)
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Calls submitted whose return has not been handed back yet."""
        return self._outstanding

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    def submit(self, job: J, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on a handler thread; ``job`` comes back with its result. Loop thread
        only."""
        if self._closed:
            raise RuntimeError("handler threads are shut down")
        self._outstanding += 1
        if self._outstanding > len(self._threads):
            thread = threading.Thread(
                target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._jobs.put((job, fn))

    def _run(self) -> None:
        jobs, returned = self._jobs, self._returned
        while True:
            item = jobs.get()
            if item is None:
                return
            job, fn = item
            try:
                value, error = fn(), None
            except BaseException as exc:  # the handler's own; handed back like a return
                value, error = None, exc
            del item, fn
            returned.append((job, value, error))
            # appended before the flag is read: a batch that cleared the flag already will
            # still see this one, or this thread sees the flag clear and wakes the loop itself
            if not self._wake_pending:
                self._wake_pending = True
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._hand_back)
            del job, value, error

    def _hand_back(self) -> None:
        self._wake_pending = False
        returned = self._returned
        batch: list[Returned[J]] = []
        while returned:
            batch.append(returned.popleft())
        if batch:
            self._outstanding -= len(batch)
            self._on_returned(batch)

    def shutdown(self) -> None:
        """Let idle threads end; calls still running end on their own (threads are daemons)."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)


class Deadlines(Generic[K]):
    """Calls ``on_expired(key)`` once each watched key's deadline has passed, with one loop
    timer for the earliest deadline of all.

    A key is watched from :meth:`watch` until it expires or :meth:`forget` drops it. Forgotten
    entries stay in the heap until they come up (cheaper than removing them), so the heap is
    rebuilt from the live keys when it grows past twice their number.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_expired: Callable[[K], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._on_expired = on_expired
        self._clock = clock
        self._live: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._live)

    def watch(self, key: K, deadline: float) -> None:
        """Expire ``key`` at ``deadline`` (on the clock given)."""
        self._live[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(d, next(self._seq), k) for k, d in self._live.items()]
            heapq.heapify(self._heap)
        self._arm()

    def forget(self, key: K) -> None:
        """Stop watching ``key`` (it finished in time)."""
        self._live.pop(key, None)

    def run_due(self) -> None:
        """Expire every key whose deadline has passed, then arm the timer for the next."""
        self._timer = None
        now = self._clock()
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if live.get(key) == deadline:
                del live[key]
                self._on_expired(key)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # forgotten or re-watched: drop it now
        if not heap:
            return
        when = self._loop.time() + (heap[0][0] - self._clock())
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self.run_due)
