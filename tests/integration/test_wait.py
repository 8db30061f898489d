"""Waiting for results (issue 11, part 1) and async application life (part 2), on every backend.

``tm.wait`` / ``result`` / ``wait_many`` and their async twins ``await_task`` / ``aresult`` /
``await_many``; ``async with TaskManager(...)``, ``astart`` / ``astop``. Nothing here asserts a
duration: where a test must show that the caller's event loop was not blocked, the work can only
finish if a coroutine on that loop runs meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for, wait_for_status
from tideflow import TaskManager
from tideflow.errors import (
    InvalidOptionError,
    TaskFailedError,
    TaskNotFoundError,
    TideflowError,
    WaitTimeoutError,
)


def _gated(release: threading.Event, result: Any = "done") -> Any:
    def handler(task: Any) -> Any:
        if not release.wait(10):
            raise RuntimeError("the test never released the gate")
        return result

    return handler


def _boom(task: Any) -> None:
    raise ValueError(f"boom {task.payload}")


# --------------------------------------------------------------------------------------------
# wait / result / wait_many


def test_wait_returns_the_completed_task(make_manager: Any) -> None:
    tm = make_manager()
    release = threading.Event()
    tm.use("gated", _gated(release, {"answer": 42}))
    tm.start()
    task_id = tm.submit("gated")
    threading.Timer(0.05, release.set).start()  # finishes while the wait below waits

    info = tm.wait(task_id, timeout=15)

    assert info.id == task_id
    assert info.status == "completed"
    assert info.result == {"answer": 42}
    assert tm.result(task_id, timeout=15) == {"answer": 42}
    assert tm.result(task_id) == {"answer": 42}  # no timeout: a finished task returns at once


def test_wait_returns_a_permanently_failed_task_and_result_raises(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("boom", _boom, max_retries=2)
    tm.start()
    task_id = tm.submit("boom", "x")

    info = tm.wait(task_id, timeout=15)
    assert info.status == "permanently_failed"
    assert info.attempt == 2
    assert info.error is not None
    assert info.error.startswith("ValueError: boom x")

    with pytest.raises(TaskFailedError) as caught:
        tm.result(task_id, timeout=15)
    err = caught.value
    assert isinstance(err, TideflowError)
    assert err.task_id == task_id
    assert err.error == info.error
    assert "Traceback" in err.error
    assert err.task.status == "permanently_failed"
    assert err.task.id == task_id
    message = str(err)
    assert f"task {task_id} (boom)" in message
    assert "ValueError: boom x" in message
    assert f"retry_task({task_id})" in message


def test_result_of_a_cancelled_task_raises_with_the_reason(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("never", lambda task: None)
    tm.setup()  # no worker: the task stays pending until cancelled
    task_id = tm.submit("never")
    tm.cancel_task(task_id, reason="not needed any more")

    with pytest.raises(TaskFailedError) as caught:
        tm.result(task_id, timeout=5)
    assert caught.value.error == "not needed any more"


def test_wait_times_out_naming_the_task_and_its_status(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("idle", lambda task: None)
    tm.setup()  # nobody runs it
    task_id = tm.submit("idle")

    with pytest.raises(WaitTimeoutError) as caught:
        tm.wait(task_id, timeout=0.1)
    err = caught.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, TideflowError)
    assert f"task {task_id} (idle)" in str(err)
    assert "'pending'" in str(err)
    assert "get_unserved_tasks" in str(err)
    with pytest.raises(WaitTimeoutError):
        tm.result(task_id, timeout=0)
    assert tm.get_task(task_id).status == "pending"  # waiting changed nothing


def test_wait_timeout_names_a_running_task(make_manager: Any) -> None:
    tm = make_manager()
    release = threading.Event()
    tm.use("gated", _gated(release))
    tm.start()
    task_id = tm.submit("gated")
    wait_for_status(tm, task_id, "running")
    try:
        with pytest.raises(WaitTimeoutError, match=r"is still 'running'.*handler is still running"):
            tm.wait(task_id, timeout=0.05)
    finally:
        release.set()
    assert tm.wait(task_id, timeout=15).status == "completed"


def test_wait_many_keeps_the_order_given(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("echo", lambda task: task.payload)
    tm.use("boom", _boom, max_retries=1)
    tm.start()
    a = tm.submit("echo", "a")
    b = tm.submit("boom", "b")
    c = tm.submit("echo", "c")

    infos = tm.wait_many([c, a, b, a], timeout=15)

    assert [i.id for i in infos] == [c, a, b, a]
    statuses = [i.status for i in infos]
    assert statuses == ["completed", "completed", "permanently_failed", "completed"]
    assert [infos[0].result, infos[1].result] == ["c", "a"]
    assert tm.wait_many([], timeout=1) == []
    assert [i.id for i in tm.wait_many(iter([b, c]))] == [b, c]


def test_wait_many_times_out_naming_an_unfinished_task(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("echo", lambda task: task.payload)
    tm.setup()
    done = tm.submit("echo", 1)
    tm.cancel_task(done)  # finished: permanently_failed
    idle = tm.submit("echo", 2)

    with pytest.raises(WaitTimeoutError, match=rf"task {idle} \(echo\) is still 'pending'"):
        tm.wait_many([done, idle], timeout=0.05)


def test_unknown_ids_raise_task_not_found(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("echo", lambda task: task.payload)
    tm.setup()
    known = tm.submit("echo", 1)
    with pytest.raises(TaskNotFoundError, match="no task with id 999999"):
        tm.wait(999999, timeout=1)
    with pytest.raises(TaskNotFoundError, match="no task with id 999998"):
        tm.wait_many([known, 999998], timeout=1)
    with pytest.raises(TaskNotFoundError):
        tm.result(999997)
    with pytest.raises(TaskNotFoundError):
        asyncio.run(TaskManager.await_task(tm, 999996, timeout=1))


@pytest.mark.parametrize(
    ("call", "args", "match"),
    [
        ("wait", (1, -1), "timeout must be"),
        ("wait", (1, "10"), "timeout must be"),
        ("wait", (1, math.nan), "timeout must be"),
        ("wait", (1, True), "timeout must be"),
        ("wait", (0, 1), "positive integer"),
        ("wait", (-5, 1), "positive integer"),
        ("wait", ("abc", 1), "task id must be an integer"),
        ("wait", (None, 1), "task id must be an integer"),
        ("wait", (1.5, 1), "task id must be an integer"),
        ("result", (1, -0.5), "timeout must be"),
        ("wait_many", ("123", 1), "list of task ids"),
        ("wait_many", (5, 1), "list of task ids"),
        ("wait_many", ([1, 0], 1), "positive integer"),
        ("wait_many", ([1, "x"], 1), "task id must be an integer"),
        ("wait_many", ([1], -1), "timeout must be"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    make_manager: Any, call: str, args: tuple[Any, ...], match: str
) -> None:
    tm = make_manager()
    tm.use("echo", lambda task: task.payload)
    tm.setup()
    task_id = tm.submit("echo", 1)
    before = (tm.query_tasks().total, tm.query_task_events(task_id).total)

    with pytest.raises(InvalidOptionError, match=match):
        getattr(tm, call)(*args)
    async_call = {"wait": "await_task", "result": "aresult", "wait_many": "await_many"}[call]
    with pytest.raises(InvalidOptionError, match=match):
        asyncio.run(getattr(tm, async_call)(*args))

    assert (tm.query_tasks().total, tm.query_task_events(task_id).total) == before
    assert tm.get_task(task_id).status == "pending"


def test_closing_the_manager_wakes_a_waiter(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("idle", lambda task: None)
    tm.setup()
    task_id = tm.submit("idle")
    failure: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            tm.wait(task_id)  # no timeout: only close() can end it
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    started.wait(5)
    tm.close()
    thread.join(15)
    assert not thread.is_alive()
    assert len(failure) == 1
    assert isinstance(failure[0], TideflowError)
    assert "closed" in str(failure[0])


def test_wait_across_managers(shared_db_url: str, make_manager: Any) -> None:
    """A waiter that runs no worker sees a task another manager finishes (PostgreSQL: by its
    NOTIFY; the others by polling)."""
    worker = make_manager(db=shared_db_url)
    release = threading.Event()
    worker.use("gated", _gated(release, "from the worker"))
    worker.start()
    waiter = make_manager(db=shared_db_url)
    task_id = worker.submit("gated")
    threading.Timer(0.1, release.set).start()

    assert waiter.result(task_id, timeout=15) == "from the worker"


@pytest.fixture
def make_pg_manager(postgres_url: str) -> Iterator[Callable[..., TaskManager]]:
    """Managers on this session's PostgreSQL schema, closed at teardown."""
    made: list[TaskManager] = []

    def factory() -> TaskManager:
        tm = TaskManager(postgres_url, poll_interval=0.02)
        made.append(tm)
        return tm

    yield factory
    for tm in reversed(made):
        tm.close()


