"""The change feed folds a busy database's wake-ups: PostgreSQL notifies once per transaction,
hundreds of times a second, and the feed reads the change mark at most once per ``min_gap``
whatever the number of wake-ups (reading at each one cost a drain beside 20 readers 14%)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

pytest.importorskip("starlette")

from tideflow.dashboard.live import ChangeFeed

#: a guard against a hang, not a timing assertion
GUARD = 30.0
#: how long the feed is watched for a read it must not make (a "must not happen" check)
QUIET = 0.3


class PushingManager:
    """The two calls the feed makes; ``wake`` is the push channel's callback."""

    def __init__(self) -> None:
        self.mark = "a"
        self.reads = 0
        self.wake: Callable[[], None] | None = None
        self.unwatched = threading.Event()

    def get_change_mark(self) -> str:
        self.reads += 1
        return self.mark

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None]:
        self.wake = wake
        return self.unwatched.set


async def until(predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    ends = loop.time() + GUARD
    while not predicate():
        assert loop.time() < ends, "condition not met"
        await asyncio.sleep(0.005)


def test_wake_ups_within_the_gap_make_no_read() -> None:
    fake = PushingManager()
    feed = ChangeFeed(
        fake,  # type: ignore[arg-type]
        interval=3600,
        pushed_interval=3600,
        keepalive=3600,
        min_gap=3600,
    )

    async def scenario() -> tuple[int, int]:
        stream = feed.stream()
        await anext(stream)  # hello
        await until(lambda: fake.wake is not None and fake.reads >= 2)
        before = fake.reads
        wake = fake.wake
        assert wake is not None
        for i in range(100):  # a busy database: a NOTIFY per transaction
            fake.mark = f"m{i}"
            wake()
        loop = asyncio.get_running_loop()
        ends = loop.time() + QUIET
        while loop.time() < ends:
            assert fake.reads == before
            await asyncio.sleep(0.01)
        after = fake.reads
        await stream.aclose()
        return before, after

    before, after = asyncio.run(scenario())
    assert after == before
    assert feed.subscribers == 0


def test_without_a_gap_a_wake_up_reads_at_once() -> None:
    """The same scenario with ``min_gap=0``: the first wake-up is read (so the test above
    would see a read if the gap did not fold them)."""
    fake = PushingManager()
    feed = ChangeFeed(
        fake,  # type: ignore[arg-type]
        interval=3600,
        pushed_interval=3600,
        keepalive=3600,
        min_gap=0,
    )

    async def scenario() -> bytes:
        stream = feed.stream()
        await anext(stream)
        await until(lambda: fake.wake is not None and fake.reads >= 2)
        fake.mark = "b"
        wake = fake.wake
        assert wake is not None
        wake()
        change = await asyncio.wait_for(anext(stream), GUARD)
        await stream.aclose()
        return change

    assert asyncio.run(scenario()).startswith(b"event: change")
