"""tideflow.testing.run_until_idle (issue 11, part 4) on every backend: drain mode runs what is
due, children, fan-in and due retries included, and leaves what is due later."""

from __future__ import annotations

from typing import Any

import pytest

from tideflow import PermanentError
from tideflow.errors import InvalidOptionError, WaitTimeoutError
from tideflow.testing import run_until_idle


def test_runs_queued_tasks_and_counts_them(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("double", lambda task: task.payload * 2)
    ids = [tm.submit("double", n) for n in range(5)]

    summary = run_until_idle(tm)

    assert summary["completed"] == 5
    assert summary.counts == {"completed": 5}
    assert sorted(summary.task_ids) == sorted(ids)
    assert summary.delayed == 0
    assert [tm.get_task(i).result for i in ids] == [0, 2, 4, 6, 8]


def test_a_workflow_with_children_is_drained_to_the_end(make_manager: Any) -> None:
    tm = make_manager()

    def ship(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "pack", "payload": i} for i in task.payload["items"]])
        if task.stage == 1:  # the children spawn children of their own first
            return task.next([{"name": "label", "payload": c["result"]} for c in task.result])
        return sorted(c["result"] for c in task.result)

    def pack(task: Any) -> Any:
        if task.stage == 0:
            return task.next({"name": "wrap", "payload": task.payload})
        return f"box-{task.result[0]['result']}"

    tm.use("ship", ship)
    tm.use("pack", pack)
    tm.use("wrap", lambda task: task.payload * 10)
    tm.use("label", lambda task: f"{task.payload}!")
    root = tm.submit("ship", {"items": [1, 2, 3]})

    summary = run_until_idle(tm)

    assert tm.get_task(root).result == ["box-10!", "box-20!", "box-30!"]
    # root + 3 pack + 3 wrap + 3 label, every one completed
    assert summary.counts == {"completed": 10}
    assert summary.total == 10


def test_due_retries_run_and_permanent_failures_are_counted(make_manager: Any) -> None:
    tm = make_manager()

    def flaky(task: Any) -> str:
        if task.attempt < 3:
            raise ConnectionError("try again")
        return "ok"

    def broken(task: Any) -> None:
        raise PermanentError("no")

    tm.use("flaky", flaky, max_retries=3)  # retry_interval 0: each retry is due at once
    tm.use("broken", broken)
    ok = tm.submit("flaky")
    tm.submit("broken")

    summary = run_until_idle(tm)

    assert summary.counts == {"completed": 1, "permanently_failed": 1}
    assert tm.get_task(ok).attempt == 3


def test_delayed_tasks_are_left_and_reported(make_manager: Any) -> None:
    tm = make_manager()
    ran: list[Any] = []
    tm.use("job", lambda task: ran.append(task.payload))
    tm.submit("job", "now")
    later = tm.submit("job", "later", delay=3600)

    summary = run_until_idle(tm, timeout=30)

    assert ran == ["now"]
    assert summary.counts == {"completed": 1}
    assert summary.delayed == 1
    assert tm.get_task(later).status == "pending"


def test_nothing_is_claimed_between_calls_and_work_runs_on_the_next(make_manager: Any) -> None:
    tm = make_manager()
    ran: list[Any] = []
    tm.use("job", lambda task: ran.append(task.payload))
    assert run_until_idle(tm).total == 0  # an empty queue is idle at once
    first = tm.submit("job", 1)
    assert tm.get_task(first).status == "pending"  # drain mode: nothing runs by itself
    assert run_until_idle(tm).task_ids == (first,)
    tm.submit("job", 2)
    assert run_until_idle(tm)["completed"] == 1
    assert ran == [1, 2]


def test_tasks_without_a_handler_here_do_not_keep_it_busy(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    tm.use("here", lambda task: None)
    tm.submit("elsewhere", None)
    tm.use("needs_gpu", lambda task: None, requires=["gpu"])
    tm.submit("needs_gpu", None)
    tm.submit("here", None)

    summary = run_until_idle(tm)

    assert summary.counts == {"completed": 1}


def test_gives_up_after_the_timeout_naming_the_tasks(make_manager: Any) -> None:
    tm = make_manager()

    def forever(task: Any) -> None:
        return task.next({"name": "forever", "payload": None})  # work that keeps making work

    tm.use("forever", forever)
    first = tm.submit("forever")
    with pytest.raises(WaitTimeoutError, match="still running or due") as info:
        run_until_idle(tm, timeout=0.5)
    assert "pass a larger timeout=" in str(info.value)
    assert tm.get_task(first).status == "suspended"


@pytest.mark.parametrize("timeout", [0, -1, "10", None])
def test_a_bad_timeout_is_refused(timeout: Any) -> None:
    from tideflow import TaskManager

    tm = TaskManager()
    try:
        with pytest.raises(InvalidOptionError, match="timeout"):
            run_until_idle(tm, timeout=timeout)
    finally:
        tm.close()


def test_async_handlers_and_the_async_form(make_manager: Any) -> None:
    import asyncio

    from tideflow.testing import arun_until_idle

    tm = make_manager()

    async def greet(task: Any) -> str:
        await task.aprogress("greeting")
        return f"hello {task.payload}"

    tm.use("greet", greet)
    task_id = tm.submit("greet", "ana")

    summary = asyncio.run(arun_until_idle(tm))

    assert summary.counts == {"completed": 1}
    assert tm.get_task(task_id).result == "hello ana"
    assert [e.event_type for e in tm.query_task_events(task_id, event_type="task_progress").items]
