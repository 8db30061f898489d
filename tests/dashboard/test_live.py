"""Live updates: the server-sent event stream over a real HTTP server (uvicorn in a thread,
read with a streaming client), the change feed's fan-out (one mark read for every reader,
driven by the database's push where there is one), and PostgreSQL's change notifications."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx2")

import httpx2
import uvicorn

from support.wait import wait_for
from tideflow import TaskManager
from tideflow.dashboard import create_app
from tideflow.dashboard.live import ChangeFeed

TOKEN = "s3cret-token-for-live-tests"
#: a guard against a hang, not a timing assertion: a stream that sends nothing fails the test
READ_GUARD = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, message="uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each server-sent event read from ``lines`` (comments skipped)."""
    name, data = "message", ""
    for line in lines:
        if line == "":
            if data:
                yield name, data
            name, data = "message", ""
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data = value


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(f"sqlite:{tmp_path / 'live.db'}", poll_interval=0.02)
    manager.use("step", lambda task: task.payload)
    manager.setup()
    yield manager
    manager.close()


def test_the_stream_says_hello_then_each_change(tm: TaskManager) -> None:
    app = create_app(tm, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(app) as base, httpx2.Client(base_url=base, timeout=READ_GUARD) as client:
        # reading the stream needs the token like every page
        refused = client.get("/events/stream", headers={"Accept": "text/event-stream"})
        assert refused.status_code == 401

        with client.stream("GET", "/events/stream", headers=auth) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            stream = events(response.iter_lines())
            name, hello = next(stream)
            assert name == "hello"
            assert len(hello) == 16

            # a change in the database (here: a task submitted) is announced
            tm.submit("step", 1, delay=3600)
            name, first = next(stream)
            assert name == "change"
            assert first != hello

            # and the next one too, with another mark
            tm.pause_task(tm.query_tasks().items[0].id)
            name, second = next(stream)
            assert name == "change"
            assert second not in (hello, first)

        # a page carries the mark it was rendered at: the script compares the stream's with it
        page = client.get("/tasks", headers=auth)
        assert f'data-mark="{second}"' in page.text
        assert 'id="live-state"' in page.text


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate`` holds (failing after READ_GUARD seconds)."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + READ_GUARD
    while not predicate():
        assert loop.time() < ends, "condition not met"
        await asyncio.sleep(0.005)


class FakeManager:
    """The two calls the feed makes, under the test's control."""

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


def test_one_feed_serves_every_reader_and_follows_the_push() -> None:
    fake = FakeManager()
    # an hour between polls: a change can only arrive through the push channel
    feed = ChangeFeed(fake, interval=3600, pushed_interval=3600, keepalive=3600)  # type: ignore[arg-type]

    async def scenario() -> list[list[bytes]]:
        streams = [feed.stream() for _ in range(5)]
        hellos = [[await anext(s)] for s in streams]
        wait = [asyncio.ensure_future(anext(s)) for s in streams]
        # the feed's reader has subscribed to the push channel and read the mark once
        await until(lambda: fake.wake is not None and fake.reads >= 2)
        assert not any(w.done() for w in wait)
        reads_before = fake.reads
        fake.mark = "b"
        assert fake.wake is not None
        fake.wake()  # as the store's listener thread would, after a NOTIFY
        changes = await asyncio.wait_for(asyncio.gather(*wait), READ_GUARD)
        # one read of the mark for the five readers
        assert fake.reads == reads_before + 1
        for s in streams:
            await s.aclose()
        return [[*h, c] for h, c in zip(hellos, changes, strict=True)]

    got = asyncio.run(scenario())
    assert len(got) == 5
    for hello, change in got:
        assert hello.startswith(b"retry: 2000\nevent: hello\n")
        assert change.startswith(b"event: change\ndata: ")
        assert change != hello
    assert feed.subscribers == 0
    assert fake.unwatched.wait(READ_GUARD)  # the last reader gone, the push channel is closed


def test_postgres_notifies_every_kind_of_change(postgres_url: str) -> None:
    """On PostgreSQL the feed needs no poll: a transaction that changes tasks NOTIFYs, even
    one that makes nothing claimable and finishes nothing (a pause: ``tideflow_changed``)."""
    watcher = TaskManager(postgres_url)
    writer = TaskManager(postgres_url)
    writer.use("step", lambda task: task.payload)
    woke = threading.Event()
    try:
        writer.setup()
        task_id = writer.submit("step", 1, delay=3600)
        unwatch = watcher.watch_changes(woke.set)
        assert unwatch is not None
        try:
            assert woke.wait(READ_GUARD)  # called once on connecting
            for change in (
                lambda: writer.pause_task(task_id),  # tideflow_changed
                lambda: writer.resume_task(task_id),  # claimable again: tideflow_tasks
                lambda: writer.cancel_task(task_id),  # finished: tideflow_done
            ):
                woke.clear()
                change()
                assert woke.wait(READ_GUARD)
        finally:
            unwatch()
    finally:
        writer.close()
        watcher.close()


def test_without_a_push_channel_the_feed_polls(tm: TaskManager) -> None:
    assert tm.watch_changes(lambda: None) is None  # SQLite: no push
    feed = ChangeFeed(tm, interval=0.01)

    async def scenario() -> tuple[bytes, bytes]:
        stream = feed.stream()
        hello = await anext(stream)
        tm.submit("step", 2, delay=3600)
        change = await asyncio.wait_for(anext(stream), READ_GUARD)
        await stream.aclose()
        return hello, change

    hello, change = asyncio.run(scenario())
    assert b"event: hello" in hello
    assert b"event: change" in change


# --- the feed folds a busy database's wake-ups -------------------------------------------------
# PostgreSQL notifies once per transaction, hundreds of times a second; the feed reads the change
# mark at most once per ``min_gap`` whatever the number of wake-ups (reading at each one cost a
# drain beside 20 readers 14%).

#: how long the feed is watched for a read it must not make (a "must not happen" check)
QUIET = 0.3


def pushed_feed(fake: FakeManager, *, min_gap: float) -> ChangeFeed:
    """A feed that reads the mark only when pushed (its timers an hour long)."""
    return ChangeFeed(
        fake,  # type: ignore[arg-type]
        interval=3600,
        pushed_interval=3600,
        keepalive=3600,
        min_gap=min_gap,
    )


def test_wake_ups_within_the_gap_make_no_read() -> None:
    fake = FakeManager()
    feed = pushed_feed(fake, min_gap=3600)

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
    fake = FakeManager()
    feed = pushed_feed(fake, min_gap=0)

    async def scenario() -> bytes:
        stream = feed.stream()
        await anext(stream)
        await until(lambda: fake.wake is not None and fake.reads >= 2)
        fake.mark = "b"
        wake = fake.wake
        assert wake is not None
        wake()
        change = await asyncio.wait_for(anext(stream), READ_GUARD)
        await stream.aclose()
        return change

    assert asyncio.run(scenario()).startswith(b"event: change")
