"""The producer: the worker's claim loop, its slots and the rows it claimed ahead.

It keeps the worker's slots full. Each round it writes the outcomes the completer has queued and
claims work for the free slots in one transaction (``Store.exchange``), then hands each claimed
row to the worker's ``launch`` as a slot frees. It never runs a handler and never decides a
status: a row it cannot keep is handed back through ``lifecycle.recover``.

Its speed tricks live here, each named and explained once:

- **Parallel exchanges** (``_run``): up to ``Store.parallel_exchanges`` exchanges on their way at
  once, each claiming its share of the slots, so one batch's handlers run while the next batch
  is on its way; an idle worker claims one at a time.
- **Gathering outcomes** (``_worth_another``): while an exchange is on its way, another starts
  only with half the slots' worth of work for it.
- **Prefetch** (``_adapt_prefetch``): claims ahead of the free slots when the slots turn over
  faster than claims arrive.
- **Idle sleep** (``_idle_wait``): on a store that wakes its workers, an idle worker sleeps until
  the earliest waiting task falls due.

The producer is given its clocks (``clock``: the database's time; ``monotonic``: for waits) and
everything it calls, so its tests run it against a recording fake store.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tideflow.core import lifecycle
from tideflow.core.options import ManagerSettings
from tideflow.core.registry import Registry
from tideflow.core.types import ClaimRequest, TaskRow
from tideflow.store.protocol import Store
from tideflow.worker.completer import Completer, Item

__all__ = ["PREFETCH_MAX", "SAFETY_POLL", "Gate", "Producer", "row_key"]

log = logging.getLogger("tideflow.worker")

#: the most tasks a worker claims ahead of its free slots (see ``Producer._adapt_prefetch``)
PREFETCH_MAX = 200

#: on a store with a push channel (PostgreSQL NOTIFY), the longest an idle worker sleeps
#: without a wake-up before it claims again (see ``Producer._idle_wait``)
SAFETY_POLL = 30.0

DbFn = Callable[..., Awaitable[Any]]


def row_key(row: TaskRow) -> tuple[int, int]:
    """(task id, attempt) of a row."""
    return row.id, row.attempt


@dataclasses.dataclass
class Gate:
    """What the worker's state allows the producer; the worker sets the flags."""

    paused: bool = False  # claim nothing; running and waiting rows go on
    stopping: bool = False  # claim and start nothing more
    fenced: bool = False  # superseded or dead by its own row: hold no claim
    out_of_contact: bool = False  # self-fenced after missed heartbeats: hold no claim

    @property
    def holds_claims(self) -> bool:
        """Claimed rows may be kept: the worker is neither fenced nor out of contact."""
        return not (self.fenced or self.out_of_contact)

    @property
    def may_start(self) -> bool:
        """Waiting rows may start."""
        return self.holds_claims and not self.stopping

    @property
    def may_claim(self) -> bool:
        """New work may be claimed."""
        return self.may_start and not self.paused