def test_postgres_wait_reads_only_after_wake_ups(make_pg_manager: Any) -> None:
    """On PostgreSQL a waiter reads the task when it starts and after each wake-up only: a
    task that takes a while to finish costs no polling queries."""
    worker = make_pg_manager()
    release = threading.Event()
    worker.use("gated", _gated(release, 7))
    worker.start()
    waiter = make_pg_manager()
    waiter.setup()
    task_id = worker.submit("gated")
    wait_for_status(worker, task_id, "running")

    store = waiter._store
    reads: list[int] = []
    real_get = store.get_task

    def counting_get(task_id: int) -> Any:
        reads.append(task_id)
        return real_get(task_id)

    store.get_task = counting_get  # type: ignore[method-assign]
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(waiter.result(task_id, timeout=30)))
    thread.start()
    wait_for(lambda: reads, message="the waiter never read the task")
    # hold the task long enough for a poller (10 ms doubling to 0.5 s) to read it 5+ times
    assert not release.wait(1.2)
    release.set()
    thread.join(30)

    assert result == [7]
    # the first read, one after the listener connected, one after the task's NOTIFY
    assert 2 <= len(reads) <= 3, reads


def test_postgres_notifies_the_ids_of_finished_tasks(
    postgres_url: str, make_pg_manager: Any
) -> None:
    """One NOTIFY per finishing transaction carries the schema and the ids it finished."""
    import psycopg

    from tideflow.store.sql.postgres import DONE_CHANNEL

    tm = make_pg_manager()
    tm.use("echo", lambda task: task.payload)
    tm.use("boom", _boom, max_retries=1)
    tm.setup()
    listen = psycopg.connect(postgres_url.replace("psql://", "postgresql://", 1), autocommit=True)
    try:
        (schema,) = listen.execute("SELECT current_schema()").fetchone()
        listen.execute(f"LISTEN {DONE_CHANNEL}")
        ids = [tm.submit("echo", i) for i in range(5)] + [tm.submit("boom", "x")]
        pending = tm.submit("echo", "never")
        tm.pause_task(pending)
        tm.start()
        tm.wait_many(ids, timeout=15)
        seen: set[int] = set()
        for notify in listen.notifies(timeout=5):
            assert notify.channel == DONE_CHANNEL
            sender, _, ids_text = notify.payload.rpartition(":")
            if sender != schema:
                continue  # another test session's schema on the same database
            seen |= {int(part) for part in ids_text.split(",")}
            if seen >= set(ids):
                break
    finally:
        listen.close()
    assert seen == set(ids)


