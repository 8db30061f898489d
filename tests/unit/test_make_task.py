"""tideflow.testing.make_task (issue 11, part 4): a handler's Task without a database."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from tideflow import Task
from tideflow.errors import InvalidOptionError, PayloadError, TaskTimeoutError
from tideflow.testing import Next, Suspend, make_task, recorded


def test_the_task_carries_what_a_worker_would_give() -> None:
    task = make_task({"x": 1}, name="add", id=7, stage=2, attempt=3, tag="math", priority=5)
    assert type(task) is Task
    assert task.payload == {"x": 1}
    assert (task.id, task.name, task.stage, task.attempt) == (7, "add", 2, 3)
    assert (task.tag, task.priority, task.root_id, task.parent_id) == ("math", 5, 7, None)
    assert task.status == "running"
    assert task.result is None
    assert task.context is None


def test_the_payload_goes_through_json_as_in_production() -> None:
    task = make_task({"ids": (1, 2)})
    assert task.payload == {"ids": [1, 2]}  # a tuple is stored as a JSON list
    with pytest.raises(PayloadError, match="the payload of 'task' must be JSON-serialisable"):
        make_task({"when": object()})


def test_a_handler_is_unit_tested_by_calling_it() -> None:
    def double(task: Any) -> int:
        return int(task.payload["x"]) * 2

    assert double(make_task({"x": 21})) == 42


def test_progress_and_audit_are_recorded() -> None:
    def handler(task: Any) -> str:
        first = task.progress("loading", progress_percent=10)
        second = task.audit("loaded", "rows read", {"rows": 3})
        assert second > first
        return "done"

    task = make_task(name="load")
    assert handler(task) == "done"
    progress, checkpoint = recorded(task)
    assert progress.event_type == "task_progress"
    assert progress.metadata == {"progress_text": "loading", "progress_percent": 10.0}
    assert progress.message == "loading"
    assert checkpoint.event_type == "task_checkpoint"
    assert checkpoint.metadata == {"code": "loaded", "rows": 3}
    assert checkpoint.message == "rows read"
    assert checkpoint.task_id == task.id


def test_async_handlers_record_through_aprogress() -> None:
    async def handler(task: Any) -> None:
        await task.aprogress("half", progress_percent=50)
        await task.aaudit("ok")

    task = make_task()
    asyncio.run(handler(task))
    assert [e.event_type for e in recorded(task)] == ["task_progress", "task_checkpoint"]


def test_progress_refuses_bad_input_as_in_production() -> None:
    task = make_task()
    with pytest.raises(ValueError, match="progress_percent must be between 0 and 100"):
        task.progress("x", progress_percent=150)
    assert recorded(task) == []


def test_next_and_suspend_return_the_objects_a_worker_acts_on() -> None:
    def ship(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "pack", "payload": i} for i in task.payload], "ctx")
        if task.stage == 1:
            return task.suspend("awaiting_approval", context=task.context)
        return [c["result"] for c in task.result]

    spawned = ship(make_task([1, 2]))
    assert isinstance(spawned, Next)
    assert spawned.children == [{"name": "pack", "payload": 1}, {"name": "pack", "payload": 2}]
    assert spawned.context == b"ctx"
    waiting = ship(make_task(stage=1, context="ctx"))
    assert waiting == Suspend("awaiting_approval", b"ctx")
    children = [{"task_id": 2, "name": "pack", "status": "completed", "result": "box"}]
    assert ship(make_task(stage=2, result=children)) == ["box"]


def test_check_timeout_uses_the_timeout() -> None:
    make_task(timeout=60).check_timeout()  # well within
    task = make_task(timeout=0.000001)

    def work_until_told(task: Any) -> None:
        while True:
            task.check_timeout()

    with pytest.raises(TaskTimeoutError, match="ran past its timeout"):
        work_until_told(task)


@dataclasses.dataclass
class Order:
    id: int
    skus: list[str]


def test_a_typed_payload_is_the_object() -> None:
    task = make_task(Order(1, ["a"]))
    assert task.payload == Order(1, ["a"])
    typed = make_task({"id": 2, "skus": []}, payload_type=Order)
    assert typed.payload == Order(2, [])
    with pytest.raises(PayloadError, match="field 'id'"):
        make_task({"id": "x", "skus": []}, payload_type=Order)
    with pytest.raises(InvalidOptionError, match="payload_type"):
        make_task({}, payload_type=dict)


def test_recorded_refuses_a_task_not_made_by_make_task() -> None:
    task = make_task()
    object.__setattr__(task, "_write", lambda change: 1)
    with pytest.raises(InvalidOptionError, match=r"tm\.query_task_events"):
        recorded(task)
