"""The worker: claim loop, executors, heartbeats, timeouts and graceful stop.

A worker runs one asyncio event loop in a background thread. Async handlers run on that loop;
sync handlers run on handler threads (:mod:`tideflow.worker.executor`). Store calls run in a
small store thread pool so a slow write never blocks the loop. The worker never builds SQL and
never picks a status: it asks :mod:`tideflow.core.lifecycle` for each change and hands it to the
store."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tideflow.core import codec, cron, lifecycle, workflow
from tideflow.core.options import ManagerSettings
from tideflow.core.registry import Registration, Registry
from tideflow.core.types import Change, ClaimRequest, TaskRow, WorkerRow
from tideflow.errors import OwnershipLostError, TaskTimeoutError
from tideflow.store.protocol import Store
from tideflow.worker.completer import Completer, Item
from tideflow.worker.executor import Deadlines, HandlerThreads, Returned
from tideflow.worker.maintenance import MAINTENANCE_LEASE, Maintenance
from tideflow.worker.task import AttemptState, Next, Suspend, Task

__all__ = ["Worker"]

log = logging.getLogger("tideflow.worker")

R = TypeVar("R")

#: a worker whose last successful heartbeat started longer ago than this fraction of
#: ``worker_heartbeat_timeout`` stops its attempts: others may judge it dead at the full timeout
SELF_FENCE_FRACTION = 0.5

#: the most tasks a worker claims ahead of its free slots (see ``Worker._prefetch``)
PREFETCH_MAX = 200

#: on a store with a push channel (PostgreSQL NOTIFY), the longest an idle worker sleeps
#: without a wake-up before it claims again (see ``Worker._idle_wait``)
SAFETY_POLL = 30.0


_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(concurrent.futures.__file__),
    os.path.dirname(asyncio.__file__),
)


def row_key(row: TaskRow) -> tuple[int, int]:
    """(task id, attempt) of a row."""
    return row.id, row.attempt


def format_error(exc: BaseException) -> str:
    """``Type: message`` on the first line, then the traceback without the worker's own frames."""
    head = f"{type(exc).__name__}: {exc}"
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_INTERNAL)
    ]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(exc)
    return head + "\n" + "".join(lines).rstrip()


@dataclasses.dataclass(eq=False)
class Attempt:
    """One running attempt and what the worker tracks about it."""

    row: TaskRow
    registration: Registration
    task: Task
    state: AttemptState
    runner: asyncio.Task[None] | None = None  # an async handler's coroutine
    abandoned: bool = False
    finished: bool = False  # its outcome is decided (queued, or dropped)
    returned: bool = False  # its handler has returned: the slot can be freed
    settled: bool = False  # its slot is free


