"""Bad calls raise the specific error and write nothing (SPEC §4, §5, §13, Appendix A)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from support.wait import wait_for_status
from tideflow import TaskManager
from tideflow.errors import (
    HandlerRegistrationError,
    InvalidCronError,
    InvalidOptionError,
    InvalidStatusError,
    InvalidTransitionError,
    PayloadError,
    TaskNotFoundError,
    TideflowError,
)

MISSING_ID = 987_654


def handler(task: Any) -> None:
    return None


def snapshot(tm: Any) -> list[dict[str, Any]]:
    """Every task row with its event count: what a failed call must leave untouched."""
    rows = []
    for info in sorted(tm.get_tasks(), key=lambda t: t.id):
        row = info.to_dict()
        row["_events"] = tm.query_task_events(info.id).total
        rows.append(row)
    return rows


def assert_refused(tm: Any, error: type[BaseException], call: Callable[[], Any]) -> None:
    before = snapshot(tm)
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value), "the error message must say what was wrong"
    assert snapshot(tm) == before


@pytest.fixture
def tm(make_manager: Any) -> Any:
    """A manager (not started) with one registered handler and one existing task."""
    manager = make_manager()
    manager.use("job", handler)
    manager.submit("job", {"existing": True})
    return manager


# --------------------------------------------------------------------------------------------
# registration


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("x", 42), id="not-callable"),
        pytest.param(("x", "handler"), id="string-handler"),
        pytest.param(("x", {"handler": 42}), id="dict-not-callable"),
        pytest.param(("x", {"timeout": 5}), id="dict-without-handler"),
        pytest.param(("x", {"handler": handler, "parameters": {}}), id="parameters-key"),
        pytest.param(("x", {"handler": handler, "output": {}}), id="output-key"),
        pytest.param(("x", {"handler": handler, "bogus": 1}), id="unknown-key"),
        pytest.param(({"x": {"timeout": 5}},), id="bulk-without-handler"),
        pytest.param(({"x": 42},), id="bulk-not-callable"),
        pytest.param(("", handler), id="blank-name"),
        pytest.param(("   ", handler), id="whitespace-name"),
        pytest.param((123, handler), id="non-string-name"),
    ],
)
def test_bad_registration(tm: Any, args: tuple[Any, ...]) -> None:
    assert_refused(tm, HandlerRegistrationError, lambda: tm.use(*args))
    # nothing was registered
    with pytest.raises(HandlerRegistrationError):
        tm.submit("x")


@pytest.mark.parametrize("option", ["bogus", "parameters", "output"])
def test_unknown_keyword_option_at_registration(tm: Any, option: str) -> None:
    assert_refused(tm, HandlerRegistrationError, lambda: tm.use("x", handler, **{option: 1}))
    with pytest.raises(HandlerRegistrationError):
        tm.submit("x")


def test_unknown_option_in_decorator(tm: Any) -> None:
    def report(task: Any) -> None:
        return None

    assert_refused(tm, HandlerRegistrationError, lambda: tm.task("report", bogus=1)(report))
    with pytest.raises(HandlerRegistrationError):
        tm.submit("report")


def test_bad_option_value_at_registration(tm: Any) -> None:
    # a bad value is refused at registration (either error is a clear refusal)
    assert_refused(
        tm,
        (HandlerRegistrationError, InvalidOptionError),  # type: ignore[arg-type]
        lambda: tm.use("x", handler, priority=21),
    )
    with pytest.raises(HandlerRegistrationError):
        tm.submit("x")


# --------------------------------------------------------------------------------------------
# submit


def test_unregistered_name_at_submit(tm: Any) -> None:
    assert_refused(tm, HandlerRegistrationError, lambda: tm.submit("nobody"))
    assert_refused(tm, HandlerRegistrationError, lambda: tm.cron("nobody", "* * * * * *"))


def test_unregistered_name_allowed_for_a_client(make_manager: Any) -> None:
    client = make_manager(allow_unregistered=True)
    task_id = client.submit("remote_job", {"x": 1})
    cron_id = client.cron("remote_cron", "0 0 3 * * *")
    assert client.get_task(task_id).status == "pending"
    assert client.get_task(cron_id).type == "cron"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"priority": 21}, id="priority-21"),
        pytest.param({"priority": -21}, id="priority-minus-21"),
        pytest.param({"priority": "high"}, id="priority-text"),
        pytest.param({"delay": -1}, id="negative-delay"),
        pytest.param({"delay": timedelta(seconds=-5)}, id="negative-timedelta"),
        pytest.param({"run_at": datetime(2030, 1, 1, 12, 0)}, id="naive-run-at"),
        pytest.param({"run_at": "2030-01-01"}, id="run-at-text"),
        pytest.param({"timeout": -1}, id="negative-timeout"),
        pytest.param({"max_retries": -1}, id="negative-max-retries"),
        pytest.param({"retry_interval": -1}, id="negative-retry-interval"),
        pytest.param({"retry_backoff": "linear"}, id="unknown-backoff"),
    ],
)
def test_bad_option_value_at_submit(tm: Any, options: dict[str, Any]) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.submit("job", {"ok": 1}, **options))


@pytest.mark.parametrize("priority", [21, -21])
def test_bad_priority_at_cron(tm: Any, priority: int) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.cron("job", "* * * * * *", priority=priority))


def test_priority_bounds_are_inclusive(tm: Any) -> None:
    high = tm.submit("job", priority=20)
    low = tm.submit("job", priority=-20)
    assert (tm.get_task(high).priority, tm.get_task(low).priority) == (20, -20)


def test_unknown_option_at_submit(tm: Any) -> None:
    assert_refused(
        tm,
        (InvalidOptionError, TypeError),  # type: ignore[arg-type]
        lambda: tm.submit("job", {"ok": 1}, bogus=1),
    )


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({1, 2}, id="set"),
        pytest.param(object(), id="object"),
        pytest.param({"nested": object()}, id="nested-object"),
        pytest.param(b"raw", id="bytes"),
    ],
)
def test_non_json_payload(tm: Any, payload: Any) -> None:
    assert_refused(tm, PayloadError, lambda: tm.submit("job", payload))


def test_payload_over_max_payload_bytes(make_manager: Any) -> None:
    tm = make_manager(max_payload_bytes=1000)
    tm.use("job", handler)
    tm.submit("job", {"s": "x" * 100})
    assert_refused(tm, PayloadError, lambda: tm.submit("job", {"s": "x" * 2000}))
    assert_refused(tm, PayloadError, lambda: tm.submit_many([("job", {"s": "x" * 2000})]))


def test_default_max_payload_is_one_mebibyte(tm: Any) -> None:
    tm.submit("job", {"s": "x" * 500_000})
    assert_refused(tm, PayloadError, lambda: tm.submit("job", {"s": "x" * (1024 * 1024 + 10)}))


def test_submit_many_with_one_bad_item(tm: Any) -> None:
    assert_refused(
        tm, PayloadError, lambda: tm.submit_many([("job", {"a": 1}), ("job", {"b": object()})])
    )
    assert_refused(
        tm, HandlerRegistrationError, lambda: tm.submit_many([("job", {}), ("nobody", {})])
    )


def test_blank_task_name_at_submit(make_manager: Any) -> None:
    client = make_manager(allow_unregistered=True)
    client.submit("job")
    # SPEC names no single error for a blank name at submit: a bad value (InvalidOptionError)
    # or a bad name (HandlerRegistrationError) are both clear refusals
    refused = (InvalidOptionError, HandlerRegistrationError)
    assert_refused(client, refused, lambda: client.submit(""))  # type: ignore[arg-type]
    assert_refused(client, refused, lambda: client.submit("   "))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# cron


@pytest.mark.parametrize(
    "expr",
    [
        "not a cron",
        "61 * * * * *",
        "* * * * * * * *",
        "",
        "* * 32 * * *",
    ],
)
def test_bad_cron_expression(tm: Any, expr: str) -> None:
    assert_refused(tm, InvalidCronError, lambda: tm.cron("job", expr))


def test_bad_cron_zone(tm: Any) -> None:
    assert_refused(tm, InvalidCronError, lambda: tm.cron("job", "0 0 3 * * *", tz="Mars/Olympus"))


def test_good_cron_with_zone(tm: Any) -> None:
    cron_id = tm.cron("job", "0 0 3 * * *", {"p": 1}, tz="Europe/Paris")
    info = tm.get_task(cron_id)
    assert info.tz == "Europe/Paris"
    assert info.cron_expr == "0 0 3 * * *"
    local = info.next_run_time.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (3, 0, 0)


# --------------------------------------------------------------------------------------------
# queries


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda tm: tm.get_tasks(status="bogus"), id="get_tasks"),
        pytest.param(lambda tm: tm.get_tasks_by_status("done"), id="get_tasks_by_status"),
        pytest.param(lambda tm: tm.query_tasks(status="finished"), id="query_tasks"),
        pytest.param(lambda tm: tm.get_task_stats_by_tag("t", status="x"), id="stats_by_tag"),
    ],
)
def test_unknown_status_filter(tm: Any, call: Callable[[Any], Any]) -> None:
    assert_refused(tm, InvalidStatusError, lambda: call(tm))


def test_get_task_of_missing_id_is_none(tm: Any) -> None:
    assert tm.get_task(MISSING_ID) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"limit": -1}, id="negative-limit"),
        pytest.param({"limit": "ten"}, id="text-limit"),
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"order": "sideways"}, id="bad-order"),
    ],
)
def test_bad_paging(tm: Any, kwargs: dict[str, Any]) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.query_tasks(**kwargs))


def test_bad_order_in_audit_queries(tm: Any) -> None:
    task_id = tm.get_tasks()[0].id
    assert_refused(tm, InvalidOptionError, lambda: tm.query_task_events(task_id, order="up"))
    assert_refused(tm, InvalidOptionError, lambda: tm.query_task_events(task_id, limit=-5))


def test_delete_tasks_needs_a_filter(tm: Any) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.delete_tasks())
    assert_refused(tm, InvalidStatusError, lambda: tm.delete_tasks(status="bogus"))


# --------------------------------------------------------------------------------------------
# control calls


@pytest.mark.parametrize("control", ["resume_task", "cancel_task", "pause_task", "retry_task"])
def test_control_call_on_missing_id(tm: Any, control: str) -> None:
    assert_refused(tm, TaskNotFoundError, lambda: getattr(tm, control)(MISSING_ID))


def test_control_calls_in_the_wrong_state(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: "done")
    tm.start()
    done = tm.submit("job")
    wait_for_status(tm, done, "completed")
    tm.pause()
    pending = tm.submit("job")

    assert_refused(tm, InvalidTransitionError, lambda: tm.resume_task(done))
    assert_refused(tm, InvalidTransitionError, lambda: tm.retry_task(done))
    assert_refused(tm, InvalidTransitionError, lambda: tm.pause_task(done))
    assert_refused(tm, InvalidTransitionError, lambda: tm.cancel_task(done))
    assert_refused(tm, InvalidTransitionError, lambda: tm.retry_task(pending))
    assert_refused(tm, InvalidTransitionError, lambda: tm.resume_task(pending))
    assert tm.get_task(done).status == "completed"
    assert tm.get_task(pending).status == "pending"

    # allowed calls still work afterwards: pause -> resume -> cancel
    tm.pause_task(pending)
    assert tm.get_task(pending).status == "paused"
    assert_refused(tm, InvalidTransitionError, lambda: tm.pause_task(pending))
    tm.resume_task(pending)
    assert tm.get_task(pending).status == "pending"
    tm.cancel_task(pending, reason="not needed")
    cancelled = tm.get_task(pending)
    assert cancelled.status == "permanently_failed"
    assert "not needed" in cancelled.error
    assert_refused(tm, InvalidTransitionError, lambda: tm.cancel_task(pending))
    assert_refused(tm, InvalidTransitionError, lambda: tm.resume_task(pending))


# --------------------------------------------------------------------------------------------
# manager options


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"bogus": 1}, id="unknown-option"),
        pytest.param({"parameters": {}}, id="parameters"),
        pytest.param({"priority": 21}, id="priority-21"),
        pytest.param({"max_concurrent_tasks": -1}, id="negative-concurrency"),
        pytest.param({"poll_interval": -1}, id="negative-poll"),
        pytest.param({"timeout": -1}, id="negative-timeout"),
        pytest.param({"retry_backoff": "linear"}, id="unknown-backoff"),
        pytest.param({"max_payload_bytes": -1}, id="negative-max-payload"),
    ],
)
def test_bad_manager_option(make_manager: Any, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        make_manager(**options)


def test_bad_manager_option_leaves_file_untouched(db_file: str) -> None:
    with pytest.raises(InvalidOptionError):
        TaskManager(f"sqlite:{db_file}", bogus=1)
    assert not Path(db_file).exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_concurrency": 0}, id="zero-concurrency"),
        pytest.param({"retry_strategy": {"bogus": 1}}, id="unknown-strategy-key"),
        pytest.param({"retry_strategy": {"backoff": "linear"}}, id="unknown-backoff"),
        pytest.param({"retry_strategy": {"max_attempts": -1}}, id="negative-attempts"),
        pytest.param({"capabilities": [""]}, id="blank-capability"),
    ],
)
def test_bad_configure_worker(tm: Any, kwargs: dict[str, Any]) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.configure_worker(**kwargs))
    # the manager's defaults are unchanged
    info = tm.get_task(tm.submit("job"))
    assert (info.max_retries, info.retry_backoff) == (3, "fixed")


def test_a_stopped_manager_cannot_start_again(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", handler)
    tm.start()
    tm.stop(timeout=1)
    with pytest.raises(TideflowError):
        tm.start()
    task_id = tm.submit("job")
    assert tm.get_task(task_id).status == "pending"
