"""One task's life through a worker: success, failures, retries, timeouts, cron (SPEC §3-§5)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.wait import assert_stays, wait_for, wait_for_status
from tideflow import TaskManager
from tideflow.errors import TaskTimeoutError

WORKER = "lifecycle-worker"


def event_types(tm: Any, task_id: int) -> list[str]:
    return [e.event_type for e in tm.query_task_events(task_id).items]


def events(tm: Any, task_id: int) -> list[Any]:
    return list(tm.query_task_events(task_id).items)


def attempts(tm: Any, task_id: int) -> list[Any]:
    return sorted(tm.query_task_attempts(task_id).items, key=lambda a: a.attempt)


def _aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------------------------
# success


def test_success_stores_result_events_and_one_attempt(make_manager: Any) -> None:
    tm = make_manager(worker_id=WORKER)
    seen: dict[str, Any] = {}

    def add(task: Any) -> dict[str, int]:
        seen.update(
            id=task.id,
            name=task.name,
            payload=task.payload,
            status=task.status,
            stage=task.stage,
            parent_id=task.parent_id,
            root_id=task.root_id,
            tag=task.tag,
            priority=task.priority,
            retry_count=task.retry_count,
            attempt=task.attempt,
            worker_id=task.worker_id,
            context=task.context,
            result=task.result,
        )
        return {"sum": task.payload["a"] + task.payload["b"]}

    tm.use("add", add)
    before = datetime.now(UTC)
    task_id = tm.submit("add", {"a": 1, "b": 2}, tag="math", priority=3)
    tm.start()

    info = wait_for_status(tm, task_id, "completed")
    assert info.result == {"sum": 3}
    assert info.error is None
    assert info.type == "async"
    assert info.retry_count == 0
    assert info.root_id == task_id
    assert info.parent_id is None
    assert info.tag == "math"
    assert info.priority == 3
    assert _aware(info.created_at)
    assert info.created_at >= before - timedelta(seconds=1)

    assert seen == {
        "id": task_id,
        "name": "add",
        "payload": {"a": 1, "b": 2},
        "status": "running",
        "stage": 0,
        "parent_id": None,
        "root_id": task_id,
        "tag": "math",
        "priority": 3,
        "retry_count": 0,
        "attempt": 1,
        "worker_id": WORKER,
        "context": None,
        "result": None,
    }

    evs = events(tm, task_id)
    assert [e.event_type for e in evs] == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    assert all(e.task_id == task_id and e.root_id == task_id for e in evs)
    assert evs[0].to_status == "pending"
    assert (evs[-1].from_status, evs[-1].to_status) == ("running", "completed")
    assert [e.attempt for e in evs[1:]] == [1, 1, 1]
    assert {e.worker_id for e in evs[1:]} == {WORKER}
    assert all(_aware(e.event_time) for e in evs)
    assert [e.event_time for e in evs] == sorted(e.event_time for e in evs)

    (att,) = attempts(tm, task_id)
    assert att.attempt == 1
    assert att.outcome == "completed"
    assert att.worker_id == WORKER
    assert att.error is None
    assert att.timeout_flag is False
    assert att.duration_seconds is not None
    assert att.duration_seconds >= 0
    assert att.ended_at is not None
    assert att.ended_at >= att.started_at


def test_handler_may_take_task_and_next(make_manager: Any) -> None:
    tm = make_manager()
    got: list[bool] = []

    def two_args(task: Any, next: Any) -> str:  # fib-flow style signature
        got.append(callable(next))
        return "ok"

    tm.use("two", two_args)
    task_id = tm.submit("two")
    tm.start()
    assert wait_for_status(tm, task_id, "completed").result == "ok"
    assert got == [True]


# --------------------------------------------------------------------------------------------
# failures and retries


def test_failure_uses_all_attempts_then_fails_permanently(make_manager: Any) -> None:
    tm = make_manager(worker_id=WORKER)
    calls: list[tuple[int, int]] = []

    def always_boom(task: Any) -> None:
        calls.append((task.attempt, task.retry_count))
        raise ValueError("boom")

    tm.use("boom", always_boom)
    task_id = tm.submit("boom", {"x": 1}, max_retries=3)
    tm.start()

    info = wait_for_status(tm, task_id, "permanently_failed")
    assert calls == [(1, 0), (2, 1), (3, 2)]
    assert info.retry_count == 2
    assert info.max_retries == 3
    assert info.result is None
    assert info.error is not None
    assert info.error.startswith("ValueError: boom")
    # the formatted traceback follows the first line
    assert "always_boom" in info.error
    assert 'raise ValueError("boom")' in info.error

    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_failed",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_failed",
        "task_permanently_failed",
    ]
    evs = events(tm, task_id)
    assert [e.attempt for e in evs if e.event_type == "task_failed"] == [1, 2, 3]
    assert [e.attempt for e in evs if e.event_type == "task_retry_started"] == [2, 3]
    failed = [e for e in evs if e.event_type == "task_failed"]
    assert [(e.from_status, e.to_status) for e in failed[:2]] == [("running", "failed")] * 2
    assert evs[-1].to_status == "permanently_failed"

    atts = attempts(tm, task_id)
    assert [a.attempt for a in atts] == [1, 2, 3]
    assert [a.outcome for a in atts] == ["failed", "failed", "failed"]
    assert all(a.error is not None and "boom" in a.error for a in atts)
    assert all(a.worker_id == WORKER for a in atts)


def test_fail_then_succeed(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []

    def flaky(task: Any) -> str:
        calls.append(task.attempt)
        if task.attempt == 1:
            raise RuntimeError("first time fails")
        return "second time works"

    tm.use("flaky", flaky)
    task_id = tm.submit("flaky", max_retries=3)
    tm.start()

    info = wait_for_status(tm, task_id, "completed")
    assert calls == [1, 2]
    assert info.result == "second time works"
    assert info.error is None  # cleared on completion
    assert info.retry_count == 1
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_completed",
    ]
    assert [a.outcome for a in attempts(tm, task_id)] == ["failed", "completed"]


@pytest.mark.parametrize("max_retries", [0, 1])
def test_max_retries_zero_and_one_mean_one_attempt(make_manager: Any, max_retries: int) -> None:
    tm = make_manager()
    calls: list[int] = []

    def fail(task: Any) -> None:
        calls.append(task.attempt)
        raise KeyError("nope")

    tm.use("fail", fail)
    task_id = tm.submit("fail", max_retries=max_retries)
    tm.start()

    info = wait_for_status(tm, task_id, "permanently_failed")
    assert calls == [1]
    assert info.retry_count == 0
    assert info.error.startswith("KeyError: ")
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_permanently_failed",
    ]
    assert [a.outcome for a in attempts(tm, task_id)] == ["failed"]


def test_manager_default_max_retries_is_three(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail")
    assert tm.get_task(task_id).max_retries == 3
    tm.start()
    info = wait_for_status(tm, task_id, "permanently_failed")
    assert info.error.startswith("ZeroDivisionError: ")
    assert len(attempts(tm, task_id)) == 3


# --------------------------------------------------------------------------------------------
# backoff


def _failed_event_time(tm: Any, task_id: int) -> datetime:
    failed = [e for e in events(tm, task_id) if e.event_type == "task_failed"]
    assert failed, "no task_failed event"
    return failed[-1].event_time


def test_retry_is_scheduled_in_the_failing_transaction(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail", max_retries=3, retry_interval=100)
    tm.start()

    info = wait_for_status(tm, task_id, "failed")
    failed_at = _failed_event_time(tm, task_id)
    delay = (info.next_run_time - failed_at).total_seconds()
    assert 99.5 <= delay <= 100.5
    assert info.retry_count == 1
    assert event_types(tm, task_id)[-2:] == ["task_failed", "task_retry_scheduled"]
    # not due: nobody claims it again
    assert_stays(
        lambda: tm.get_task(task_id).status == "failed" and len(attempts(tm, task_id)) == 1,
        0.15,
        message="a task whose retry is 100 s away was claimed again",
    )


def test_exponential_backoff_with_jitter_stays_within_bounds(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("fail", lambda task: 1 / 0)
    ids = [
        tm.submit("fail", max_retries=3, retry_interval=1000, retry_backoff="exponential")
        for _ in range(5)
    ]
    tm.start()

    delays = []
    for task_id in ids:
        info = wait_for_status(tm, task_id, "failed")
        assert info.retry_backoff == "exponential"
        failed_at = _failed_event_time(tm, task_id)
        assert info.next_run_time >= failed_at - timedelta(milliseconds=2)
        delay = (info.next_run_time - failed_at).total_seconds()
        # first retry: retry_interval * 2**0, full jitter -> [0, 1000]
        assert -0.002 <= delay <= 1000.5
        delays.append(delay)
    # full jitter: five draws from [0, 1000] are not all the same
    assert len({round(d, 1) for d in delays}) > 1


def test_exponential_backoff_without_jitter_doubles(make_manager: Any) -> None:
    tm = make_manager(retry_jitter=False)
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail", max_retries=3, retry_interval=0.25, retry_backoff="exponential")
    tm.start()

    wait_for_status(tm, task_id, "permanently_failed")
    atts = attempts(tm, task_id)
    assert len(atts) == 3
    gap1 = (atts[1].started_at - atts[0].ended_at).total_seconds()
    gap2 = (atts[2].started_at - atts[1].ended_at).total_seconds()
    assert gap1 >= 0.25 - 0.01  # retry_interval * 2**0
    assert gap2 >= 0.5 - 0.01  # retry_interval * 2**1
    assert gap1 < 0.5 + 1.0
    assert gap2 < 1.0 + 1.0


def test_exponential_backoff_is_capped(make_manager: Any) -> None:
    tm = make_manager(retry_jitter=False, max_retry_interval=5)
    tm.use("fail", lambda task: 1 / 0)
    task_id = tm.submit("fail", max_retries=3, retry_interval=100, retry_backoff="exponential")
    tm.start()

    info = wait_for_status(tm, task_id, "failed")
    delay = (info.next_run_time - _failed_event_time(tm, task_id)).total_seconds()
    assert 4.5 <= delay <= 5.5


# --------------------------------------------------------------------------------------------
# timeouts


def test_sync_timeout_via_check_timeout(make_manager: Any) -> None:
    tm = make_manager()
    observed: list[type[BaseException]] = []

    def slow(task: Any) -> str:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                task.check_timeout()
                time.sleep(0.01)
        except BaseException as exc:
            observed.append(type(exc))
            raise
        return "never"

    tm.use("slow", slow)
    task_id = tm.submit("slow", timeout=0.3, max_retries=2)
    tm.start()

    started = time.monotonic()
    info = wait_for_status(tm, task_id, "permanently_failed")
    assert time.monotonic() - started < 5
    # the worker times the attempt out at its deadline; the handler sees it on its next check
    wait_for(lambda: len(observed) >= 2, timeout=5, message="the handler did not stop twice")
    assert observed == [TaskTimeoutError, TaskTimeoutError]
    assert info.retry_count == 1
    assert info.timeout == pytest.approx(0.3)
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_timed_out",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_timed_out",
        "task_permanently_failed",
    ]
    timed_out = [e for e in events(tm, task_id) if e.event_type == "task_timed_out"]
    assert (timed_out[0].from_status, timed_out[0].to_status) == ("running", "timeout")
    assert all(e.metadata.get("timeout_type") == "total" for e in timed_out)
    atts = attempts(tm, task_id)
    assert [a.outcome for a in atts] == ["timeout", "timeout"]
    assert all(a.timeout_flag for a in atts)
    assert all(a.duration_seconds >= 0.29 for a in atts)


def test_sync_timeout_with_retries_left_stays_timeout(make_manager: Any) -> None:
    tm = make_manager()

    def slow(task: Any) -> None:
        while True:
            task.check_timeout()
            time.sleep(0.01)

    tm.use("slow", slow)
    task_id = tm.submit("slow", timeout=0.2, max_retries=2, retry_interval=100)
    tm.start()
    info = wait_for_status(tm, task_id, "timeout")
    assert info.retry_count == 1
    assert info.next_run_time > datetime.now(UTC) + timedelta(seconds=90)
    assert event_types(tm, task_id)[-2:] == ["task_timed_out", "task_retry_scheduled"]


def test_async_timeout_cancels_the_coroutine(make_manager: Any) -> None:
    tm = make_manager()
    cleaned_up = threading.Event()
    observed: list[type[BaseException]] = []

    async def sleepy(task: Any) -> str:
        try:
            await asyncio.sleep(30)
        except BaseException as exc:
            observed.append(type(exc))
            raise
        finally:
            cleaned_up.set()
        return "never"

    tm.use("sleepy", sleepy)
    task_id = tm.submit("sleepy", timeout=0.3, max_retries=1)
    tm.start()

    started = time.monotonic()
    info = wait_for_status(tm, task_id, "permanently_failed", timeout=10)
    assert time.monotonic() - started < 5
    wait_for(cleaned_up.is_set, timeout=5, message="the coroutine's finally block never ran")
    assert observed == [asyncio.CancelledError]
    assert info.result is None
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_timed_out",
        "task_permanently_failed",
    ]
    (att,) = attempts(tm, task_id)
    assert att.outcome == "timeout"
    assert att.timeout_flag is True
    assert att.duration_seconds < 5


def test_async_handler_success(make_manager: Any) -> None:
    tm = make_manager()

    async def double(task: Any) -> int:
        await asyncio.sleep(0.01)
        return task.payload * 2

    tm.use("double", double)
    task_id = tm.submit("double", 21)
    tm.start()
    assert wait_for_status(tm, task_id, "completed").result == 42


# --------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("bad_result", [{1, 2}, object(), b"bytes"], ids=["set", "object", "bytes"])
def test_non_json_result_fails_the_attempt(make_manager: Any, bad_result: Any) -> None:
    tm = make_manager()
    tm.use("bad", lambda task: bad_result)
    task_id = tm.submit("bad", max_retries=1)
    tm.start()

    info = wait_for_status(tm, task_id, "permanently_failed")
    assert info.result is None
    assert "PayloadError" in info.error.splitlines()[0]
    (att,) = attempts(tm, task_id)
    assert att.outcome == "failed"
    assert event_types(tm, task_id)[-2:] == ["task_failed", "task_permanently_failed"]


def test_result_over_max_payload_bytes_fails_the_attempt(make_manager: Any) -> None:
    tm = make_manager(max_payload_bytes=1000)
    tm.use("big", lambda task: "x" * 5000)
    tm.use("small", lambda task: "x" * 10)
    big = tm.submit("big", max_retries=1)
    small = tm.submit("small", max_retries=1)
    tm.start()

    info = wait_for_status(tm, big, "permanently_failed")
    assert "PayloadError" in info.error.splitlines()[0]
    assert info.result is None
    assert wait_for_status(tm, small, "completed").result == "x" * 10


# --------------------------------------------------------------------------------------------
# cron


def test_cron_runs_every_second_and_returns_to_pending(make_manager: Any) -> None:
    tm = make_manager()
    runs: list[dict[str, Any]] = []

    def tick(task: Any) -> dict[str, int]:
        runs.append(
            {
                "retry_count": task.retry_count,
                "result": task.result,
                "payload": task.payload,
                "stage": task.stage,
            }
        )
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return {"run": len(runs)}

    tm.use("tick", tick)
    cron_id = tm.cron("tick", "* * * * * *", {"n": 1}, max_retries=3)
    info = tm.get_task(cron_id)
    assert info.type == "cron"
    assert info.status == "pending"
    assert info.cron_expr == "* * * * * *"
    assert info.tz
    assert info.next_run_time is not None
    assert info.next_run_time.microsecond < 1000  # a cron tick falls on a whole second
    tm.start()

    def completed_attempts() -> list[Any]:
        done = [a for a in attempts(tm, cron_id) if a.outcome == "completed"]
        return done if len(done) >= 2 else []

    done = wait_for(completed_attempts, timeout=10, message="cron did not complete twice")
    info = tm.get_task(cron_id)
    now = datetime.now(UTC)
    if info.status == "pending":
        assert info.next_run_time > done[-1].ended_at
        assert info.next_run_time > now - timedelta(milliseconds=100)
        assert info.next_run_time.microsecond < 1000
    assert info.type == "cron"
    assert info.retry_count == 0  # reset by the successful run
    assert info.stage == 0

    # run 1 failed (retry_count 0), run 2 was its retry (retry_count 1), run 3 the next tick
    assert [r["retry_count"] for r in runs[:3]] == [0, 1, 0]
    assert all(r["payload"] == {"n": 1} for r in runs)
    assert runs[2]["result"] == {"run": 2}  # a cron run sees the previous run's result
    assert event_types(tm, cron_id)[:11] == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_retry_scheduled",
        "task_claimed",
        "task_retry_started",
        "task_completed",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    completed = [e for e in events(tm, cron_id) if e.event_type == "task_completed"]
    assert all((e.from_status, e.to_status) == ("running", "pending") for e in completed)

    atts = attempts(tm, cron_id)
    # no double run in one second: the tick after the retry is the next second
    assert (atts[2].started_at - atts[0].started_at).total_seconds() >= 0.9
    assert [a.attempt for a in atts] == list(range(1, len(atts) + 1))


def test_cron_without_attempts_left_is_paused(make_manager: Any) -> None:
    tm = make_manager()
    calls: list[int] = []

    def broken(task: Any) -> None:
        calls.append(task.attempt)
        raise RuntimeError("cron broke")

    tm.use("broken", broken)
    cron_id = tm.cron("broken", "* * * * * *", max_retries=1)
    tm.start()

    info = wait_for_status(tm, cron_id, "paused", timeout=10)
    assert info.type == "cron"
    assert info.error.startswith("RuntimeError: cron broke")
    assert event_types(tm, cron_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_failed",
        "task_paused",
    ]
    assert [a.outcome for a in attempts(tm, cron_id)] == ["failed"]
    assert_stays(
        lambda: tm.get_task(cron_id).status == "paused" and calls == [1],
        0.15,
        message="a paused cron task ran again",
    )


# --------------------------------------------------------------------------------------------
# progress, checkpoints, heartbeats


def test_progress_and_audit_write_events(make_manager: Any) -> None:
    tm = make_manager(worker_id=WORKER)
    returned: list[Any] = []

    def steps(task: Any) -> str:
        returned.append(
            task.progress("halfway", stage_name="resize", progress_percent=50, metadata={"k": 1})
        )
        returned.append(task.audit("CHECK_1", "first checkpoint", {"rows": 10}))
        return "done"

    tm.use("steps", steps)
    task_id = tm.submit("steps")
    tm.start()
    info = wait_for_status(tm, task_id, "completed")

    assert (info.current_stage_name, info.progress_text, info.progress_percent) == (
        "resize",
        "halfway",
        50,
    )
    evs = events(tm, task_id)
    assert [e.event_type for e in evs] == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_progress",
        "task_checkpoint",
        "task_completed",
    ]
    progress, checkpoint = evs[3], evs[4]
    assert returned == [progress.id, checkpoint.id]
    assert progress.metadata == {
        "stage_name": "resize",
        "progress_text": "halfway",
        "progress_percent": 50,
        "k": 1,
    }
    assert checkpoint.metadata == {"code": "CHECK_1", "rows": 10}
    assert checkpoint.message == "first checkpoint"
    assert (progress.attempt, checkpoint.attempt) == (1, 1)
    assert (progress.worker_id, checkpoint.worker_id) == (WORKER, WORKER)


def test_async_handlers_progress_joins_the_group_commit(make_manager: Any) -> None:
    """aprogress/aaudit make no database call of their own: their events ride the worker's
    next exchange, in order, before the outcome of the same attempt."""
    tm = make_manager(worker_id=WORKER)
    store = tm._store
    direct: list[Any] = []
    store.append_event = lambda change: direct.append(change)  # the one-event write path
    returned: list[Any] = []

    async def steps(task: Any) -> str:
        returned.append(await task.aprogress("halfway", stage_name="resize", progress_percent=50))
        returned.append(await task.aaudit("CHECK_1", "first checkpoint", {"rows": 10}))
        return "done"

    tm.use("steps", steps)
    task_id = tm.submit("steps")
    tm.start()
    info = wait_for_status(tm, task_id, "completed")

    assert (info.current_stage_name, info.progress_text, info.progress_percent) == (
        "resize",
        "halfway",
        50,
    )
    assert returned == [None, None]
    assert direct == []  # no round trip of their own
    evs = events(tm, task_id)
    assert [e.event_type for e in evs][3:6] == [
        "task_progress",
        "task_checkpoint",
        "task_completed",
    ]
    assert evs[4].metadata == {"code": "CHECK_1", "rows": 10}
    assert (evs[3].attempt, evs[3].worker_id) == (1, WORKER)


def test_progress_and_audit_validate_their_input(make_manager: Any) -> None:
    tm = make_manager()
    errors: list[str] = []

    def bad(task: Any) -> str:
        for call in (
            lambda: task.progress(progress_percent=150),
            lambda: task.progress(progress_percent=-1),
            lambda: task.progress(stage_name=""),
            lambda: task.progress("   "),
            lambda: task.progress(),
            lambda: task.progress("x", metadata={"bad": object()}),
            lambda: task.audit(""),
            lambda: task.audit("CODE", metadata={"bad": {1, 2}}),
        ):
            try:
                call()
            except ValueError:
                errors.append("ValueError")
            except Exception as exc:  # pragma: no cover - reported by the assertion below
                errors.append(type(exc).__name__)
            else:
                errors.append("accepted")
        return "ok"

    tm.use("bad", bad)
    task_id = tm.submit("bad")
    tm.start()
    info = wait_for_status(tm, task_id, "completed")
    assert errors == ["ValueError"] * 8
    assert event_types(tm, task_id) == [
        "task_created",
        "task_claimed",
        "task_started",
        "task_completed",
    ]
    assert info.progress_percent is None


def test_stalled_heartbeat_is_timed_out_by_another_worker(shared_db_url: str) -> None:
    # worker A beats its tasks only every 60 s; worker B treats a beat older than 0.3 s as stalled
    url = shared_db_url
    a = TaskManager(
        url,
        worker_id="rare-beater",
        poll_interval=0.02,
        task_heartbeat_interval=60,
        worker_heartbeat_interval=60,
        worker_heartbeat_timeout=120,
    )
    b = TaskManager(
        url,
        worker_id="observer",
        poll_interval=0.02,
        task_heartbeat_interval=0.1,
        task_heartbeat_timeout=0.3,
        allow_unregistered=True,
    )
    release = threading.Event()
    started = threading.Event()

    def quiet(task: Any) -> str:
        started.set()
        release.wait(10)
        return "late"

    try:
        a.use("quiet", quiet)
        task_id = a.submit("quiet", timeout=60, max_retries=1)
        a.start()
        wait_for(started.is_set, message="the handler never started")
        b.start()

        info = wait_for_status(b, task_id, "permanently_failed", timeout=10)
        assert info.result is None
        timed_out = [e for e in events(b, task_id) if e.event_type == "task_timed_out"]
        assert len(timed_out) == 1
        assert timed_out[0].metadata.get("timeout_type") == "heartbeat"
        assert event_types(b, task_id)[-2:] == ["task_timed_out", "task_permanently_failed"]
        (att,) = attempts(b, task_id)
        assert att.outcome == "timeout"
        assert att.worker_id == "rare-beater"

        release.set()
        # A's late result loses the fence and changes nothing
        assert_stays(
            lambda: (
                b.get_task(task_id).status == "permanently_failed"
                and b.get_task(task_id).result is None
            ),
            0.2,
            message="a fenced-off attempt wrote its late result",
        )
    finally:
        release.set()
        for tm in (a, b):
            tm.stop(timeout=5)
            tm.close()


ROUND_TRIP_VALUES = [
    None,
    0,
    -7,
    2**53 + 1,
    1.5,
    True,
    "text",
    "héllo ✓ 日本",
    [],
    [1, "a", None, [2.5]],
    {},
    {"nested": {"x": [True, None, {"y": "z"}]}},
]


def test_payload_and_result_round_trip(make_manager: Any) -> None:
    tm = make_manager()
    seen: dict[int, Any] = {}

    def echo(task: Any) -> Any:
        seen[task.id] = task.payload
        return task.payload

    tm.use("echo", echo)
    ids = [tm.submit("echo", value) for value in ROUND_TRIP_VALUES]
    assert [tm.get_task(i).payload for i in ids] == ROUND_TRIP_VALUES
    tm.start()
    results = [wait_for_status(tm, i, "completed").result for i in ids]
    assert [seen[i] for i in ids] == ROUND_TRIP_VALUES
    assert results == ROUND_TRIP_VALUES
    assert [type(r) for r in results] == [type(v) for v in ROUND_TRIP_VALUES]


# the batched write paths build their own literals or JSON; every byte must come back unchanged
AWKWARD = [
    'it\'s "quoted"',
    "back\\slash \\' \\\\",
    "percent %s %% %(x)s",
    "new\nline\ttab\r\x1a",
    "héllo 世界 🎉",
    "NULL",
    "",
]


def test_awkward_text_survives_every_batched_write(make_manager: Any) -> None:
    tm = make_manager()

    async def echo(task: Any) -> Any:
        task.progress(task.payload["text"] or "-", progress_percent=50)
        return {"back": task.payload["text"]}

    async def fail(task: Any) -> None:
        raise ValueError(task.payload["text"])

    tm.use("echo", echo)
    tm.use("fail", fail, max_retries=1)
    ok_ids = tm.submit_many([("echo", {"text": t}) for t in AWKWARD])
    bad_ids = tm.submit_many([("fail", {"text": t}) for t in AWKWARD])
    tm.start()
    for task_id, text in zip(ok_ids, AWKWARD, strict=True):
        info = wait_for_status(tm, task_id, "completed")
        assert info.payload == {"text": text}
        assert info.result == {"back": text}
        assert info.progress_text == (text or "-")
    for task_id, text in zip(bad_ids, AWKWARD, strict=True):
        info = wait_for_status(tm, task_id, "permanently_failed")
        assert info.error.startswith(f"ValueError: {text}")
        (attempt,) = tm.query_task_attempts(task_id).items
        assert attempt.outcome == "failed"
        assert attempt.error == info.error