# --------------------------------------------------------------------------------------------
# async twins and async application life


def test_async_twins_do_not_block_the_loop(make_manager: Any) -> None:
    tm = make_manager()
    release = threading.Event()
    tm.use("gated", _gated(release, "async ok"))
    tm.use("boom", _boom, max_retries=1)
    tm.start()

    async def main() -> None:
        gated = await tm.asubmit("gated")
        failed = await tm.asubmit("boom", "y")

        async def releaser() -> None:
            # runs only while await_task leaves the loop free; the task cannot finish before
            await asyncio.sleep(0.05)
            release.set()

        info, _ = await asyncio.gather(tm.await_task(gated, timeout=15), releaser())
        assert info.status == "completed"
        assert await tm.aresult(gated, timeout=15) == "async ok"
        with pytest.raises(TaskFailedError) as caught:
            await tm.aresult(failed, timeout=15)
        assert caught.value.error is not None
        assert caught.value.error.startswith("ValueError: boom y")
        infos = await tm.await_many([failed, gated], timeout=15)
        assert [(i.id, i.status) for i in infos] == [
            (failed, "permanently_failed"),
            (gated, "completed"),
        ]
        idle = await tm.asubmit("gated")
        release.clear()
        with pytest.raises(WaitTimeoutError, match=rf"task {idle} \(gated\)"):
            await tm.await_task(idle, timeout=0.05)
        release.set()

    asyncio.run(main())


