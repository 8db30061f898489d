"""The workflow summary's critical path and ordering, on hand-made records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tideflow.core.audit import workflow_summary
from tideflow.core.records import task_info
from tideflow.models import TaskAttempt, TaskInfo
from unit.test_lifecycle import make_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(task_id: int, parent_id: int | None = None) -> TaskInfo:
    return task_info(
        make_row(id=task_id, root_id=1, parent_id=parent_id, name=f"t{task_id}", status="completed")
    )


def attempt(attempt_id: int, task_id: int, seconds: float, number: int = 1) -> TaskAttempt:
    start = T0 + timedelta(seconds=attempt_id)
    return TaskAttempt(
        id=attempt_id,
        task_id=task_id,
        attempt=number,
        worker_id="w1",
        stage=0,
        started_at=start,
        ended_at=start + timedelta(seconds=seconds),
        outcome="completed",
        error=None,
        timeout_flag=False,
        duration_seconds=seconds,
    )


def test_critical_path_follows_the_longest_branch_and_each_tasks_longest_attempt() -> None:
    tasks = [task(1), task(2, 1), task(3, 1), task(4, 3)]
    attempts = [
        attempt(1, 1, 1.0),
        attempt(2, 2, 5.0),  # one long child...
        attempt(3, 3, 2.0),  # ...loses to a shorter one with a long grandchild
        attempt(4, 4, 4.0),
        attempt(5, 4, 1.0, number=2),
    ]
    path = workflow_summary(tasks[0], tasks, attempts, [])["critical_path"]
    assert [n["task_id"] for n in path["nodes"]] == [1, 3, 4]
    assert path["total_duration_seconds"] == 7.0
    assert path["nodes"][2]["attempt"] == 1  # its longest attempt represents task 4


def test_critical_path_ties_go_to_the_lowest_id() -> None:
    tasks = [task(1), task(3, 1), task(2, 1)]
    attempts = [attempt(1, 1, 1.0), attempt(2, 3, 2.0), attempt(3, 2, 2.0)]
    path = workflow_summary(tasks[0], tasks, attempts, [])["critical_path"]
    assert [n["task_id"] for n in path["nodes"]] == [1, 2]


def test_a_deep_chain_needs_no_recursion() -> None:
    depth = 5000
    tasks = [task(1)] + [task(i, i - 1) for i in range(2, depth + 1)]
    attempts = [attempt(i, i, 1.0) for i in range(1, depth + 1)]
    summary = workflow_summary(tasks[0], tasks, attempts, [])
    assert len(summary["critical_path"]["nodes"]) == depth
    assert summary["critical_path"]["total_duration_seconds"] == depth
    assert [a["id"] for a in summary["slowest_attempts"]] == [1, 2, 3, 4, 5]
