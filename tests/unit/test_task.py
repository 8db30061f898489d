"""The handler's Task object (SPEC §3, §9): validation and fencing of progress and audit."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tideflow.core.types import Change
from tideflow.errors import OwnershipLostError
from tideflow.worker.task import AttemptState, Task
from unit.test_lifecycle import BASE

ROW = BASE._replace(status="running", worker_id="w1", attempt=1)


class Writer:
    """Records the changes a task writes; answers with event ids (None once ``lost``)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.lost = False

    def __call__(self, change: Change) -> int | None:
        self.changes.append(change)
        return None if self.lost else len(self.changes)


def make_task(writer: Any) -> Task:
    return Task(ROW, result=None, state=AttemptState(time.monotonic() + 60), write=writer)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("   ",), {}),
        (("",), {}),
        ((), {}),
        ((), {"metadata": {}}),
        ((None,), {"stage_name": None, "progress_percent": None}),
        (("\t\n",), {"progress_percent": 5}),
        (("ok",), {"message": "  "}),
    ],
)
def test_progress_with_nothing_to_report_raises_and_writes_nothing(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    writer = Writer()
    task = make_task(writer)
    with pytest.raises(ValueError, match="progress"):
        task.progress(*args, **kwargs)
    assert writer.changes == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": "halfway"},
        {"stage_name": "resize"},
        {"progress_percent": 0},
        {"message": "note"},
        {"metadata": {"rows": 3}},
    ],
)
def test_progress_with_one_thing_to_report_writes_one_event(kwargs: dict[str, Any]) -> None:
    writer = Writer()
    assert make_task(writer).progress(**kwargs) == 1
    (change,) = writer.changes
    assert [e.event_type for e in change.events] == ["task_progress"]


def test_progress_after_losing_the_fence_raises_ownership_lost() -> None:
    writer = Writer()
    writer.lost = True
    task = make_task(writer)
    with pytest.raises(OwnershipLostError):
        task.progress("x")
    with pytest.raises(OwnershipLostError):
        task.audit("CODE")
    assert len(writer.changes) == 1  # the second call knew it was lost and wrote nothing


# --- aprogress / aaudit: the same checks, the write joins the worker's group commit ---------------
class Queue(Writer):
    """Records changes; ``enqueue`` is what a worker passes (its next group commit)."""

    def enqueue(self, change: Change) -> None:
        self(change)


def make_async_task(writer: Writer, enqueue: Any = None) -> Task:
    return Task(
        ROW,
        result=None,
        state=AttemptState(time.monotonic() + 60),
        write=writer,
        enqueue=enqueue,
    )


def test_aprogress_and_aaudit_queue_their_events_for_the_group_commit() -> None:
    queue = Queue()
    task = make_async_task(queue, queue.enqueue)

    async def handler() -> list[None]:
        return [
            await task.aprogress("half", stage_name="resize", progress_percent=50),
            await task.aaudit("CHECK", "a checkpoint", {"rows": 3}),
        ]

    assert asyncio.run(handler()) == [None, None]
    progress, checkpoint = queue.changes
    assert progress.values["progress_text"] == "half"
    assert progress.events[0].metadata == {
        "stage_name": "resize",
        "progress_text": "half",
        "progress_percent": 50.0,
    }
    assert checkpoint.events[0].event_type == "task_checkpoint"
    assert checkpoint.events[0].metadata == {"code": "CHECK", "rows": 3}


@pytest.mark.parametrize(
    "call",
    [
        lambda task: task.aprogress("   "),
        lambda task: task.aprogress(),
        lambda task: task.aprogress(progress_percent=101),
        lambda task: task.aaudit(""),
        lambda task: task.aaudit("CODE", metadata={"bad": object()}),
    ],
)
def test_async_calls_validate_like_the_sync_ones_and_write_nothing(call: Any) -> None:
    queue = Queue()
    task = make_async_task(queue, queue.enqueue)
    with pytest.raises(ValueError, match=r"progress|code|metadata"):
        asyncio.run(call(task))
    assert queue.changes == []


def test_async_calls_are_fenced_like_the_sync_ones() -> None:
    writer = Writer()
    writer.lost = True
    task = make_async_task(writer)  # no worker queue: written from a thread, fenced
    with pytest.raises(OwnershipLostError):
        asyncio.run(task.aprogress("x"))
    with pytest.raises(OwnershipLostError):
        asyncio.run(task.aaudit("CODE"))
    assert len(writer.changes) == 1  # once lost, nothing more is written


def test_aprogress_does_not_block_the_event_loop_during_the_write() -> None:
    # without an awrite the sync writer runs in a thread; it waits until the loop has run
    # something else, which it could not if the write ran on the loop
    loop_ran = threading.Event()

    def slow_write(change: Change) -> int | None:
        if not loop_ran.wait(10):
            raise AssertionError("the event loop was blocked while the progress was written")
        return 7

    task = make_async_task(slow_write)  # type: ignore[arg-type]

    async def main() -> None:
        pending = asyncio.ensure_future(task.aprogress("working"))
        await asyncio.sleep(0)  # aprogress starts its write
        loop_ran.set()  # this line runs only while the write is off the loop
        await pending

    asyncio.run(main())