class Producer:
    """Claims work for a worker's slots and starts it as slots free (see the module doc)."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Callable[[], ManagerSettings],
        completer: Completer,
        *,
        worker_id: str,
        gate: Gate,
        launch: Callable[[TaskRow], bool],
        db: DbFn,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        inflight: set[tuple[int, int]] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._completer = completer
        self._worker_id = worker_id
        self._gate = gate
        self._launch = launch  # True when the row took a slot
        self._db = db
        self._clock = clock
        self._monotonic = monotonic
        # (task id, attempt) this worker owns on purpose; claimed rows join it here
        self.inflight: set[tuple[int, int]] = inflight if inflight is not None else set()
        self.pushed = False  # the store wakes this worker when work may be due (subscribe)
        self._wake = asyncio.Event()
        self._closing = False
        self._exchanges: dict[asyncio.Task[bool], bool] = {}  # exchange -> whether it claims
        self._parallel = max(1, store.parallel_exchanges)
        self._reserved = 0  # slots promised to claims on their way
        self._reserved_by_name: dict[str, int] = {}
        self.occupied = 0  # slots taken by started attempts
        self._by_name: dict[str, int] = {}  # started or waiting rows, per task name
        self._freed = 0  # slots freed so far (how fast the slots turn over)
        # Prefetch: claimed rows waiting for a slot, in claim order (see _adapt_prefetch).
        self._ready: collections.deque[TaskRow] = collections.deque()
        self._prefetch = 0

    # --- what the worker calls ------------------------------------------------------------------
    def poke(self) -> None:
        """Wake the claim loop now (a submit, a freed slot, a queued outcome)."""
        self._wake.set()

    def close(self) -> None:
        """Let :meth:`run` return once the exchanges on their way have landed."""
        self._closing = True
        self._wake.set()

    @property
    def waiting(self) -> int:
        """Claimed rows waiting for a slot."""
        return len(self._ready)

    async def claims_landed(self) -> None:
        """Return once no claim is on its way (what it took is started or waiting)."""
        trips = [t for t, claims in self._exchanges.items() if claims]
        if trips:
            await asyncio.wait(trips)

    async def exchanges_landed(self) -> None:
        """Return once no exchange is on its way."""
        if self._exchanges:
            await asyncio.wait(list(self._exchanges))

    def slot_freed(self, name: str) -> None:
        """An attempt of ``name`` gave its slot back: start a waiting row, claim again."""
        self.occupied -= 1
        self._freed += 1
        self._by_name[name] -= 1
        self.start_ready()
        self.poke()

    def start_ready(self) -> None:
        """Start waiting claimed rows while slots are free."""
        ready = self._ready
        if not ready or not self._gate.may_start:
            return
        limit = self._settings().max_concurrent_tasks
        while ready and self.occupied < limit:
            row = ready.popleft()
            if self._launch(row):
                self.occupied += 1
            else:
                self._by_name[row.name] -= 1

    def give_back_ready(self, reason: str | None) -> None:
        """Rows waiting for a slot: given back with ``reason`` (released at once), or with None
        only forgotten (out of contact: they are released as orphaned claims later)."""
        now = self._clock()
        while self._ready:
            row = self._ready.popleft()
            self._by_name[row.name] -= 1
            self.inflight.discard(row_key(row))
            if reason is not None:
                self._completer.put(lifecycle.recover(row, now, self._worker_id, reason))
        self._prefetch = 0

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Write queued outcomes and claim new work until :meth:`close`.

        While the last claim came back short (an idle queue), one claim at a time: a poll or a
        poke of an idle worker is one transaction, not one per parallel exchange.
        """
        idle_until = 0.0  # after a claim came back short, only a poke claims again before this
        short = True  # the last claim that landed came back short
        while not self._closing:
            poll = self._settings().poll_interval
            self._wake.clear()
            while len(self._exchanges) < self._parallel:
                request = None
                if self._gate.may_claim and self._monotonic() >= idle_until:
                    request = self._claim_request(self._clock())
                if request is not None and short and any(self._exchanges.values()):
                    request = None  # idle: one claim at a time
                if request is None and not self._completer.pending():
                    break
                if self._exchanges and not self._worth_another(request):
                    break  # the exchange on its way wakes the loop when it lands
                if request is not None:
                    self._reserve(request, 1)  # now: the next request must see it
                trip = asyncio.create_task(
                    self._trip(self._completer.take(), request), name="tideflow-exchange"
                )
                self._exchanges[trip] = request is not None
            waiter = asyncio.ensure_future(self._wake.wait())
            timeout = max(0.001, idle_until - self._monotonic()) if idle_until else poll
            try:
                done, _ = await asyncio.wait(
                    [*self._exchanges, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
            came_back_short = False
            for trip in done & self._exchanges.keys():
                claimed = self._exchanges.pop(trip)
                if trip.cancelled() or trip.exception() is not None:
                    log.error("an exchange failed", exc_info=trip.exception())
                    idle_until = self._monotonic() + poll
                elif trip.result():
                    idle_until = self._monotonic() + poll
                    short = short or claimed
                    came_back_short = came_back_short or claimed
                elif claimed:
                    short = False
            if waiter in done or not done:
                idle_until = 0.0  # poked (a submit, a freed slot) or the poll came round
            elif came_back_short and self.pushed and not self._exchanges:
                wait = await self._idle_wait(poll)
                # a wake-up that came while next_due() was on its way must not be lost
                idle_until = 0.0 if self._wake.is_set() else self._monotonic() + wait
        await self.exchanges_landed()

    def _claim_request(self, now: float) -> ClaimRequest | None:
        settings = self._settings()
        room = settings.max_concurrent_tasks + self._prefetch
        share = -(-room // self._parallel)
        free = min(share, room - self.occupied - len(self._ready) - self._reserved)
        if free <= 0:
            return None
        names: dict[str, int | None] = {}
        for name, reg in self._registry.snapshot().items():
            cap = reg.max_concurrent
            if cap is None:
                names[name] = None
            else:
                left = cap - self._by_name.get(name, 0) - self._reserved_by_name.get(name, 0)
                if left > 0:
                    names[name] = min(left, free)
        if not names:
            return None
        return ClaimRequest(
            worker_id=self._worker_id,
            now=now,
            limit=free,
            names=names,
            capabilities=frozenset(settings.capabilities),
            plan=lifecycle.claim(self._worker_id, now),
        )

    def _worth_another(self, request: ClaimRequest | None) -> bool:
        """Gathering outcomes: whether to start an exchange while another is on its way: only
        with at least half the slots' worth of outcomes queued or of rows to claim.

        Sync handlers return one at a time, each freeing a slot and waking the loop: starting
        an exchange at each wake-up sent many transactions of one or two outcomes each (the
        worker paid a database round trip per few tasks; a no-op drain with 10 slots ran at
        0.5x of ``async def``). Outcomes that arrive while an exchange is on its way wait for
        it to land (at most one round trip) and go together; the exchange that lands wakes the
        loop again.
        """
        gather = max(1, self._settings().max_concurrent_tasks // 2)
        if request is not None and request.limit >= gather:
            return True
        return self._completer.queued() >= gather

    async def _idle_wait(self, poll: float) -> float:
        """Idle sleep: how long an idle worker on a store with a push channel sleeps before it
        claims again.

        The store wakes it when a transaction makes a task claimable (``subscribe``), so after
        a short claim it needs to look again only when the earliest waiting task falls due
        (``next_due()``, one read), or after ``SAFETY_POLL`` at the latest (a missed wake-up,
        a task another worker could not take). ``poll_interval`` stays the wait of stores
        without a push channel, and of a failed read.
        """
        try:
            due = await self._db(self._store.next_due)
        except Exception as exc:
            log.debug("next_due() failed, polling: %s", exc)
            return poll
        wait = max(poll, SAFETY_POLL)
        if due is not None:
            wait = min(wait, due - self._clock())
        return max(0.001, wait)

    def _reserve(self, request: ClaimRequest, sign: int) -> None:
        self._reserved += sign * request.limit
        for name, cap in request.names.items():
            if cap is not None:
                self._reserved_by_name[name] = self._reserved_by_name.get(name, 0) + sign * cap

    async def _trip(self, batch: list[Item], request: ClaimRequest | None) -> bool:
        """One exchange; True when its claim came back short (no more due work for now)."""
        freed = self._freed
        try:
            rows = await self._exchange(batch, request)
        finally:
            if request is not None:
                self._reserve(request, -1)
        if rows is None:
            return True
        if rows and not self._gate.holds_claims:
            # claimed just before this worker was fenced off: give them back at once
            now = self._clock()
            for row in rows:
                self._completer.put(lifecycle.recover(row, now, self._worker_id, "worker fenced"))
            return True
        if request is not None:
            self._adapt_prefetch(len(rows) >= request.limit, self._freed - freed >= request.limit)
        for row in rows:
            self._ready.append(row)
            self.inflight.add(row_key(row))
            self._by_name[row.name] = self._by_name.get(row.name, 0) + 1
        self.start_ready()
        return request is not None and len(rows) < request.limit

    def _adapt_prefetch(self, full: bool, turned_over: bool) -> None:
        """Prefetch: claim ahead of the free slots while they turn over faster than claims
        arrive.

        A worker with few slots and fast handlers spends its time waiting for claims: with 10
        slots and an exchange of 3 ms it could not run more than 3,300 tasks/s, and each
        transaction carried 5 tasks. So when a claim came back full after at least as many
        handlers as it asked for had finished during its round trip, the next claims ask for up
        to ``_prefetch`` rows beyond the free slots (doubling, up to ``PREFETCH_MAX``); the rows
        wait in ``_ready`` and start as slots free. A claim that comes back short (no more due
        work) ends it at once; one that lands while rows still wait halves it, so slow handlers
        never gather a backlog. Waiting rows are owned (heartbeated, in ``inflight``) and count
        against per-type limits; when the worker stops, is fenced or loses contact they are
        given back, never started.
        """
        if not full:
            self._prefetch = 0
        elif self._ready:
            self._prefetch //= 2
        elif turned_over:
            self._prefetch = min(
                PREFETCH_MAX, max(self._settings().max_concurrent_tasks, 2 * self._prefetch)
            )

    async def _exchange(
        self, batch: list[Item], request: ClaimRequest | None
    ) -> list[TaskRow] | None:
        """One transaction: write ``batch``, then claim; None when it failed."""
        try:
            result: tuple[list[bool], list[TaskRow]] = await self._db(
                self._store.exchange, [change for change, _ in batch], request
            )
        except Exception as exc:
            log.warning("writing outcomes or claiming failed, retrying: %s", exc)
            if batch:
                await self._completer.write_each(
                    batch, lambda changes: self._db(self._store.apply, changes)
                )
            return None
        held, rows = result
        self._completer.resolve(batch, held)
        return rows
