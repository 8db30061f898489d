"""The handler's Task object (SPEC §3, §9): validation and fencing of progress and audit."""

from __future__ import annotations

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
