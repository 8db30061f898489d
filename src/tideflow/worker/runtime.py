"""The worker: executes attempts, heartbeats, self-fencing, timeouts and graceful stop.

A worker runs one asyncio event loop in a background thread. Its claim loop and slots are the
producer's (:mod:`tideflow.worker.producer`); async handlers run on the loop, sync handlers on
handler threads (:mod:`tideflow.worker.executor`). Store calls run in a small store thread pool
so a slow write never blocks the loop. The worker never builds SQL and
never picks a status: it asks :mod:`tideflow.core.lifecycle` for each change and hands it to the
store."""

from __future__ import annotations

import asyncio
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
from tideflow.core.types import Change, TaskRow, WorkerRow
from tideflow.errors import OwnershipLostError, TaskTimeoutError
from tideflow.store.protocol import Store
from tideflow.worker import observe
from tideflow.worker.completer import Completer
from tideflow.worker.executor import Deadlines, HandlerThreads, Returned
from tideflow.worker.maintenance import MAINTENANCE_LEASE, Maintenance
from tideflow.worker.producer import Gate, Producer, row_key
from tideflow.worker.task import AttemptState, Next, Suspend, Task

__all__ = ["Worker"]

log = logging.getLogger("tideflow.worker")

R = TypeVar("R")

#: a worker whose last successful heartbeat started longer ago than this fraction of
#: ``worker_heartbeat_timeout`` stops its attempts: others may judge it dead at the full timeout
SELF_FENCE_FRACTION = 0.5


