"""The worker: claim loop, executors, heartbeats, timeouts and graceful stop.

A worker runs one asyncio event loop in a background thread. Async handlers run on that loop;
sync handlers run in a thread pool. Store calls run in a small store thread pool so a slow write
never blocks the loop. The worker never builds SQL and never picks a status: it asks
:mod:`tideflow.core.lifecycle` for each change and hands it to the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
import itertools
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
from tideflow.store import retention
from tideflow.store.protocol import Store
from tideflow.worker.completer import Completer, Item
from tideflow.worker.task import AttemptState, Next, Suspend, Task

__all__ = ["Worker"]

log = logging.getLogger("tideflow.worker")

R = TypeVar("R")

#: the lease whose holder runs the sweeps for every worker (recovery, stalls, retention)
MAINTENANCE_LEASE = "maintenance"


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
    inner: asyncio.Future[Any] | None = None  # a sync handler's future in the thread pool
    runner: asyncio.Task[None] | None = None  # the coroutine that runs and settles it
    abandoned: bool = False
    settled: bool = False


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
        self._exchanges: set[asyncio.Task[bool]] = set()
        self._deadlines: list[tuple[float, int, Attempt]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count()
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
        self._by_name: dict[str, int] = {}
        self._db_pool = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="tideflow-db")
        self._maintenance = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="tideflow-retention"
        )
        self._retention_job: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1024, thread_name_prefix="tideflow-handler"
        )
        self._registered_version = -1
        self._beat: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # (task id, attempt) whose row this worker still owns on purpose: running, or with an
        # outcome queued but not yet written; anything else it owns is an orphan
        self._inflight: set[tuple[int, int]] = set()
        self._suspects: set[tuple[int, int]] = set()

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
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._db_pool.shutdown(wait=True)
        self._maintenance.shutdown(wait=True)  # a retention sweep stops after its batch

    def pause(self) -> None:
        """Stop claiming (running attempts go on)."""
        self._paused = True

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
        try:
            await self._db(self._store.register_worker, self._worker_row(time.time()))
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        unsubscribe = self._store.subscribe(self.notify)
        background = [asyncio.create_task(self._heartbeat_loop(), name="tideflow-heartbeat")]
        syncer = asyncio.create_task(self._sync_loop(), name="tideflow-sync")
        await self._stop_requested.wait()
        await self._shutdown()
        self._closing = True
        self._poke()
        await syncer
        if unsubscribe is not None:
            unsubscribe()
        if self._retention_job is not None:
            background.append(self._retention_job)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

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
        share = -(-settings.max_concurrent_tasks // self._parallel)
        free = min(share, settings.max_concurrent_tasks - self._occupied - self._reserved)
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
        """
        assert self._wake is not None
        idle_until = 0.0  # after a claim came back short, only a poke claims again before this
        while not self._closing:
            poll = self._settings().poll_interval
            self._wake.clear()
            while len(self._exchanges) < self._parallel:
                request = None
                if (
                    not (self._paused or self._stopping or self._fenced)
                    and time.monotonic() >= idle_until
                ):
                    request = self._claim_request(time.time())
                if request is None and not self._completer.pending():
                    break
                if request is not None:
                    self._reserve(request, 1)  # now: the next request must see it
                trip = asyncio.create_task(
                    self._trip(self._completer.take(), request), name="tideflow-exchange"
                )
                self._exchanges.add(trip)
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                done, _ = await asyncio.wait(
                    [*self._exchanges, waiter],
                    timeout=max(0.001, idle_until - time.monotonic()) if idle_until else poll,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
            for trip in done & self._exchanges:
                self._exchanges.discard(trip)
                if trip.cancelled() or trip.exception() is not None:
                    log.error("an exchange failed", exc_info=trip.exception())
                    idle_until = time.monotonic() + poll
                elif trip.result():
                    idle_until = time.monotonic() + poll
            if waiter in done or not done:
                idle_until = 0.0  # poked (a submit, a freed slot) or the poll came round
        if self._exchanges:
            await asyncio.wait(self._exchanges)

    def _reserve(self, request: ClaimRequest, sign: int) -> None:
        self._reserved += sign * request.limit
        for name, cap in request.names.items():
            if cap is not None:
                self._reserved_by_name[name] = self._reserved_by_name.get(name, 0) + sign * cap

    async def _trip(self, batch: list[Item], request: ClaimRequest | None) -> bool:
        """One exchange; True when its claim came back short (no more due work for now)."""
        try:
            rows = await self._exchange(batch, request)
        finally:
            if request is not None:
                self._reserve(request, -1)
        if rows is None:
            return True
        for row in rows:
            self._launch(row)
        return request is not None and len(rows) < request.limit

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
            change = lifecycle.recover(row, time.time(), self.worker_id, "handler unregistered")
            self._completer.put(change)
            return
        task = Task(
            row, result=self._initial_result(row), state=state, write=self._store.append_event
        )
        attempt = Attempt(row=row, registration=reg, task=task, state=state)
        self._active[row.id] = attempt
        self._inflight.add((row.id, row.attempt))
        self._occupied += 1
        self._by_name[row.name] = self._by_name.get(row.name, 0) + 1
        attempt.runner = asyncio.create_task(self._execute(attempt), name=f"tideflow-{row.id}")
        self._tasks.add(attempt.runner)
        if reg.is_async:
            self._watch(attempt)

    # --- deadlines of async handlers ---------------------------------------------------------
    def _watch(self, a: Attempt) -> None:
        """Cancel ``a``'s handler at its deadline: one timer for all attempts (the earliest
        deadline) instead of one ``asyncio.timeout`` each."""
        heapq.heappush(self._deadlines, (a.state.deadline, next(self._seq), a))
        if len(self._deadlines) > 2 * len(self._active) + 64:
            # finished attempts stay in the heap until their deadline; drop them now and then
            self._deadlines = [
                (w.state.deadline, next(self._seq), w)
                for w in self._active.values()
                if w.registration.is_async
            ]
            heapq.heapify(self._deadlines)
        timer, when = self._deadline_timer, self._loop_time(a.state.deadline)
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._deadline_timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _loop_time(self, deadline: float) -> float:
        """A ``time.monotonic()`` deadline on the event loop's clock."""
        assert self._loop is not None
        return self._loop.time() + (deadline - time.monotonic())

    def _expire(self) -> None:
        self._deadline_timer = None
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, a = heapq.heappop(self._deadlines)
            if self._active.get(a.row.id) is a and a.runner is not None and not a.runner.done():
                a.state.timed_out = True
                a.runner.cancel()
        if self._deadlines:
            loop = asyncio.get_running_loop()
            self._deadline_timer = loop.call_at(
                self._loop_time(self._deadlines[0][0]), self._expire
            )

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
        self._by_name[attempt.row.name] -= 1
        self._poke()

    async def _execute(self, a: Attempt) -> None:
        reg, task = a.registration, a.task
        args = (task, task.next) if reg.takes_next else (task,)
        remaining = max(0.0, a.state.deadline - time.monotonic())
        value: Any = None
        error: BaseException | None = None
        timed_out = False
        if reg.is_async and remaining <= 0:
            timed_out = True  # already past its deadline when its turn came
        elif reg.is_async:
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
        else:
            inner = asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: reg.handler(*args)
            )
            a.inner = inner
            try:
                done, _ = await asyncio.wait({inner}, timeout=remaining)
            except asyncio.CancelledError:
                if not a.abandoned:
                    raise
                done = set()
            if done:
                try:
                    value = inner.result()
                except Exception as exc:
                    error = exc
            else:
                timed_out = True
        self._finish(a, value, error, timed_out)

    def _finish(self, a: Attempt, value: Any, error: BaseException | None, timed_out: bool) -> None:
        self._active.pop(a.row.id, None)
        if a.runner is not None:
            self._tasks.discard(a.runner)
        key = row_key(a.row)
        change = None if a.abandoned else self._outcome(a, value, error, timed_out)
        if change is None:
            self._inflight.discard(key)
        else:
            self._completer.put(change, lambda held: self._written(key, held))
        self._settle_later(a)

    def _written(self, key: tuple[int, int], held: bool | BaseException) -> None:
        self._inflight.discard(key)
        if held is False:
            log.info("the outcome of task %s attempt %s was fenced off", *key)

    def _settle_later(self, a: Attempt) -> None:
        """Free the slot when the handler has really returned (a sync one may run on)."""
        inner = a.inner
        if inner is None or inner.done():
            self._free_slot(a)
            if inner is not None and not inner.cancelled():
                inner.exception()  # retrieved: no "never retrieved" warning
        else:
            if isinstance(inner, asyncio.Task):
                inner.cancel()
            inner.add_done_callback(lambda f: self._settled(a, f))

    def _settled(self, a: Attempt, inner: asyncio.Future[Any]) -> None:
        self._free_slot(a)
        if not inner.cancelled():
            inner.exception()  # retrieved: no "never retrieved" warning

    def _outcome(
        self, a: Attempt, value: Any, error: BaseException | None, timed_out: bool
    ) -> Change | None:
        row, settings = a.row, self._settings()
        now = time.time()
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
            return lifecycle.fail(row, format_error(error), now, self._rng)
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

    # --- heartbeats and sweeps -----------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        last_worker = 0.0
        # the automatic retention sweep never runs at start-up
        next_retention = time.monotonic() + self._settings().retention_interval
        while True:
            settings = self._settings()
            interval = min(settings.task_heartbeat_interval, settings.worker_heartbeat_interval)
            assert self._beat is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat.wait(), interval)
            self._beat.clear()
            now = time.time()
            try:
                # only attempts claimed before the heartbeat's read can be judged by it
                checked = dict(self._active)
                owned = await self._db(self._store.heartbeat_tasks, self.worker_id, now)
                self._fence_lost(checked, owned)
                await self._recover_orphans(owned, now)
                if now - last_worker >= settings.worker_heartbeat_interval:
                    last_worker = now
                    await self._worker_heartbeat(now, settings)
                if not await self._lead(now, settings):
                    continue  # another worker runs the sweeps for everyone this round
                # before the stall sweep: a dead worker's tasks are recovered, not timed out
                if settings.recover_running_jobs:
                    await self._reclaim(now, settings)
                await self._sweep_stalled(now, settings)
                job = self._retention_job
                if time.monotonic() >= next_retention and (job is None or job.done()):
                    next_retention = time.monotonic() + settings.retention_interval
                    self._retention_job = asyncio.create_task(
                        self._retention(now, settings), name="tideflow-retention"
                    )
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _fence_lost(self, checked: Mapping[int, Attempt], owned: Mapping[int, int]) -> None:
        for task_id, a in checked.items():
            if self._active.get(task_id) is a and owned.get(task_id) != a.row.attempt:
                log.info("task %s attempt %s was fenced off; stopping it", task_id, a.row.attempt)
                a.abandoned = True
                a.state.lost = True
                if a.runner is not None:
                    a.runner.cancel()

    async def _recover_orphans(self, owned: Mapping[int, int], now: float) -> None:
        """Give back rows this worker owns but does not run (e.g. a claim whose commit
        succeeded while its acknowledgement was lost). A row must look orphaned on two
        heartbeats in a row, so a claim still on its way to being launched is never taken."""
        orphans = {(i, a) for i, a in owned.items() if (i, a) not in self._inflight}
        confirmed, self._suspects = orphans & self._suspects, orphans - self._suspects
        changes = []
        for task_id, attempt in sorted(confirmed):
            row = await self._db(self._store.get_task, task_id)
            if row is not None and row.status == "running" and row.attempt == attempt:
                log.warning(
                    "task %s attempt %s was claimed but never run; releasing it", *row_key(row)
                )
                changes.append(lifecycle.recover(row, now, self.worker_id, "orphaned claim"))
        if changes:
            await self._db(self._store.apply, changes)

    async def _worker_heartbeat(self, now: float, settings: ManagerSettings) -> None:
        if self._registered_version != self._registry.version:
            row = self._worker_row(now)
            await self._db(self._store.register_worker, row)
            return
        status = await self._db(
            self._store.heartbeat_worker,
            self.worker_id,
            now,
            now + settings.worker_heartbeat_timeout,
        )
        if status is None:
            await self._db(self._store.register_worker, self._worker_row(now))
        elif status in ("superseded", "dead"):
            await self._fenced_off(status, now, settings)

    async def _lead(self, now: float, settings: ManagerSettings) -> bool:
        """Whether this worker runs this round's sweeps for everyone: it holds (or takes, or
        renews) the maintenance lease. A holder not heard of for this worker's
        ``worker_heartbeat_timeout`` loses it to the next worker that asks."""
        if self._fenced:
            return False
        held: bool = await self._db(
            self._store.acquire_lease,
            MAINTENANCE_LEASE,
            self.worker_id,
            now,
            now - settings.worker_heartbeat_timeout,
        )
        return held

    async def _fenced_off(self, status: str, now: float, settings: ManagerSettings) -> None:
        """Another worker marked this one superseded (a newer worker of its pod registered) or
        dead (its heartbeat was late): claim nothing (its running tasks are recovered by others
        and its late writes fenced) until no active worker of its pod is left, then register
        again."""
        if not self._fenced:
            log.warning(
                "worker %s was marked %s by another worker; its running tasks are recovered"
                " elsewhere and it claims nothing%s",
                self.worker_id,
                status,
                f" while pod {settings.pod_id} has another active worker"
                if settings.pod_id
                else "",
            )
            self._fenced = True
            with contextlib.suppress(Exception):
                await self._db(self._store.release_lease, MAINTENANCE_LEASE, self.worker_id)
        if settings.pod_id is not None:
            active = await self._db(self._store.list_workers, "active")
            if any(w.pod_id == settings.pod_id for w in active if w.worker_id != self.worker_id):
                return
        await self._db(self._store.register_worker, self._worker_row(now))
        self._fenced = False
        log.warning("worker %s registered again and claims work", self.worker_id)
        self._poke()

    async def _reclaim(self, now: float, settings: ManagerSettings) -> None:
        """Recover the running tasks of workers that are dead (not seen for
        ``worker_heartbeat_timeout``), superseded, stopped or gone: back to pending at once,
        their attempt closed ``interrupted``, no attempt used up."""
        rows = await self._db(
            lambda: self._store.orphaned_tasks(
                now - settings.worker_heartbeat_timeout, exclude=self.worker_id
            )
        )
        if rows:
            log.warning(
                "recovering %d running task(s) of dead or superseded workers %s",
                len(rows),
                ", ".join(sorted({str(r.worker_id) for r in rows})),
            )
            changes = [
                lifecycle.recover(row, now, self.worker_id, "worker dead or superseded")
                for row in rows
            ]
            await self._db(self._store.apply, changes)

    async def _retention(self, now: float, settings: ManagerSettings) -> None:
        """The automatic retention sweep, beside the heartbeats (a long backlog must not delay
        them) on a thread of its own, stopping between batches when the worker stops."""
        before, statuses = now - settings.expire_time, settings.retention_statuses
        loop = asyncio.get_running_loop()
        try:
            deleted = await loop.run_in_executor(
                self._maintenance,
                lambda: retention.sweep(
                    self._store, before, statuses, stop=lambda: self._stopping or self._closing
                ),
            )
        except Exception as exc:
            log.warning("retention sweep failed (retried next interval): %s", exc)
            return
        if deleted["tasks_deleted"]:
            log.info(
                "retention deleted %(tasks_deleted)d task(s), %(events_deleted)d event(s)"
                " and %(attempts_deleted)d attempt(s)",
                deleted,
            )

    async def _sweep_stalled(self, now: float, settings: ManagerSettings) -> None:
        """Time out running tasks (of any worker) whose heartbeat stopped."""
        rows = await self._db(
            lambda: self._store.running_tasks(
                heartbeat_before=now - settings.task_heartbeat_timeout
            )
        )
        if not rows:
            return
        changes = [
            lifecycle.fail(
                row,
                f"TaskTimeoutError: no heartbeat for over {settings.task_heartbeat_timeout:g} s",
                now,
                self._rng,
                timed_out=True,
                timeout_type="heartbeat",
            )
            for row in rows
        ]
        await self._db(self._store.apply, changes)

    # --- stopping ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self._poke()
        # a claim already on its way must land first, or its rows would start after the release
        if self._exchanges:
            await asyncio.wait(set(self._exchanges))
        deadline = time.monotonic() + self._stop_timeout
        while self._active and time.monotonic() < deadline:
            runners = [a.runner for a in self._active.values() if a.runner is not None]
            await asyncio.wait(runners, timeout=max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(0)
        now = time.time()
        for a in list(self._active.values()):
            self._inflight.discard(row_key(a.row))
            a.abandoned = True
            a.state.lost = True
            self._completer.put(lifecycle.recover(a.row, now, self.worker_id, "worker stopped"))
            if a.runner is not None:
                a.runner.cancel()
        await asyncio.sleep(0)
        await self._completer.flush()
        try:
            await self._db(self._store.set_worker_status, self.worker_id, "stopped", time.time())
            await self._db(self._store.release_lease, MAINTENANCE_LEASE, self.worker_id)
        except Exception as exc:
            log.warning("could not mark worker %s stopped: %s", self.worker_id, exc)
