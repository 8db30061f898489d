"""The public surface: exports, async twins that mirror their sync methods."""

from __future__ import annotations

import inspect

import pytest

import tideflow
from tideflow import TaskManager

EXPECTED_EXPORTS = {
    "HandlerInfo",
    "Page",
    "PermanentError",
    "Status",
    "Task",
    "TaskAttempt",
    "TaskAudit",
    "TaskEvent",
    "TaskInfo",
    "TaskManager",
    "WorkerInfo",
    "WorkflowAudit",
    "__version__",
}

#: coroutines written for asyncio themselves (they wait on the caller's loop, not in a thread)
NATIVE_ASYNC = {"await_task": "wait", "aresult": "result", "await_many": "wait_many"}

TWINS = sorted(
    name[1:]
    for name, value in vars(TaskManager).items()
    if name.startswith("a") and inspect.iscoroutinefunction(value) and name not in NATIVE_ASYNC
)


def test_exports_are_pinned() -> None:
    assert set(tideflow.__all__) == EXPECTED_EXPORTS
    assert TaskManager.__module__ == "tideflow"


def test_every_database_method_has_an_async_twin() -> None:
    database_methods = {
        "setup",
        "submit",
        "submit_many",
        "cron",
        "resume_task",
        "cancel_task",
        "pause_task",
        "retry_task",
        "get_task",
        "get_tasks",
        "get_tasks_by_name",
        "get_tasks_by_status",
        "get_tasks_by_tag",
        "get_child_tasks",
        "get_task_stats_by_tag",
        "delete_tasks",
        "query_tasks",
        "query_task_events",
        "query_task_attempts",
        "query_workflow_events",
        "query_workflow_attempts",
        "get_task_audit",
        "get_workflow_audit",
        "get_workflow_audit_summary",
        "get_workers",
        "get_worker",
    }
    assert database_methods <= set(TWINS)


@pytest.mark.parametrize("name", TWINS)
def test_twin_signature_matches(name: str) -> None:
    sync = getattr(TaskManager, name)
    twin = getattr(TaskManager, f"a{name}")
    assert twin.__wrapped__ is sync  # the twin runs exactly this method (in a thread)
    assert inspect.signature(twin) == inspect.signature(sync)
    assert twin.__name__ == f"a{name}"


@pytest.mark.parametrize(("name", "sync_name"), sorted(NATIVE_ASYNC.items()))
def test_native_async_methods_mirror_their_sync_methods(name: str, sync_name: str) -> None:
    native = getattr(TaskManager, name)
    assert inspect.iscoroutinefunction(native)
    assert not hasattr(native, "__wrapped__")  # not a thread around the blocking method
    sync_params = inspect.signature(getattr(TaskManager, sync_name)).parameters
    assert list(inspect.signature(native).parameters) == list(sync_params)
