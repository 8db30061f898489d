"""Live updates: one change feed per dashboard, fanned out to every open page as server-sent
events.

The feed reads :meth:`TaskManager.get_change_mark` (a few lookups at the ends of primary keys)
once per ``interval`` seconds for all readers together, and at once (but at most once per
``min_gap`` seconds) when the database pushes a wake-up (PostgreSQL: LISTEN on the channels
the store NOTIFYs, through
:meth:`TaskManager.watch_changes`; there the poll is only a safety net, every
``pushed_interval`` seconds). So twenty open pages cost one mark read per interval, not twenty.

``GET /events/stream`` answers ``text/event-stream``: first ``event: hello`` with the current
mark, then ``event: change`` each time the mark moves, a comment every ``keepalive`` seconds,
and the stream ends after ``max_age`` seconds (the browser's EventSource reconnects by itself;
this bounds how long a server shutdown waits for open streams). The page's script
(``static/dashboard.js``) compares the mark with the one the page was rendered at, fetches the
page again and swaps its ``data-live`` regions in place, so a half-typed reason or a ticked
checkbox outside them stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

from tideflow.errors import TideflowError
from tideflow.manager import TaskManager

__all__ = ["ChangeFeed", "short_mark"]

log = logging.getLogger("tideflow.dashboard")


def short_mark(mark: str) -> str:
    """The mark as sent to browsers: a short digest (it says "something changed", nothing more)."""
    return hashlib.sha256(mark.encode()).hexdigest()[:16]


class ChangeFeed:
    """The change mark of one manager, read once for every subscriber.

    ``interval``: seconds between two reads of the mark while someone listens and the database
    does not push; ``pushed_interval``: the same where it does (a wake-up reads it at once).
    ``keepalive``: seconds between two comments on an idle stream; ``max_age``: seconds a
    stream lasts before the browser is asked to reconnect. ``min_gap``: seconds at least
    between two reads, pushed or not: a busy PostgreSQL notifies once per transaction,
    hundreds of times a second, and the wake-ups in between are folded into the next read
    (with 20 readers, reading at each one took 14% off a same-database drain).
    """

    def __init__(
        self,
        tm: TaskManager,
        *,
        interval: float = 1.0,
        pushed_interval: float = 5.0,
        keepalive: float = 15.0,
        max_age: float = 60.0,
        min_gap: float = 1.0,
    ) -> None:
        self._tm = tm
        self.min_gap = min_gap
        self.interval = interval
        self.pushed_interval = pushed_interval
        self.keepalive = keepalive
        self.max_age = max_age
        self._mark = ""
        self._version = 0
        self._subscribers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._poke: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: how many times the mark was read (tests and benchmarks count it)
        self.reads = 0

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def current(self) -> str | None:
        """The latest mark read while streams are open (None otherwise): what a page may key a
        cache on, so readers refreshing after the same change share one computation."""
        return self._mark if self._subscribers > 0 and self._mark else None

    def _bind(self) -> None:
        """Attach to the running loop (a new loop, as in tests, starts afresh)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._changed = asyncio.Event()
            self._poke = asyncio.Event()
            self._task = None
        if self._task is None or self._task.done():
            self._mark = ""  # read afresh: it was not followed while nobody listened
            self._task = loop.create_task(self._run(), name="tideflow-change-feed")

    async def _read(self) -> str:
        self.reads += 1
        return await run_in_threadpool(self._tm.get_change_mark)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        poke = self._poke
        assert poke is not None

        def wake() -> None:  # from the store's listener thread
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(poke.set)

        unwatch: Callable[[], None] | None = None
        try:
            unwatch = await run_in_threadpool(self._tm.watch_changes, wake)
        except TideflowError as exc:
            log.warning("dashboard live updates: no push channel (%s); polling", exc)
        interval = self.interval if unwatch is None else self.pushed_interval
        try:
            while self._subscribers > 0:
                poke.clear()
                read_at = loop.time()
                try:
                    mark = await self._read()
                except TideflowError as exc:
                    log.warning("dashboard live updates: reading the change mark failed: %s", exc)
                else:
                    if mark != self._mark:
                        self._mark = mark
                        self._version += 1
                        changed, self._changed = self._changed, asyncio.Event()
                        if changed is not None:
                            changed.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), interval)
                gap = self.min_gap - (loop.time() - read_at)
                if gap > 0 and self._subscribers > 0:
                    await asyncio.sleep(gap)  # wake-ups meanwhile: one read after it
        finally:
            if unwatch is not None:
                await run_in_threadpool(unwatch)

    async def mark(self) -> str:
        """The current mark, short (read now if no stream keeps it fresh)."""
        if self._subscribers == 0 or not self._mark:
            return short_mark(await self._read())
        return short_mark(self._mark)

    async def stream(self) -> AsyncIterator[bytes]:
        """The event stream of one browser tab."""
        self._subscribers += 1
        try:
            self._bind()
            loop = asyncio.get_running_loop()
            if not self._mark:
                self._mark = await self._read()
            seen = self._version
            yield _event("hello", short_mark(self._mark), retry=2000)
            ends = loop.time() + self.max_age
            while True:
                left = ends - loop.time()
                if left <= 0:
                    yield _event("bye", "reconnect")
                    return
                changed = self._changed
                assert changed is not None
                if self._version == seen:
                    try:
                        await asyncio.wait_for(changed.wait(), min(self.keepalive, left))
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                if self._version != seen:
                    seen = self._version
                    yield _event("change", short_mark(self._mark))
        finally:
            self._subscribers -= 1
            if self._subscribers == 0 and self._poke is not None:
                self._poke.set()  # let the reader see it is alone and stop


def _event(name: str, data: str, retry: int | None = None) -> bytes:
    head = f"retry: {retry}\n" if retry is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n".encode()