_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(concurrent.futures.__file__),
    os.path.dirname(asyncio.__file__),
)


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
    observed: observe.Observation | None = None  # its instrumentation, when there is some


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
        self._producer: Producer | None = None  # made on the worker's loop
        self._stop_requested: asyncio.Event | None = None
        self._stop_timeout = 30.0
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._gate = Gate()  # paused, stopping, fenced (its row says superseded or dead), ...
        self._active: dict[int, Attempt] = {}
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
        self._registered_version = -1
        self._beat: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._emptied: asyncio.Event | None = None  # set whenever no attempt is running
        # (task id, attempt) whose row this worker still owns on purpose: claimed, running, or
        # with an outcome queued but not yet written; anything else it owns is an orphan
        self._inflight: set[tuple[int, int]] = set()

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
            self._gate.stopping = True
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
        self._gate.paused = True
        loop, thread, producer = self._loop, self._thread, self._producer
        if loop is None or thread is None or producer is None:
            return
        if threading.current_thread() is thread:
            return
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(producer.claims_landed(), loop).result(
                self._settings().worker_heartbeat_timeout
            )

    def resume(self) -> None:
        """Claim again after :meth:`pause`."""
        self._gate.paused = False
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
        if self._producer is not None:
            self._producer.poke()

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
        self._stop_requested = asyncio.Event()
        self._beat = asyncio.Event()
        self._completer = Completer(self._poke)
        self._producer = producer = Producer(
            self._store,
            self._registry,
            self._settings,
            self._completer,
            worker_id=self.worker_id,
            gate=self._gate,
            launch=self._launch,
            db=self._db,
            clock=self._now,
            inflight=self._inflight,
        )
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
        producer.pushed = unsubscribe is not None
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="tideflow-heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name="tideflow-maintenance"),
            asyncio.create_task(self._contact_watch(), name="tideflow-contact"),
        ]
        syncer = asyncio.create_task(producer.run(), name="tideflow-sync")
        await self._stop_requested.wait()
        await self._shutdown(producer)
        producer.close()
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

    def _launch(self, row: TaskRow) -> bool:
        """Start an attempt of claimed ``row``; False when it took no slot (given back or
        failed at once)."""
        reg = self._registry.get(row.name)
        state = AttemptState(time.monotonic() + row.timeout)
        if reg is None:  # unregistered between the claim and now: give it back
            self._inflight.discard(row_key(row))
            change = lifecycle.recover(row, self._now(), self.worker_id, "handler unregistered")
            self._completer.put(change)
            return False
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
            log.error(
                "task %s (%s) cannot be started: %s",
                row.id,
                row.name,
                exc,
                extra=observe.extra(row, self.worker_id),
            )
            self._inflight.discard(row_key(row))
            self._completer.put(lifecycle.fail(row, format_error(exc), self._now(), self._rng))
            return False
        # instrumented: the handler runs in the attempt's own context (its span current there)
        observed = observe.start_attempt(row, self.worker_id) if observe.HOOKS else None
        attempt = Attempt(row=row, registration=reg, task=task, state=state, observed=observed)
        self._active[row.id] = attempt
        self._deadlines.watch(attempt, state.deadline)
        if reg.is_async:
            attempt.runner = asyncio.create_task(
                self._execute(attempt),
                name=f"tideflow-{row.id}",
                context=None if observed is None else observed.context,
            )
            self._tasks.add(attempt.runner)
        else:
            args = (task, task.next) if reg.takes_next else (task,)
            call = functools.partial(reg.handler, *args)
            if observed is not None:
                call = functools.partial(observed.context.run, call)
            self._threads.submit(attempt, call)
        return True

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
                log.warning(
                    "an event of task %s was not written: %s",
                    change.task_id,
                    held,
                    extra={"task_id": change.task_id, "worker_id": self.worker_id},
                )

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
        assert self._producer is not None
        self._producer.slot_freed(attempt.row.name)

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
        if a.observed is not None:
            a.observed.end(change, error)
        if change is None:
            self._inflight.discard(key)
        else:
            self._completer.put(change, lambda held: self._written(key, held))
        if a.returned:
            self._free_slot(a)

    def _written(self, key: tuple[int, int], held: bool | BaseException) -> None:
        self._inflight.discard(key)
        if held is False:
            log.info(
                "the outcome of task %s attempt %s was fenced off",
                *key,
                extra={"task_id": key[0], "attempt": key[1], "worker_id": self.worker_id},
            )

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
            log.info(
                "task %s attempt %s lost ownership; its outcome is dropped",
                *row_key(row),
                extra=observe.extra(row, self.worker_id),
            )
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
                    trace_context=value.trace_context,
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
            if owned is not None and not self._gate.out_of_contact:
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
            fenced = not self._gate.holds_claims
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
            if not self._gate.out_of_contact:
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
        self._gate.out_of_contact = True
        if self._producer is not None:
            self._producer.give_back_ready(None)
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
                log.info(
                    "task %s attempt %s was fenced off; stopping it",
                    task_id,
                    a.row.attempt,
                    extra=observe.extra(a.row, self.worker_id),
                )
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
        rejoin = self._gate.out_of_contact
        if rejoin:
            self._regain_contact()
        if status in ("superseded", "dead"):
            await self._fenced_off(status, settings)
        elif status is None or rejoin or self._registered_version != self._registry.version:
            await self._register(settings)
        return owned

    def _regain_contact(self) -> None:
        log.warning("worker %s reached the database again and carries on", self.worker_id)
        self._gate.out_of_contact = False
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
        if not self._gate.fenced:
            log.warning(
                "worker %s was marked %s by another worker; its running tasks are recovered"
                " elsewhere and it claims nothing%s",
                self.worker_id,
                status,
                f" while pod {settings.pod_id} has another live worker" if settings.pod_id else "",
            )
            self._gate.fenced = True
            if self._producer is not None:
                self._producer.give_back_ready("worker fenced")
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
        self._gate.fenced = False
        log.warning("worker %s registered again and claims work", self.worker_id)
        self._poke()

    # --- stopping ------------------------------------------------------------------------------
    async def _shutdown(self, producer: Producer) -> None:
        producer.poke()
        # a claim already on its way must land first, or its rows would start after the release
        await producer.exchanges_landed()
        producer.give_back_ready("worker stopped")  # claimed ahead, never started
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
