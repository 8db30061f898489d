"""The producer (worker/producer.py) against a recording fake store: what it claims, when it
claims, what it starts and what it gives back. No database and no handlers: ``launch`` records
the rows it is handed and the test frees their slots."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from tideflow.core.options import ManagerSettings
from tideflow.core.registry import Registration, Registry
from tideflow.core.types import Change, ClaimRequest, TaskRow
from tideflow.worker.completer import Completer
from tideflow.worker.producer import PREFETCH_MAX, SAFETY_POLL, Gate, Producer
from unit.test_lifecycle import make_row

NOW = 1_000.0


class FakeStore:
    """Records every exchange; answers claims from a queue of due rows."""

    def __init__(self, *, parallel: int = 1, next_due: float | None = None) -> None:
        self.parallel_exchanges = parallel
        self.due: list[TaskRow] = []
        self.requests: list[ClaimRequest | None] = []
        self.written: list[Change] = []
        self.batches: list[int] = []  # changes written per exchange
        self.during: Callable[[], Any] | None = None  # called while an exchange is on its way
        self.next_due_calls = 0
        self._next_due = next_due
        self.hold = threading.Event()  # cleared: exchanges wait until it is set
        self.hold.set()
        self.in_exchange = threading.Event()
        self.lock = threading.Lock()

    def add(self, count: int, name: str = "job") -> None:
        start = len(self.requests) * 1000 + len(self.due) + 1
        self.due += [make_row(id=start + i, name=name) for i in range(count)]

    def exchange(
        self, changes: Sequence[Change], request: ClaimRequest | None
    ) -> tuple[list[bool], list[TaskRow]]:
        self.in_exchange.set()
        self.hold.wait(10)
        if self.during is not None:
            self.during()
        self.requests.append(request)
        self.written += changes
        self.batches.append(len(changes))
        rows: list[TaskRow] = []
        with self.lock:
            if request is not None:
                rows = self._claim(request)
        return [True] * len(changes), rows

    def _claim(self, request: ClaimRequest) -> list[TaskRow]:
        rows: list[TaskRow] = []
        if request is not None:
            left = dict(request.names)
            for row in list(self.due):
                if len(rows) >= request.limit or row.name not in left:
                    continue
                cap = left[row.name]
                if cap is not None:
                    if cap <= 0:
                        continue
                    left[row.name] = cap - 1
                self.due.remove(row)
                rows.append(row.with_values({"status": "running", "attempt": row.attempt + 1}))
        return rows

    def clear(self) -> None:
        with self.lock:
            self.due.clear()

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        self.written += changes
        return [True] * len(changes)

    def next_due(self) -> float | None:
        self.next_due_calls += 1
        return self._next_due

    @property
    def claims(self) -> list[ClaimRequest]:
        return [r for r in self.requests if r is not None]


def registry(**caps: int | None) -> Registry:
    reg = Registry()
    reg.add(
        Registration(
            name=name,
            handler=lambda task: None,
            options={} if cap is None else {"max_concurrent_tasks": cap},
            is_async=False,
            takes_next=False,
        )
        for name, cap in (caps or {"job": None}).items()
    )
    return reg


class Harness:
    """A producer on the running loop with a fake store; ``launched`` holds started rows."""

    def __init__(
        self,
        store: FakeStore,
        reg: Registry,
        *,
        slots: int = 4,
        poll: float = 0.01,
        accept: Callable[[TaskRow], bool] = lambda row: True,
    ) -> None:
        self.store = store
        self.settings = ManagerSettings(max_concurrent_tasks=slots, poll_interval=poll)
        self.gate = Gate()
        self.launched: list[TaskRow] = []
        self.completer = Completer(lambda: self.producer.poke())
        self._accept = accept

        def launch(row: TaskRow) -> bool:
            if not self._accept(row):
                return False
            self.launched.append(row)
            return True

        async def db(fn: Callable[..., Any], *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        self.producer = Producer(
            store,  # type: ignore[arg-type]
            reg,
            lambda: self.settings,
            self.completer,
            worker_id="w1",
            gate=self.gate,
            launch=launch,
            db=db,
            clock=lambda: NOW,
        )
        self.runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.runner = asyncio.create_task(self.producer.run())

    async def stop(self) -> None:
        self.producer.close()
        assert self.runner is not None
        await asyncio.wait_for(self.runner, 10)

    def free(self, count: int | None = None) -> None:
        """Free the slots of the first ``count`` running rows (all by default)."""
        done = self.launched[:count] if count is not None else list(self.launched)
        for row in done:
            self.launched.remove(row)
            self.producer.slot_freed(row.name)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_claims_only_for_free_slots_and_starts_what_it_claimed() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(10)
        h = Harness(store, registry(), slots=4)
        h.start()
        await until(lambda: len(h.launched) == 4, "four rows started")
        assert store.claims[0].limit == 4
        assert {r.status for r in h.launched} == {"running"}
        assert h.producer.inflight == {(r.id, r.attempt) for r in h.launched}
        # all slots taken: nothing more is claimed until one frees
        claims = len(store.claims)
        await asyncio.sleep(0.05)
        assert len(store.claims) == claims
        h.free(1)
        await until(lambda: len(h.launched) == 4, "a freed slot refilled")
        await h.stop()

    run(test)


def test_per_type_limits_count_running_and_claimed_rows() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(5, "narrow")
        store.add(10, "wide")
        h = Harness(store, registry(narrow=1, wide=None), slots=4)
        h.start()
        await until(lambda: len(h.launched) == 4, "slots filled")
        assert sum(r.name == "narrow" for r in h.launched) == 1
        assert store.claims[0].names == {"narrow": 1, "wide": None}
        # while the narrow one runs, claims leave its name out
        claims = len(store.claims)
        for row in [r for r in h.launched if r.name == "wide"]:
            h.launched.remove(row)
            h.producer.slot_freed(row.name)
        await until(lambda: len(store.claims) > claims, "claimed again")
        assert store.claims[-1].names == {"wide": None}
        await until(lambda: len(h.launched) == 4, "refilled")
        assert sum(r.name == "narrow" for r in h.launched) == 1
        await h.stop()

    run(test)


def test_prefetch_grows_while_slots_turn_over_and_ends_on_a_short_claim() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(5000)
        h = Harness(store, registry(), slots=4)
        h.start()
        await until(lambda: len(h.launched) == 4, "slots filled")
        assert store.claims[-1].limit == 4
        # from now on every handler finishes while the next claim is on its way
        loop = asyncio.get_running_loop()
        store.during = lambda: loop.call_soon_threadsafe(h.free)
        running: list[int] = []
        h.free(2)
        await until(lambda: any(c.limit > 4 for c in store.claims), "a claim beyond the slots")
        for _ in range(100):
            running.append(len(h.launched))
            await asyncio.sleep(0.001)
        assert max(running) <= 4  # rows claimed ahead wait for a slot
        assert max(c.limit for c in store.claims) <= 4 + PREFETCH_MAX
        # the queue runs dry: the claim that comes back short ends the prefetch
        store.clear()
        store.during = None

        def drained() -> bool:
            h.free()
            return h.producer.waiting == 0 and not h.launched

        await until(drained, "all done")
        await until(lambda: store.claims[-1].limit == 4, "claims back to the free slots")
        await h.stop()

    run(test)


def test_waiting_rows_are_given_back_and_never_started() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(5000)
        h = Harness(store, registry(), slots=2)
        h.start()
        await until(lambda: len(h.launched) == 2, "slots filled")
        loop = asyncio.get_running_loop()
        store.during = lambda: loop.call_soon_threadsafe(h.free)
        h.free(1)
        await until(lambda: h.producer.waiting > 0, "rows waiting for a slot")
        h.gate.stopping = True
        store.during = None
        await h.producer.exchanges_landed()
        waiting = h.producer.waiting
        started = list(h.launched)
        assert waiting > 0
        h.producer.give_back_ready("worker stopped")
        assert h.producer.waiting == 0
        taken = h.completer.take()
        assert len(taken) == waiting
        assert {change.events[-1].event_type for change, _ in taken} == {"task_recovered"}
        given_back = {change.task_id for change, _ in taken}
        assert not given_back & {task_id for task_id, _ in h.producer.inflight}
        assert {(r.id, r.attempt) for r in started} <= h.producer.inflight
        h.free()
        assert h.launched == []  # a freed slot starts nothing while stopping
        await h.stop()

    run(test)


def test_rows_claimed_while_fenced_go_back_at_once() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(3)
        store.hold.clear()
        h = Harness(store, registry(), slots=4)
        h.start()
        await asyncio.to_thread(store.in_exchange.wait, 5)  # the first claim is on its way
        h.gate.fenced = True  # fenced while the claim is on its way
        store.hold.set()
        await until(lambda: len(store.written) == 3, "three give-backs written")
        assert h.launched == []
        assert {c.events[-1].event_type for c in store.written} == {"task_recovered"}
        await h.stop()

    run(test)


def test_an_idle_worker_claims_once_then_sleeps_until_the_next_due_task() -> None:
    async def test() -> None:
        store = FakeStore(parallel=2, next_due=NOW + 3600)
        h = Harness(store, registry(), slots=4, poll=0.01)
        h.producer.pushed = True
        h.start()
        await until(lambda: store.next_due_calls >= 1, "next_due read")
        await asyncio.sleep(0.1)  # ten poll intervals
        # one claim (not one per parallel exchange), then asleep: no polling every 10 ms
        assert len(store.claims) == 1
        assert store.next_due_calls == 1
        store.add(1)
        h.producer.poke()  # the store's wake-up
        await until(lambda: len(h.launched) == 1, "woken and claimed")
        await h.stop()

    run(test)


def test_without_a_push_channel_an_idle_worker_polls() -> None:
    async def test() -> None:
        store = FakeStore(next_due=NOW + 3600)
        h = Harness(store, registry(), slots=4, poll=0.01)
        h.start()
        await until(lambda: len(store.claims) >= 3, "polls")
        assert store.next_due_calls == 0
        await h.stop()

    run(test)


def test_idle_wait_is_capped_by_the_safety_poll_and_a_failed_read_polls() -> None:
    async def test() -> None:
        store = FakeStore(next_due=None)
        h = Harness(store, registry(), poll=0.5)
        assert await h.producer._idle_wait(0.5) == SAFETY_POLL
        store._next_due = NOW + 2.0
        assert await h.producer._idle_wait(0.5) == pytest.approx(2.0)

        def broken() -> float:
            raise RuntimeError("no database")

        store.next_due = broken  # type: ignore[method-assign]
        assert await h.producer._idle_wait(0.5) == 0.5

    run(test)


def test_outcomes_that_return_during_an_exchange_wait_for_it_and_go_together() -> None:
    async def test() -> None:
        store = FakeStore(parallel=2)
        store.add(8)
        h = Harness(store, registry(), slots=8)
        h.start()
        await until(lambda: len(h.launched) == 8, "slots filled")
        store.hold.clear()  # the next exchange stays on its way
        store.in_exchange.clear()
        first = h.launched[0]
        h.completer.put(_outcome(first))
        h.free(1)
        await asyncio.to_thread(store.in_exchange.wait, 5)
        store.in_exchange.clear()
        before = len(store.batches)
        # three more outcomes: below half the slots, they wait for the exchange on its way
        for row in h.launched[:3]:
            h.completer.put(_outcome(row))
        h.free(3)
        await asyncio.sleep(0.05)
        assert not store.in_exchange.is_set()  # no second exchange started
        store.hold.set()
        await until(lambda: len(store.written) == 4, "all four outcomes written")
        assert [n for n in store.batches[before:] if n] == [1, 3]
        await h.stop()

    run(test)


def test_a_row_that_takes_no_slot_is_not_counted() -> None:
    async def test() -> None:
        store = FakeStore()
        store.add(4)
        h = Harness(store, registry(), slots=2, accept=lambda row: row.id % 2 == 0)
        h.start()
        await until(lambda: not store.due, "all claimed")
        await until(lambda: len(h.launched) == 2, "accepted rows started")
        assert h.producer.occupied == 2
        h.free()
        assert h.producer.occupied == 0
        await h.stop()

    run(test)


def _outcome(row: TaskRow) -> Change:
    from tideflow.core import lifecycle

    return lifecycle.recover(row, NOW, "w1", "done")