class Worker:
    """Runs the tasks of one manager until stopped."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Callable[[], ManagerSettings],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._rng = rng or random.Random()
        self.worker_id = settings().worker_id
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._closing = False
        self._exchanges: dict[asyncio.Task[bool], bool] = {}  # exchange -> whether it claims
        self._parallel = max(1, store.parallel_exchanges)
        self._reserved = 0  # slots promised to claims on their way
        self._reserved_by_name: dict[str, int] = {}
        self._stop_timeout = 30.0
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._paused = False
        self._stopping = False
        self._fenced = False  # this worker's row says superseded or dead: claim nothing
        self._active: dict[int, Attempt] = {}
        self._occupied = 0
        # Prefetch: claimed rows waiting for a slot. A worker with few slots and fast handlers
        # spends its time waiting for claims: with 10 slots and an exchange of 3 ms it could not
        # run more than 3,300 tasks/s, and each transaction carried 5 tasks. So when a claim
        # came back full after at least as many handlers as it asked for had finished during
        # its round trip (the slots turn over faster than claims arrive), the next claims ask
        # for up to ``_prefetch`` rows beyond the free slots (doubling, up to PREFETCH_MAX); the
        # rows wait here in claim order and start as slots free. A claim that comes back short
        # (no more due work) ends it at once; one that lands while rows still wait here halves
        # it, so slow handlers never gather a backlog. Waiting rows are owned (heartbeated, in
        # ``_inflight``) and count against per-type limits; when the worker stops, is fenced or
        # loses contact they are given back, never started.
        self._ready: collections.deque[TaskRow] = collections.deque()
        self._prefetch = 0
        self._freed = 0  # slots freed so far (how fast the slots turn over)
        self._by_name: dict[str, int] = {}
        self._db_pool = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="tideflow-db")
        self._sweeper = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="tideflow-maintenance"
        )
        self._maint = Maintenance(
            store,
            self.worker_id,
            settings,
            clock=self._now,
            rng=self._rng,
            on_recovered=self.notify,
        )
        self._offset = 0.0  # the database's clock minus this host's, as last measured
        self._contact = time.monotonic()  # when the last successful worker heartbeat started
        self._out_of_contact = False  # self-fenced: no heartbeat for too long
        self._registered_version = -1
        self._beat: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._emptied: asyncio.Event | None = None  # set whenever no attempt is running
        # (task id, attempt) whose row this worker still owns on purpose: running, or with an
        # outcome queued but not yet written; anything else it owns is an orphan
        self._inflight: set[tuple[int, int]] = set()
        self._pushed = False  # the store wakes this worker when work may be due (subscribe)

    # --- control from other threads ------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread; returns once the worker is registered."""
        self._thread = threading.Thread(
            target=self._thread_main, name=f"tideflow-worker-{self.worker_id}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float) -> None:
        """Stop claiming, give running attempts ``timeout`` seconds, release the rest."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        self._stop_timeout = max(0.0, timeout)

        def request() -> None:
            self._stopping = True
            if self._stop_requested is not None:
                self._stop_requested.set()
            self._poke()

        loop.call_soon_threadsafe(request)
        thread.join()
        self._db_pool.shutdown(wait=True)
        self._sweeper.shutdown(wait=True)
        self._maint.close()  # a retention sweep stops after its batch

    def pause(self) -> None:
        """Stop claiming (running attempts go on); returns once no claim of this worker is
        still on its way (what such a claim took is started)."""
        self._paused = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread:
            return
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(self._claims_landed(), loop).result(
                self._settings().worker_heartbeat_timeout
            )

    async def _claims_landed(self) -> None:
        trips = [t for t, claims in self._exchanges.items() if claims]
        if trips:
            await asyncio.wait(trips)

    def resume(self) -> None:
        """Claim again after :meth:`pause`."""
        self._paused = False
        self.notify()

    def refresh(self) -> None:
        """Settings or task ownership changed: re-register and check ownership soon."""
        self._registered_version = -1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._beat_now)
        self.notify()

    def _beat_now(self) -> None:
        if self._beat is not None:
            self._beat.set()

    def notify(self) -> None:
        """Wake the claim loop now (e.g. after a submit in this process)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported to start() or logged
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                log.exception("tideflow worker %s crashed", self.worker_id)

    async def _db(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, fn, *args)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._beat = asyncio.Event()
        self._completer = Completer(self._poke)
        self._emptied = asyncio.Event()
        self._threads: HandlerThreads[Attempt] = HandlerThreads(self._loop, self._returned)
        self._deadlines: Deadlines[Attempt] = Deadlines(self._loop, self._expire)
        try:
            self._offset = await self._db(self._store.sync_clock)
            await self._register(self._settings())
            self._contact = time.monotonic()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        unsubscribe = self._store.subscribe(self.notify)
        self._pushed = unsubscribe is not None
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="tideflow-heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name="tideflow-maintenance"),
            asyncio.create_task(self._contact_watch(), name="tideflow-contact"),
        ]
        syncer = asyncio.create_task(self._sync_loop(), name="tideflow-sync")
        await self._stop_requested.wait()
        await self._shutdown()
        self._closing = True
        self._poke()
        await syncer
        if unsubscribe is not None:
            unsubscribe()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._deadlines.close()
        self._threads.shutdown()

    def _worker_row(self, now: float) -> WorkerRow:
        settings = self._settings()
        self._registered_version = self._registry.version
        return WorkerRow(
            worker_id=self.worker_id,
            pod_id=settings.pod_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            status="active",
            capabilities=json.dumps(list(settings.capabilities)),
            handlers=json.dumps(sorted(self._registry.snapshot())),
            concurrency=settings.max_concurrent_tasks,
            registered_at=now,
            last_seen_at=now,
            expires_at=now + settings.worker_heartbeat_timeout,
        )

    def _claim_request(self, now: float) -> ClaimRequest | None:
        settings = self._settings()
        room = settings.max_concurrent_tasks + self._prefetch
        share = -(-room // self._parallel)
        free = min(share, room - self._occupied - len(self._ready) - self._reserved)
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
            worker_id=self.worker_id,
            now=now,
            limit=free,
            names=names,
            capabilities=frozenset(settings.capabilities),
            plan=lifecycle.claim(self.worker_id, now),
        )

    async def _sync_loop(self) -> None:
        """Write queued outcomes and claim new work until the worker closes.

        Up to ``Store.parallel_exchanges`` exchanges (outcomes plus a claim, one transaction
        each) are on their way at once, each claiming at most its share of the slots: while one
        waits on the database, the handlers of the other's batch run and free their slots.
        While the last claim came back short (an idle queue), one claim at a time: a poll or a
        poke of an idle worker is one transaction, not one per parallel exchange.
        """
        assert self._wake is not None
        idle_until = 0.0  # after a claim came back short, only a poke claims again before this
        short = True  # the last claim that landed came back short
        while not self._closing:
            poll = self._settings().poll_interval
            self._wake.clear()
            while len(self._exchanges) < self._parallel:
                request = None
                if (
                    not (self._paused or self._stopping or self._fenced or self._out_of_contact)
                    and time.monotonic() >= idle_until
                ):
                    request = self._claim_request(self._now())
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
            try:
                done, _ = await asyncio.wait(
                    [*self._exchanges, waiter],
                    timeout=max(0.001, idle_until - time.monotonic()) if idle_until else poll,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
            came_back_short = False
            for trip in done & self._exchanges.keys():
                claimed = self._exchanges.pop(trip)
                if trip.cancelled() or trip.exception() is not None:
                    log.error("an exchange failed", exc_info=trip.exception())
                    idle_until = time.monotonic() + poll
                elif trip.result():
                    idle_until = time.monotonic() + poll
                    short = short or claimed
                    came_back_short = came_back_short or claimed
                elif claimed:
                    short = False
            if waiter in done or not done:
                idle_until = 0.0  # poked (a submit, a freed slot) or the poll came round
            elif came_back_short and self._pushed and not self._exchanges:
                wait = await self._idle_wait(poll)
                # a wake-up that came while next_due() was on its way must not be lost
                idle_until = 0.0 if self._wake.is_set() else time.monotonic() + wait
        if self._exchanges:
            await asyncio.wait(list(self._exchanges))

    def _worth_another(self, request: ClaimRequest | None) -> bool:
        """Whether to start an exchange while another is on its way: only with at least half
        the slots' worth of outcomes queued or of rows to claim.

        Sync handlers return one at a time, each freeing a slot and waking the loop: starting
        an exchange at each wake-up sent many transactions of one or two outcomes each (the
        worker paid a database round trip per few tasks; a no-op drain with 10 slots ran at
        0.5x of ``async def``). Outcomes that arrive while an exchange is on its way now wait
        for it to land (at most one round trip) and go together; the stop and flush paths are
        unchanged, as the exchange that lands wakes the loop again.
        """
        gather = max(1, self._settings().max_concurrent_tasks // 2)
        if request is not None and request.limit >= gather:
            return True
        return self._completer.queued() >= gather

    async def _idle_wait(self, poll: float) -> float:
        """How long an idle worker on a store with a push channel sleeps before it claims again.

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
            wait = min(wait, due - self._now())
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
        if rows and (self._fenced or self._out_of_contact):
            # claimed just before this worker was fenced off: give them back at once
            now = self._now()
            for row in rows:
                self._completer.put(lifecycle.recover(row, now, self.worker_id, "worker fenced"))
            return True
        if request is not None:
            self._adapt_prefetch(len(rows) >= request.limit, self._freed - freed >= request.limit)
        for row in rows:
            self._ready.append(row)
            self._inflight.add((row.id, row.attempt))
            self._by_name[row.name] = self._by_name.get(row.name, 0) + 1
        self._start_ready()
        return request is not None and len(rows) < request.limit

    def _adapt_prefetch(self, full: bool, turned_over: bool) -> None:
        """Grow the prefetch when a full claim lands after its worth of slots was freed, end it
        when a claim comes back short, halve it when rows were still waiting (see ``_ready``)."""
        if not full:
            self._prefetch = 0
        elif self._ready:
            self._prefetch //= 2
        elif turned_over:
            self._prefetch = min(
                PREFETCH_MAX, max(self._settings().max_concurrent_tasks, 2 * self._prefetch)
            )

    def _start_ready(self) -> None:
        """Start waiting claimed rows while slots are free."""
        ready = self._ready
        if not ready or self._stopping or self._fenced or self._out_of_contact:
            return
        limit = self._settings().max_concurrent_tasks
        while ready and self._occupied < limit:
            row = ready.popleft()
            self._by_name[row.name] -= 1
            self._launch(row)

    def _give_back_ready(self, reason: str | None) -> None:
        """Rows waiting for a slot: given back with ``reason`` (released at once), or with None
        only forgotten (out of contact: they are released as orphaned claims later)."""
        now = self._now()
        while self._ready:
            row = self._ready.popleft()
            self._by_name[row.name] -= 1
            self._inflight.discard(row_key(row))
            if reason is not None:
                self._completer.put(lifecycle.recover(row, now, self.worker_id, reason))
        self._prefetch = 0

    async def _exchange(
        self, batch: list[Item], request: ClaimRequest | None
    ) -> list[TaskRow] | None:
        """One transaction: write ``batch``, then claim; None when it failed."""
        try:
            held, rows = await self._db(
                self._store.exchange, [change for change, _ in batch], request
            )
        except Exception as exc:
            log.warning("writing outcomes or claiming failed, retrying: %s", exc)
            if batch:
                await self._completer.write_each(
                    batch, lambda changes: self._db(self._store.apply, changes)
                )
            return None
        self._completer.resolve(batch, held)
        return rows

    def _launch(self, row: TaskRow) -> None:
        reg = self._registry.get(row.name)
        state = AttemptState(time.monotonic() + row.timeout)
        if reg is None:  # unregistered between the claim and now: give it back
            self._inflight.discard(row_key(row))
            change = lifecycle.recover(row, self._now(), self.worker_id, "handler unregistered")
            self._completer.put(change)
            return
        try:
            task = Task(
                row,
                result=self._initial_result(row),
                state=state,
                write=self._store.append_event,
                enqueue=functools.partial(self._enqueue_event, state),
                clock=self._now,
            )
        except Exception as exc:  # e.g. a stored payload that cannot be decoded
            log.error("task %s (%s) cannot be started: %s", row.id, row.name, exc)
            self._inflight.discard(row_key(row))
            self._completer.put(lifecycle.fail(row, format_error(exc), self._now(), self._rng))
            return
        attempt = Attempt(row=row, registration=reg, task=task, state=state)
        self._active[row.id] = attempt
        self._occupied += 1
        self._by_name[row.name] = self._by_name.get(row.name, 0) + 1
        self._deadlines.watch(attempt, state.deadline)
        if reg.is_async:
            attempt.runner = asyncio.create_task(self._execute(attempt), name=f"tideflow-{row.id}")
            self._tasks.add(attempt.runner)
        else:
            args = (task, task.next) if reg.takes_next else (task,)
            self._threads.submit(attempt, functools.partial(reg.handler, *args))

    def _enqueue_event(self, state: AttemptState, change: Change) -> None:
        """Queue a progress or checkpoint event of a running attempt for the next group commit;
        if its fence does not hold, the attempt learns it has lost the task."""
        if threading.current_thread() is not self._thread:  # not on the worker's loop
            if self._store.append_event(change) is None:
                state.lost = True
            return

        def written(held: bool | BaseException) -> None:
            if held is False:
                state.lost = True
            elif isinstance(held, BaseException):
                log.warning("an event of task %s was not written: %s", change.task_id, held)

        self._completer.put(change, written)

    # --- deadlines and returns of handlers ---------------------------------------------------
    def _expire(self, a: Attempt) -> None:
        """``a`` is past its deadline: an async handler is cancelled (its coroutine writes the
        timeout); a sync one is told through ``check_timeout()``, its timeout is written now
        and its slot stays taken until it returns."""
        if self._active.get(a.row.id) is not a or a.finished:
            return
        a.state.timed_out = True
        if a.runner is not None:
            if not a.runner.done():
                a.runner.cancel()
        else:
            self._finish(a, None, None, True)

    def _returned(self, batch: list[Returned[Attempt]]) -> None:
        """Sync handlers that returned since the last batch (see ``HandlerThreads``)."""
        for a, value, error in batch:
            a.returned = True
            if a.finished:  # timed out or abandoned before it returned
                self._free_slot(a)
            else:
                self._finish(a, value, error, False)

    def _initial_result(self, row: TaskRow) -> Any:
        if row.stage > 0 and row.total_children > 0:
            children = self._store.children_of_round(row.id, row.stage - 1, row.total_children)
            if children:
                return workflow.child_results(children)
        if row.type == "cron":
            return codec.decode(row.result)
        return None

    def _free_slot(self, attempt: Attempt) -> None:
        if attempt.settled:
            return
        attempt.settled = True
        self._occupied -= 1
        self._freed += 1
        self._by_name[attempt.row.name] -= 1
        self._start_ready()
        self._poke()

    async def _execute(self, a: Attempt) -> None:
        """Run an async handler; cancelled by ``_expire`` at its deadline."""
        reg, task = a.registration, a.task
        args = (task, task.next) if reg.takes_next else (task,)
        value: Any = None
        error: BaseException | None = None
        timed_out = False
        if a.state.deadline <= time.monotonic():
            timed_out = True  # already past its deadline when its turn came
        else:
            try:
                value = await reg.handler(*args)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                assert current is not None
                if a.state.timed_out and current.cancelling() == 1 and not a.abandoned:
                    current.uncancel()
                    timed_out = True  # cancelled by the deadline watch (_expire)
                elif current.cancelling():
                    if not a.abandoned:
                        raise  # the worker itself is being torn down
                else:
                    error = exc  # raised by the handler itself: a failure like any other
            except Exception as exc:
                error = exc
        a.returned = True
        self._finish(a, value, error, timed_out)

    def _finish(self, a: Attempt, value: Any, error: BaseException | None, timed_out: bool) -> None:
        """Decide and queue ``a``'s outcome (once); free its slot if its handler returned."""
        if a.finished:
            return
        a.finished = True
        self._deadlines.forget(a)
        self._active.pop(a.row.id, None)
        if not self._active and self._emptied is not None:
            self._emptied.set()
        if a.runner is not None:
            self._tasks.discard(a.runner)
        key = row_key(a.row)
        change = None if a.abandoned else self._outcome(a, value, error, timed_out)
        if change is None:
            self._inflight.discard(key)
        else:
            self._completer.put(change, lambda held: self._written(key, held))
        if a.returned:
            self._free_slot(a)

    def _written(self, key: tuple[int, int], held: bool | BaseException) -> None:
        self._inflight.discard(key)
        if held is False:
            log.info("the outcome of task %s attempt %s was fenced off", *key)

    def _outcome(
        self, a: Attempt, value: Any, error: BaseException | None, timed_out: bool
    ) -> Change | None:
        row, settings = a.row, self._settings()
        now = self._now()
        if timed_out:
            a.state.timed_out = True
            message = (
                f"TaskTimeoutError: task {row.id} ({row.name}) ran past its timeout"
                f" of {row.timeout:g} s"
            )
            return lifecycle.fail(row, message, now, self._rng, timed_out=True)
        if isinstance(error, OwnershipLostError):
            log.info("task %s attempt %s lost ownership; its outcome is dropped", *row_key(row))
            return None
        if isinstance(error, TaskTimeoutError):
            return lifecycle.fail(row, format_error(error), now, self._rng, timed_out=True)
        if error is not None:
            no_retry = a.registration.no_retry(error)
            return lifecycle.fail(row, format_error(error), now, self._rng, no_retry=no_retry)
        try:
            if isinstance(value, Next):
                children = workflow.plan_children(
                    row,
                    value.children,
                    self._registry.snapshot(),
                    settings.policy,
                    now,
                    settings.max_payload_bytes,
                )
                return lifecycle.spawn(row, children, value.context, now)
            if isinstance(value, Suspend):
                return lifecycle.suspend(row, value.reason, value.context, now)
            result = codec.encode(
                value, f"the result of task {row.id} ({row.name})", settings.max_payload_bytes
            )
            return lifecycle.complete(row, result, now, cron.next_tick)
        except Exception as exc:
            return lifecycle.fail(row, format_error(exc), now, self._rng)

    # --- heartbeats, contact and maintenance ---------------------------------------------------
    def _now(self) -> float:
        """Now on the database's clock: this host's clock corrected by the offset measured at
        the last worker heartbeat (never a database call, so the loop never blocks on it)."""
        return time.time() + self._offset

    async def _heartbeat_loop(self) -> None:
        """The task heartbeats, then the worker's own, then orphaned claims: each every round,
        each failing alone. No sweep runs here, so none can delay a heartbeat."""
        last_worker = -float("inf")
        while True:
            settings = self._settings()
            # at least four tries per timeout, so one slow round never reaches the self-fence
            worker_every = min(
                settings.worker_heartbeat_interval, settings.worker_heartbeat_timeout / 4
            )
            interval = min(settings.task_heartbeat_interval, worker_every)
            assert self._beat is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), interval)
            self._beat.clear()
            owned: dict[int, int] | None = None
            # only attempts claimed before the heartbeat's read can be judged by it
            checked = dict(self._active)
            if time.monotonic() - last_worker >= worker_every * 0.9:
                last_worker = time.monotonic()
                try:  # the task heartbeat, the worker's own and the clock: one transaction
                    owned = await self._worker_heartbeat(settings, checked)
                except Exception as exc:
                    log.warning("heartbeat of worker %s failed: %s", self.worker_id, exc)
            else:
                try:
                    owned = await self._db(self._store.heartbeat_tasks, self.worker_id)
                    self._fence_lost(checked, owned)
                except Exception as exc:
                    log.warning("task heartbeat of worker %s failed: %s", self.worker_id, exc)
            if owned is not None and not self._out_of_contact:
                running = set(self._inflight)
                try:
                    await self._db(self._maint.release_orphans, owned, running, self._now())
                except Exception as exc:
                    log.warning("releasing orphaned claims failed: %s", exc)

    async def _maintenance_loop(self) -> None:
        """One maintenance round every heartbeat interval, on a thread of its own."""
        loop = asyncio.get_running_loop()
        while True:
            settings = self._settings()
            await asyncio.sleep(
                min(settings.task_heartbeat_interval, settings.worker_heartbeat_interval)
            )
            fenced = self._fenced or self._out_of_contact
            try:
                await loop.run_in_executor(
                    self._sweeper,
                    functools.partial(self._maint.run_once, self._now(), fenced=fenced),
                )
            except Exception as exc:  # run_once isolates its steps; this is a bug
                log.exception("maintenance round failed: %s", exc)

    async def _contact_watch(self) -> None:
        """Self-fencing: a worker whose last successful heartbeat started more than
        ``SELF_FENCE_FRACTION`` of ``worker_heartbeat_timeout`` ago (a cut network, a database
        that does not answer) stops its attempts and claims nothing, before any other worker
        may judge it dead and run its tasks again."""
        while True:
            limit = self._settings().worker_heartbeat_timeout * SELF_FENCE_FRACTION
            left = self._contact + limit - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            if not self._out_of_contact:
                self._lose_contact(time.monotonic() - self._contact)
            await asyncio.sleep(limit / 10)

    def _lose_contact(self, silent: float) -> None:
        log.error(
            "worker %s has not completed a heartbeat for %.1f s: it stops its %d running"
            " attempt(s) and claims nothing until it reaches the database again",
            self.worker_id,
            silent,
            len(self._active),
        )
        self._out_of_contact = True
        self._give_back_ready(None)
        for a in list(self._active.values()):
            self._abandon(a)

    def _abandon(self, a: Attempt) -> None:
        """Stop an attempt this worker may no longer own: an async handler is cancelled, a
        sync one is told through ``check_timeout()``; its outcome is never written."""
        self._inflight.discard(row_key(a.row))
        a.abandoned = True
        a.state.lost = True
        if a.runner is not None:
            a.runner.cancel()
        else:
            self._finish(a, None, None, True)  # its slot is freed when it returns

    def _fence_lost(self, checked: Mapping[int, Attempt], owned: Mapping[int, int]) -> None:
        for task_id, a in checked.items():
            if self._active.get(task_id) is a and owned.get(task_id) != a.row.attempt:
                log.info("task %s attempt %s was fenced off; stopping it", task_id, a.row.attempt)
                self._abandon(a)

    async def _worker_heartbeat(
        self, settings: ManagerSettings, checked: Mapping[int, Attempt]
    ) -> dict[int, int] | None:
        """The task heartbeat, the worker's own and the clock offset in one transaction
        (``Store.heartbeat``), then what its stored status calls for: claim nothing while
        superseded or dead, register again after a lost contact or a change of handlers.
        Returns what the worker owns, as the task heartbeat read it (None if it failed)."""
        started = time.monotonic()
        timeout = settings.worker_heartbeat_timeout
        owned: dict[int, int] | None = None
        try:
            owned, status, self._offset = await self._db(
                self._store.heartbeat, self.worker_id, timeout
            )
        except Exception as exc:
            # one step failing (e.g. the task heartbeat) must not stop the worker's own: each
            # step again on its own, each failing alone
            log.warning("heartbeat of worker %s failed, step by step: %s", self.worker_id, exc)
            started = time.monotonic()
            try:
                owned = await self._db(self._store.heartbeat_tasks, self.worker_id)
            except Exception as exc:
                log.warning("task heartbeat of worker %s failed: %s", self.worker_id, exc)
            status = await self._db(self._store.heartbeat_worker, self.worker_id, timeout)
            self._offset = await self._db(self._store.sync_clock)
        self._contact = started
        if owned is not None:
            self._fence_lost(checked, owned)
        rejoin = self._out_of_contact
        if rejoin:
            self._regain_contact()
        if status in ("superseded", "dead"):
            await self._fenced_off(status, settings)
        elif status is None or rejoin or self._registered_version != self._registry.version:
            await self._register(settings)
        return owned

    def _regain_contact(self) -> None:
        log.warning("worker %s reached the database again and carries on", self.worker_id)
        self._out_of_contact = False
        self._poke()

    async def _register(self, settings: ManagerSettings) -> None:
        """Register (again); recover the running tasks of the pod's workers it superseded."""
        superseded = await self._db(self._store.register_worker, self._worker_row(self._now()))
        if superseded:
            log.warning(
                "worker %s superseded %s of pod %s and recovers their running tasks",
                self.worker_id,
                ", ".join(superseded),
                settings.pod_id,
            )
            await asyncio.get_running_loop().run_in_executor(
                self._sweeper, self._maint.recover_workers, superseded, self._now()
            )

    async def _fenced_off(self, status: str, settings: ManagerSettings) -> None:
        """Another worker marked this one superseded (a newer worker of its pod registered) or
        dead (its heartbeat was late): claim nothing (its running tasks are recovered by others
        and its late writes fenced) until no live active worker of its pod is left, then
        register again."""
        if not self._fenced:
            log.warning(
                "worker %s was marked %s by another worker; its running tasks are recovered"
                " elsewhere and it claims nothing%s",
                self.worker_id,
                status,
                f" while pod {settings.pod_id} has another live worker" if settings.pod_id else "",
            )
            self._fenced = True
            self._give_back_ready("worker fenced")
            with contextlib.suppress(Exception):
                await self._db(self._store.release_lease, MAINTENANCE_LEASE, self.worker_id)
        if settings.pod_id is not None:
            # a silent successor must not keep this worker waiting: judge it now
            await self._db(
                functools.partial(
                    self._store.mark_dead_workers,
                    settings.worker_heartbeat_timeout,
                    exclude=self.worker_id,
                )
            )
            active = await self._db(self._store.list_workers, "active")
            if any(w.pod_id == settings.pod_id for w in active if w.worker_id != self.worker_id):
                return
        await self._register(settings)
        self._fenced = False
        log.warning("worker %s registered again and claims work", self.worker_id)
        self._poke()

    # --- stopping ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self._poke()
        # a claim already on its way must land first, or its rows would start after the release
        if self._exchanges:
            await asyncio.wait(list(self._exchanges))
        self._give_back_ready("worker stopped")  # claimed ahead, never started
        if self._active:
            assert self._emptied is not None
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), self._stop_timeout)
            await asyncio.sleep(0)
        now = self._now()
        for a in list(self._active.values()):
            self._abandon(a)
            self._completer.put(lifecycle.recover(a.row, now, self.worker_id, "worker stopped"))
        await asyncio.sleep(0)
        await self._completer.flush()
        try:
            await self._db(self._store.set_worker_status, self.worker_id, "stopped", self._now())
            await self._db(self._store.release_lease, MAINTENANCE_LEASE, self.worker_id)
        except Exception as exc:
            log.warning("could not mark worker %s stopped: %s", self.worker_id, exc)
