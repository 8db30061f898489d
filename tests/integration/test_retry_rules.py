"""Which failures retry (issue 11, part 5), through a worker on every backend: PermanentError,
retry_on and no_retry_on fail a task at once whatever attempts are left, and the audit says
why."""

from __future__ import annotations

from typing import Any

from support.wait import wait_for_status
from tideflow import PermanentError


class CardDeclined(PermanentError):
    """An application's own permanent error."""


class Flaky(ConnectionError):
    pass


def final_event(tm: Any, task_id: int, event_type: str) -> Any:
    (event,) = tm.query_task_events(task_id, event_type=event_type).items
    return event


def test_permanent_error_fails_at_once_with_attempts_left(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []

    def charge(task: Any) -> None:
        calls.append(task.attempt)
        raise CardDeclined(f"card of order {task.payload['order']} declined")

    tm.use("charge", charge, max_retries=5)
    task_id = tm.submit("charge", {"order": 7})
    tm.start()

    info = wait_for_status(tm, task_id, "permanently_failed")
    assert calls == [1]
    assert info.retry_count == 0
    assert info.error.startswith("CardDeclined: card of order 7 declined")
    types = [e.event_type for e in tm.query_task_events(task_id).items]
    assert types[-2:] == ["task_failed", "task_permanently_failed"]
    assert "task_retry_scheduled" not in types
    assert final_event(tm, task_id, "task_permanently_failed").metadata == {
        "reason": "no_retry",
        "exception": f"{__name__}.CardDeclined",
        "rule": "PermanentError",
    }
    (attempt,) = tm.query_task_attempts(task_id).items
    assert attempt.outcome == "failed"


def test_retry_on_retries_listed_errors_and_fails_others_at_once(make_manager: Any) -> None:
    tm = make_manager()
    seen: dict[str, list[int]] = {"flaky": [], "broken": []}

    def fetch(task: Any) -> str:
        kind = task.payload
        seen[kind].append(task.attempt)
        if kind == "flaky" and task.attempt < 3:
            raise Flaky("connection reset")
        if kind == "broken":
            raise KeyError("missing")
        return "ok"

    tm.use("fetch", fetch, retry_on=(ConnectionError,), max_retries=4)
    flaky = tm.submit("fetch", "flaky")
    broken = tm.submit("fetch", "broken")
    tm.start()

    assert wait_for_status(tm, flaky, "completed").result == "ok"
    assert seen["flaky"] == [1, 2, 3]  # a subclass of ConnectionError is retried
    info = wait_for_status(tm, broken, "permanently_failed")
    assert seen["broken"] == [1]
    assert info.error.startswith("KeyError: 'missing'")
    assert final_event(tm, broken, "task_permanently_failed").metadata == {
        "reason": "no_retry",
        "exception": "builtins.KeyError",
        "rule": "retry_on",
    }


def test_no_retry_on_fails_listed_errors_at_once(make_manager: Any) -> None:
    tm = make_manager()
    attempts: list[int] = []

    def parse(task: Any) -> None:
        attempts.append(task.attempt)
        raise ValueError("not a number")

    tm.use("parse", parse, no_retry_on=ValueError, max_retries=3)
    task_id = tm.submit("parse", "x")
    tm.start()

    wait_for_status(tm, task_id, "permanently_failed")
    assert attempts == [1]
    assert final_event(tm, task_id, "task_permanently_failed").metadata["rule"] == "no_retry_on"


def test_other_errors_still_use_every_attempt(make_manager: Any) -> None:
    tm = make_manager()
    attempts: list[int] = []

    def parse(task: Any) -> None:
        attempts.append(task.attempt)
        raise RuntimeError("transient")

    tm.use("parse", parse, no_retry_on=(ValueError,), max_retries=3)
    task_id = tm.submit("parse", None)
    tm.start()

    wait_for_status(tm, task_id, "permanently_failed")
    assert attempts == [1, 2, 3]
    # the ordinary last-attempt failure carries no no_retry reason
    assert not final_event(tm, task_id, "task_permanently_failed").metadata


def test_a_cron_task_raising_permanent_error_is_paused(make_manager: Any) -> None:
    tm = make_manager()
    runs: list[int] = []

    def tick(task: Any) -> None:
        runs.append(task.attempt)
        raise PermanentError("configuration is missing")

    tm.use("tick", tick, max_retries=3)
    cron_id = tm.cron("tick", "* * * * * *")
    tm.start()

    info = wait_for_status(tm, cron_id, "paused")
    assert runs == [1]
    assert info.error.startswith("PermanentError: configuration is missing")
    meta = final_event(tm, cron_id, "task_paused").metadata
    assert meta == {
        "reason": "no_retry",
        "exception": "tideflow.PermanentError",
        "rule": "PermanentError",
    }


def test_a_child_failing_for_good_resumes_its_parent_with_the_failure(make_manager: Any) -> None:
    tm = make_manager()

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "child", "payload": 1}])
        return [(c["status"], c["error"].split(":")[0]) for c in task.result]

    def child(task: Any) -> None:
        raise CardDeclined("no")

    tm.use("parent", parent)
    tm.use("child", child, max_retries=4)
    root = tm.submit("parent")
    tm.start()

    info = wait_for_status(tm, root, "completed")
    assert info.result == [["permanently_failed", "CardDeclined"]]
    (kid,) = tm.get_child_tasks(root)
    assert kid.attempt == 1