def _gate_setup(tm: TaskManager, loop_ran: threading.Event) -> None:
    """Make the store's setup wait for ``loop_ran``, which only a coroutine on the caller's
    loop sets: entering blocks the loop -> setup never sees it and raises."""
    store = tm._store
    real_setup = store.setup

    def gated_setup() -> None:
        if not loop_ran.wait(10):
            raise AssertionError("the event loop was blocked while the manager set up")
        real_setup()

    store.setup = gated_setup  # type: ignore[method-assign]


def test_async_with_starts_and_stops_without_blocking_the_loop(db_url: str) -> None:
    tm = TaskManager(db_url, poll_interval=0.02)
    tm.use("echo", lambda task: {"echo": task.payload})
    loop_ran = threading.Event()
    _gate_setup(tm, loop_ran)

    async def ticker() -> None:
        await asyncio.sleep(0)
        loop_ran.set()

    async def main() -> Any:
        tick = asyncio.create_task(ticker())
        async with tm as entered:
            assert entered is tm
            await tick
            assert tm.get_workers(status="active")
            task_id = await tm.asubmit("echo", "hi")
            return await tm.aresult(task_id, timeout=15)

    assert asyncio.run(main()) == {"echo": "hi"}
    assert repr(tm).endswith("closed>")
    with pytest.raises(TideflowError, match="closed"):
        tm.get_task(1)


def test_astart_and_astop_do_not_block_the_loop(make_manager: Any) -> None:
    tm = make_manager()
    release = threading.Event()
    tm.use("gated", _gated(release, "finished during astop"))
    loop_ran = threading.Event()
    _gate_setup(tm, loop_ran)

    async def main() -> int:
        async def ticker() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        tick = asyncio.create_task(ticker())
        await tm.astart()
        await tick
        task_id = await tm.asubmit("gated")
        while (await tm.aget_task(task_id)).status != "running":
            await asyncio.sleep(0.01)

        async def releaser() -> None:
            # the running attempt ends only if this runs while astop waits for it
            await asyncio.sleep(0.05)
            release.set()

        await asyncio.gather(tm.astop(timeout=15), releaser())
        return task_id

    task_id = asyncio.run(main())
    info = tm.get_task(task_id)
    assert info.status == "completed"
    assert info.result == "finished during astop"
    assert [w.status for w in tm.get_workers()] == ["stopped"]


@pytest.mark.slow
def test_wait_latency_bench_runs_without_polling_reads(postgres_url: str) -> None:
    """bench/wait_latency.py on a few tasks: it prints its figures and counts no read beyond
    the first one and the one after each task's NOTIFY (the figures themselves are not
    asserted: timing belongs to the bench)."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "wait_latency.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "-n", "20", "--waiters", "2", "--db", postgres_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "commit -> wait returns" in proc.stdout
    assert "(2.00 per wait;" in proc.stdout
    assert "0 beyond that" in proc.stdout
