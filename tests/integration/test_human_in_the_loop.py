"""Human in the loop and task controls: suspend, resume, cancel, pause, retry (SPEC §5, §7)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from support.wait import assert_stays, wait_for, wait_for_status
from support.workflow import event_types, events, meta, outcomes, snapshot
from tideflow.errors import InvalidTransitionError, TaskNotFoundError

# --------------------------------------------------------------------------------------------
# suspend and resume


def test_suspend_frees_the_slot_and_resume_runs_the_latest_handler(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=1)
    calls: list[tuple[str, int, Any, Any]] = []

    def approval_v1(task: Any) -> Any:
        calls.append(("v1", task.stage, task.context, task.result))
        if task.stage == 0:
            return task.suspend("awaiting_approval", context=b"request-42")
        return "approved by v1"

    def approval_v2(task: Any) -> Any:
        calls.append(("v2", task.stage, task.context, task.result))
        return {"approved": True, "version": 2, "context": task.context.decode()}

    tm.use("approval", approval_v1)
    tm.use("other", lambda task: "other done")
    task_id = tm.submit("approval", priority=5)
    other_id = tm.submit("other")
    tm.start()

    info = wait_for_status(tm, task_id, "suspended")
    assert info.suspend_reason == "awaiting_approval"
    assert info.context == b"request-42"
    assert info.stage == 0
    assert outcomes(tm, task_id) == ["suspended"]
    (suspended,) = events(tm, task_id, "task_suspended")
    assert meta(suspended)["suspend_reason"] == "awaiting_approval"
    assert (suspended.from_status, suspended.to_status) == ("running", "suspended")

    # with one slot, the other task runs while this one waits for a person
    assert wait_for_status(tm, other_id, "completed").result == "other done"
    assert tm.get_task(task_id).status == "suspended"

    tm.use("approval", approval_v2)  # a new version is deployed while the task waits
    tm.resume_task(task_id, resume_reason="approved by bob")

    info = wait_for_status(tm, task_id, "completed")
    assert info.result == {"approved": True, "version": 2, "context": "request-42"}
    assert info.stage == 1
    assert calls == [("v1", 0, None, None), ("v2", 1, b"request-42", None)]
    assert outcomes(tm, task_id) == ["suspended", "completed"]
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_suspended",
        "task_resumed",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    (resumed,) = events(tm, task_id, "task_resumed")
    assert meta(resumed)["resume_reason"] == "approved by bob"
    assert (resumed.from_status, resumed.to_status) == ("suspended", "pending")
    assert resumed.stage == 1


def test_resume_without_reason_is_manual(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("ask", lambda task: task.suspend("ask") if task.stage == 0 else task.stage)
    task_id = tm.submit("ask")
    tm.start()
    wait_for_status(tm, task_id, "suspended")
    tm.resume_task(task_id)
    assert wait_for_status(tm, task_id, "completed").result == 1
    (resumed,) = events(tm, task_id, "task_resumed")
    assert meta(resumed)["resume_reason"] == "manual"


def test_suspend_twice_then_resume_twice(make_manager: Any) -> None:
    tm = make_manager()
    stages: list[int] = []

    def two_approvals(task: Any) -> Any:
        stages.append(task.stage)
        if task.stage < 2:
            return task.suspend(f"approval_{task.stage}", context=f"c{task.stage}".encode())
        return task.context.decode()

    tm.use("two", two_approvals)
    task_id = tm.submit("two")
    tm.start()
    assert wait_for_status(tm, task_id, "suspended").suspend_reason == "approval_0"
    tm.resume_task(task_id, resume_reason="first")
    wait_for(
        lambda: tm.get_task(task_id).suspend_reason == "approval_1",
        message="the task did not suspend a second time",
    )
    tm.resume_task(task_id, resume_reason="second")
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "c1"
    assert stages == [0, 1, 2]
    assert [meta(e)["resume_reason"] for e in events(tm, task_id, "task_resumed")] == [
        "first",
        "second",
    ]
    assert outcomes(tm, task_id) == ["suspended", "suspended", "completed"]


# --------------------------------------------------------------------------------------------
# cancel, context, filters


def test_cancel_a_suspension_with_a_reason(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []

    def ask(task: Any) -> Any:
        calls.append(task.stage)
        return task.suspend("awaiting_approval")

    tm.use("ask", ask)
    task_id = tm.submit("ask")
    tm.start()
    wait_for_status(tm, task_id, "suspended")

    tm.cancel_task(task_id, reason="rejected")

    info = tm.get_task(task_id)
    assert info.status == "permanently_failed"
    assert info.error is not None
    assert info.error == "rejected"
    cancelled = events(tm, task_id)[-1]
    assert cancelled.event_type == "task_cancelled"
    assert (cancelled.from_status, cancelled.to_status) == ("suspended", "permanently_failed")
    assert outcomes(tm, task_id) == ["suspended"]  # no attempt was running
    assert_stays(
        lambda: tm.get_task(task_id).status == "permanently_failed" and calls == [0],
        0.2,
        message="a cancelled task ran again",
    )


def test_binary_context_round_trips(make_manager: Any) -> None:
    tm = make_manager()
    blob = bytes(range(256))
    seen: list[Any] = []

    def keep(task: Any) -> Any:
        if task.stage == 0:
            return task.suspend("hold", context=blob)
        seen.append(task.context)
        return len(task.context)

    tm.use("keep", keep)
    task_id = tm.submit("keep")
    tm.start()

    info = wait_for_status(tm, task_id, "suspended")
    assert info.context == blob
    assert isinstance(info.context, bytes)
    tm.resume_task(task_id)
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == 256
    assert seen == [blob]
    assert type(seen[0]) is bytes
    assert info.context == blob


def test_find_suspended_tasks_by_reason(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("ask", lambda task: task.suspend(task.payload))
    tm.use("done", lambda task: "x")
    a1 = tm.submit("ask", "a")
    a2 = tm.submit("ask", "a")
    b1 = tm.submit("ask", "b")
    finished = tm.submit("done")
    tm.start()
    for task_id in (a1, a2, b1):
        wait_for_status(tm, task_id, "suspended")
    wait_for_status(tm, finished, "completed")

    assert {t.id for t in tm.get_tasks_by_status("suspended", suspend_reason="a")} == {a1, a2}
    assert {t.id for t in tm.get_tasks_by_status("suspended", suspend_reason="b")} == {b1}
    assert tm.get_tasks_by_status("suspended", suspend_reason="c") == []
    assert {t.id for t in tm.get_tasks_by_status("suspended")} == {a1, a2, b1}
    assert all(t.suspend_reason == "a" for t in tm.get_tasks_by_status("suspended", "a"))


def test_suspended_task_is_untouched_by_timeout_sweeps(make_manager: Any) -> None:
    tm = make_manager(task_heartbeat_interval=0.05, task_heartbeat_timeout=0.2)
    calls: list[int] = []
    tm.use("ask", lambda task: calls.append(task.stage) or task.suspend("awaiting_approval"))
    task_id = tm.submit("ask", timeout=0.3, max_retries=3)
    tm.start()
    wait_for_status(tm, task_id, "suspended")
    before = event_types(tm, task_id)

    assert_stays(
        lambda: (
            tm.get_task(task_id).status == "suspended"
            and event_types(tm, task_id) == before
            and calls == [0]
        ),
        1.0,
        message=lambda: (
            f"a suspended task changed by itself: {tm.get_task(task_id).status},"
            f" {event_types(tm, task_id)}"
        ),
    )
    info = tm.get_task(task_id)
    assert info.retry_count == 0
    assert info.error is None
    assert outcomes(tm, task_id) == ["suspended"]
    assert "task_timed_out" not in event_types(tm, task_id)


# --------------------------------------------------------------------------------------------
# wrong-state calls


def _assert_rejected(tm: Any, task_id: int, call: Any) -> None:
    before = snapshot(tm, task_id)
    with pytest.raises(InvalidTransitionError):
        call(task_id)
    assert snapshot(tm, task_id) == before


def test_wrong_state_calls_are_rejected_and_change_nothing(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    tm.use("done", lambda task: "ok")
    tm.use("ask", lambda task: task.suspend("awaiting_approval"))
    tm.use("parent", lambda task: task.next({"name": "remote"}))  # nobody serves "remote"
    completed = tm.submit("done")
    suspended = tm.submit("ask")
    parent = tm.submit("parent")
    tm.start()
    wait_for_status(tm, completed, "completed")
    wait_for_status(tm, suspended, "suspended")
    info = wait_for_status(tm, parent, "suspended")
    assert info.suspend_reason == "awaiting_subtasks"
    (child,) = tm.get_child_tasks(parent)
    assert child.status == "pending"
    remote = child.id

    _assert_rejected(tm, completed, tm.resume_task)
    _assert_rejected(tm, completed, tm.cancel_task)
    _assert_rejected(tm, completed, tm.retry_task)
    _assert_rejected(tm, completed, tm.pause_task)
    _assert_rejected(tm, suspended, tm.pause_task)
    _assert_rejected(tm, suspended, tm.retry_task)
    # a parent waiting for its children resumes only when they finish
    _assert_rejected(tm, parent, tm.resume_task)
    _assert_rejected(tm, parent, lambda i: tm.resume_task(i, resume_reason="by hand"))
    # a pending task nobody here serves
    _assert_rejected(tm, remote, tm.resume_task)
    _assert_rejected(tm, remote, tm.retry_task)
    assert tm.get_task(parent).status == "suspended"
    assert tm.get_task(remote).status == "pending"


def test_wrong_state_calls_on_a_pending_task(make_manager: Any) -> None:
    tm = make_manager()  # never started: the task stays pending
    tm.use("job", lambda task: None)
    task_id = tm.submit("job")
    _assert_rejected(tm, task_id, tm.resume_task)
    _assert_rejected(tm, task_id, tm.retry_task)
    assert tm.get_task(task_id).status == "pending"


@pytest.mark.parametrize("control", ["resume_task", "cancel_task", "pause_task", "retry_task"])
def test_unknown_id_is_task_not_found(make_manager: Any, control: str) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)
    tm.submit("job")
    with pytest.raises(TaskNotFoundError):
        getattr(tm, control)(987654)
    assert tm.get_task(987654) is None


# --------------------------------------------------------------------------------------------
# pause, resume and retry


def test_pause_and_resume_a_pending_task(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []
    tm.use("job", lambda task: calls.append(task.attempt) or "ran")
    task_id = tm.submit("job")

    # before start: nothing else can touch the task
    tm.pause_task(task_id)
    info = tm.get_task(task_id)
    assert info.status == "paused"
    assert event_types(tm, task_id) == ["task_created", "task_paused"]
    (paused,) = events(tm, task_id, "task_paused")
    assert (paused.from_status, paused.to_status) == ("pending", "paused")

    tm.resume_task(task_id)
    info = tm.get_task(task_id)
    assert info.status == "pending"
    assert info.retry_count == 0
    (resumed,) = events(tm, task_id, "task_resumed")
    assert (resumed.from_status, resumed.to_status) == ("paused", "pending")

    # paused again, a running worker leaves it alone until it is resumed
    tm.pause_task(task_id)
    tm.start()
    assert_stays(
        lambda: tm.get_task(task_id).status == "paused" and calls == [],
        0.2,
        message="a paused task was claimed",
    )
    tm.resume_task(task_id)
    assert wait_for_status(tm, task_id, "completed").result == "ran"
    assert calls == [1]
    assert event_types(tm, task_id) == [
        "task_created",
        "task_paused",
        "task_resumed",
        "task_paused",
        "task_resumed",
        "task_claimed",
        "task_started",
        "task_completed",
    ]


def test_pause_a_failed_task_then_resume_resets_retry_count(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []

    def flaky(task: Any) -> str:
        calls.append(task.retry_count)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return "second try works"

    tm.use("flaky", flaky)
    task_id = tm.submit("flaky", max_retries=3, retry_interval=100)
    tm.start()
    info = wait_for_status(tm, task_id, "failed")
    assert info.retry_count == 1

    tm.pause_task(task_id)
    assert tm.get_task(task_id).status == "paused"
    tm.resume_task(task_id)  # due at once, fresh attempts
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "second try works"
    assert calls == [0, 0]
    assert outcomes(tm, task_id) == ["failed", "completed"]


def test_retry_a_permanently_failed_task(make_manager: Any) -> None:
    tm = make_manager(max_concurrent_tasks=1)
    calls: list[tuple[int, int]] = []
    fail = threading.Event()
    fail.set()
    release = threading.Event()

    def sometimes(task: Any) -> str:
        calls.append((task.attempt, task.retry_count))
        if fail.is_set():
            raise RuntimeError("down")
        return "up"

    def hold(task: Any) -> str:
        release.wait(10)
        return "held"

    tm.use("job", sometimes)
    tm.use("hold", hold)
    task_id = tm.submit("job", max_retries=2)
    tm.start()
    info = wait_for_status(tm, task_id, "permanently_failed")
    assert info.retry_count == 1
    assert info.error.startswith("RuntimeError: down")

    # the only slot is taken, so the retried task stays visibly pending
    hold_id = tm.submit("hold")
    wait_for_status(tm, hold_id, "running")
    fail.clear()
    tm.retry_task(task_id)
    info = tm.get_task(task_id)
    assert info.status == "pending"
    assert info.retry_count == 0
    resumed = events(tm, task_id)[-1]
    assert resumed.event_type == "task_resumed"
    assert (resumed.from_status, resumed.to_status) == ("permanently_failed", "pending")

    release.set()
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "up"
    assert info.error is None
    assert calls == [(1, 0), (2, 1), (3, 0)]
    assert outcomes(tm, task_id) == ["failed", "failed", "completed"]
    types = event_types(tm, task_id)
    assert types[-5:] == [
        "task_permanently_failed",
        "task_resumed",
        "task_claimed",
        "task_retry_started",  # SPEC §5: the previous round failed
        "task_completed",
    ]


def test_retry_keeps_the_workflow_stage(make_manager: Any) -> None:
    tm = make_manager()
    stage0: list[int] = []
    fail = threading.Event()
    fail.set()

    def parent(task: Any) -> Any:
        if task.stage == 0:
            stage0.append(task.attempt)
            return task.next({"name": "leaf", "payload": 4}, context=b"kept")
        if fail.is_set():
            raise RuntimeError("stage 1 broke")
        return {"leaf": task.result[0]["result"], "context": task.context.decode()}

    tm.use("parent", parent)
    tm.use("leaf", lambda task: task.payload + 1)
    parent_id = tm.submit("parent", max_retries=1)
    tm.start()
    info = wait_for_status(tm, parent_id, "permanently_failed")
    assert info.stage == 1

    fail.clear()
    tm.retry_task(parent_id)
    info = wait_for_status(tm, parent_id, "completed")
    assert info.result == {"leaf": 5, "context": "kept"}
    assert stage0 == [1]
    assert len(tm.get_child_tasks(parent_id)) == 1
    assert outcomes(tm, parent_id) == ["suspended", "failed", "completed"]
    # each claim says whether the round before it failed: the first round, the one after the
    # children finished (the round before was suspended), then the one after retry_task
    starts = [t for t in event_types(tm, parent_id) if t in ("task_started", "task_retry_started")]
    assert starts == ["task_started", "task_started", "task_retry_started"]
