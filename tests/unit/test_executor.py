"""The executor's parts (``worker/executor.py``): handler threads and the deadline timer.

The deadline tests move a clock they own and call ``run_due`` themselves; the thread tests
block the loop until every handler has returned, so what they check is how outcomes are
handed back, never how fast.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tideflow.worker.executor import Deadlines, HandlerThreads, Returned


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- handler threads ---------------------------------------------------------------------------
def test_returns_and_errors_come_back_with_their_jobs(loop: asyncio.AbstractEventLoop) -> None:
    batches: list[list[Returned[str]]] = []
    threads: HandlerThreads[str] = HandlerThreads(loop, batches.append)
    boom = ValueError("boom")

    def fail() -> None:
        raise boom

    async def run() -> None:
        threads.submit("ok", lambda: 42)
        threads.submit("bad", fail)
        while threads.outstanding:
            await asyncio.sleep(0.001)

    loop.run_until_complete(run())
    threads.shutdown()
    got = {job: (value, error) for batch in batches for job, value, error in batch}
    assert got == {"ok": (42, None), "bad": (None, boom)}


def test_returns_that_arrive_while_the_loop_is_busy_come_back_in_one_batch(
    loop: asyncio.AbstractEventLoop,
) -> None:
    batches: list[list[Returned[int]]] = []
    threads: HandlerThreads[int] = HandlerThreads(loop, batches.append)
    returned = threading.Semaphore(0)

    def make(i: int) -> Any:
        def run() -> int:
            returned.release()
            return i

        return run

    async def run() -> None:
        for i in range(5):
            threads.submit(i, make(i))
        for _ in range(5):  # the loop is blocked here while every handler returns
            returned.acquire()
        await asyncio.sleep(0)  # the one wake-up runs
        await asyncio.sleep(0)

    loop.run_until_complete(run())
    threads.shutdown()
    assert [sorted(job for job, _, _ in batch) for batch in batches] == [[0, 1, 2, 3, 4]]
    assert threads.outstanding == 0


def test_threads_grow_only_to_the_calls_outstanding_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    threads: HandlerThreads[int] = HandlerThreads(loop, lambda batch: None)

    async def one_at_a_time() -> None:
        for i in range(20):
            threads.submit(i, lambda: None)
            while threads.outstanding:
                await asyncio.sleep(0.001)

    loop.run_until_complete(one_at_a_time())
    assert threads.threads == 1
    release = threading.Event()

    async def three_at_once() -> None:
        for i in range(3):
            threads.submit(i, release.wait)
        release.set()
        while threads.outstanding:
            await asyncio.sleep(0.001)

    loop.run_until_complete(three_at_once())
    threads.shutdown()
    assert threads.threads == 3
    with pytest.raises(RuntimeError, match="shut down"):
        threads.submit(0, lambda: None)


# --- deadlines ---------------------------------------------------------------------------------
def test_only_keys_past_their_deadline_expire(loop: asyncio.AbstractEventLoop) -> None:
    clock, expired = Clock(), list[Any]()
    deadlines: Deadlines[str] = Deadlines(loop, expired.append, clock=clock)
    deadlines.watch("a", 1010.0)
    deadlines.watch("b", 1005.0)
    deadlines.watch("c", 1020.0)
    deadlines.run_due()
    assert expired == []
    clock.now = 1010.0
    deadlines.run_due()
    assert expired == ["b", "a"]  # earliest first
    assert len(deadlines) == 1
    clock.now = 2000.0
    deadlines.run_due()
    assert expired == ["b", "a", "c"]
    deadlines.run_due()
    assert expired == ["b", "a", "c"]  # each once
    deadlines.close()


def test_a_forgotten_key_never_expires_and_a_rewatched_one_uses_its_new_deadline(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock, expired = Clock(), list[Any]()
    deadlines: Deadlines[str] = Deadlines(loop, expired.append, clock=clock)
    deadlines.watch("done", 1001.0)
    deadlines.watch("later", 1001.0)
    deadlines.forget("done")
    deadlines.watch("later", 1050.0)
    clock.now = 1010.0
    deadlines.run_due()
    assert expired == []
    clock.now = 1050.0
    deadlines.run_due()
    assert expired == ["later"]
    deadlines.close()


def test_the_heap_of_forgotten_keys_is_rebuilt_without_losing_live_ones(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock, expired = Clock(), list[Any]()
    deadlines: Deadlines[int] = Deadlines(loop, expired.append, clock=clock)
    deadlines.watch(-1, 1500.0)  # stays live through every rebuild
    for i in range(1000):
        deadlines.watch(i, 1100.0 + i)
        deadlines.forget(i)
    assert len(deadlines._heap) <= 2 * len(deadlines) + 65
    clock.now = 3000.0
    deadlines.run_due()
    assert expired == [-1]
    deadlines.close()


def test_the_loop_timer_fires_the_earliest_deadline(loop: asyncio.AbstractEventLoop) -> None:
    """With the real clock: the one timer runs ``run_due`` once the earliest deadline passed."""
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(loop, expired.append, clock=loop.time)

    async def run() -> None:
        deadlines.watch("late", loop.time() + 3600)
        deadlines.watch("soon", loop.time() + 0.01)
        while not expired:
            await asyncio.sleep(0.005)

    loop.run_until_complete(asyncio.wait_for(run(), 30))
    assert expired == ["soon"]
    deadlines.close()
