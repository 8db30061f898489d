"""Bad calls raise the specific error and write nothing (SPEC §4, §5, §13, Appendix A).

Each test walks a table of bad calls on one manager and reports every case that went wrong, so
one run shows all of them (and the tables cost one database set-up per backend, not per case).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from support.wait import wait_for_status
from support.workers import ghost
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

Error = type[BaseException] | tuple[type[BaseException], ...]
Case = tuple[str, Error, Callable[[], Any]]


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


def _names(error: Error) -> str:
    errors = error if isinstance(error, tuple) else (error,)
    return " or ".join(e.__name__ for e in errors)


def assert_all_refused(tm: Any, cases: list[Case]) -> None:
    """Each call raises its error (with a message) and leaves every task row as it was."""
    problems: list[str] = []
    for label, error, call in cases:
        before = snapshot(tm)
        try:
            call()
        except error as exc:
            if not str(exc):
                problems.append(f"{label}: {type(exc).__name__} has no message")
        except Exception as exc:
            problems.append(
                f"{label}: raised {type(exc).__name__}({exc}), expected {_names(error)}"
            )
        else:
            problems.append(f"{label}: accepted, expected {_names(error)}")
        if snapshot(tm) != before:
            problems.append(f"{label}: the failed call wrote something")
    assert not problems, "\n".join(problems)


def assert_refused(tm: Any, error: Error, call: Callable[[], Any]) -> None:
    assert_all_refused(tm, [("call", error, call)])


@pytest.fixture
def tm(make_manager: Any) -> Any:
    """A manager (not started) with one registered handler and one existing task."""
    manager = make_manager()
    manager.use("job", handler)
    manager.submit("job", {"existing": True})
    return manager


# --------------------------------------------------------------------------------------------
# registration


def test_bad_registration(tm: Any) -> None:
    def report(task: Any) -> None:
        return None

    cases: list[Case] = [
        ("not callable", HandlerRegistrationError, lambda: tm.use("x", 42)),
        ("string handler", HandlerRegistrationError, lambda: tm.use("x", "handler")),
        (
            "dict, handler not callable",
            HandlerRegistrationError,
            lambda: tm.use("x", {"handler": 42}),
        ),
        ("dict without handler", HandlerRegistrationError, lambda: tm.use("x", {"timeout": 5})),
        (
            "dict with 'parameters'",
            HandlerRegistrationError,
            lambda: tm.use("x", {"handler": handler, "parameters": {}}),
        ),
        (
            "dict with 'output'",
            HandlerRegistrationError,
            lambda: tm.use("x", {"handler": handler, "output": {}}),
        ),
        (
            "dict with unknown key",
            HandlerRegistrationError,
            lambda: tm.use("x", {"handler": handler, "bogus": 1}),
        ),
        ("bulk without handler", HandlerRegistrationError, lambda: tm.use({"x": {"timeout": 5}})),
        ("bulk not callable", HandlerRegistrationError, lambda: tm.use({"x": 42})),
        ("keyword 'bogus'", HandlerRegistrationError, lambda: tm.use("x", handler, bogus=1)),
        (
            "keyword 'parameters'",
            HandlerRegistrationError,
            lambda: tm.use("x", handler, parameters={}),
        ),
        ("keyword 'output'", HandlerRegistrationError, lambda: tm.use("x", handler, output={})),
        ("decorator option", HandlerRegistrationError, lambda: tm.task("x", bogus=1)(report)),
        ("blank name", HandlerRegistrationError, lambda: tm.use("", handler)),
        ("whitespace name", HandlerRegistrationError, lambda: tm.use("   ", handler)),
        ("non-string name", HandlerRegistrationError, lambda: tm.use(123, handler)),
        # a bad value at registration: either error is a clear refusal
        (
            "priority 21 at registration",
            (HandlerRegistrationError, InvalidOptionError),
            lambda: tm.use("x", handler, priority=21),
        ),
    ]
    assert_all_refused(tm, cases)
    # nothing was registered by any of them
    with pytest.raises(HandlerRegistrationError):
        tm.submit("x")


# --------------------------------------------------------------------------------------------
# submit


def test_unregistered_name_at_submit(tm: Any) -> None:
    assert_all_refused(
        tm,
        [
            ("submit", HandlerRegistrationError, lambda: tm.submit("nobody")),
            ("cron", HandlerRegistrationError, lambda: tm.cron("nobody", "* * * * * *")),
        ],
    )


def test_unregistered_name_allowed_for_a_client(make_manager: Any) -> None:
    client = make_manager(allow_unregistered=True)
    task_id = client.submit("remote_job", {"x": 1})
    cron_id = client.cron("remote_cron", "0 0 3 * * *")
    assert client.get_task(task_id).status == "pending"
    assert client.get_task(cron_id).type == "cron"


def test_bad_option_value_at_submit(tm: Any) -> None:
    bad_options: dict[str, dict[str, Any]] = {
        "priority 21": {"priority": 21},
        "priority -21": {"priority": -21},
        "priority text": {"priority": "high"},
        "negative delay": {"delay": -1},
        "negative timedelta": {"delay": timedelta(seconds=-5)},
        "naive run_at": {"run_at": datetime(2030, 1, 1, 12, 0)},
        "run_at text": {"run_at": "2030-01-01"},
        "negative timeout": {"timeout": -1},
        "negative max_retries": {"max_retries": -1},
        "negative retry_interval": {"retry_interval": -1},
        "unknown backoff": {"retry_backoff": "linear"},
    }
    cases: list[Case] = [
        (label, InvalidOptionError, lambda options=options: tm.submit("job", {"ok": 1}, **options))
        for label, options in bad_options.items()
    ]
    cases += [
        (
            "cron priority 21",
            InvalidOptionError,
            lambda: tm.cron("job", "* * * * * *", priority=21),
        ),
        (
            "cron priority -21",
            InvalidOptionError,
            lambda: tm.cron("job", "* * * * * *", priority=-21),
        ),
        (
            "submit_many priority 21",
            InvalidOptionError,
            lambda: tm.submit_many([("job", {})], priority=21),
        ),
        # SPEC does not say whether an unknown keyword is a TypeError or an InvalidOptionError
        (
            "unknown option",
            (InvalidOptionError, TypeError),
            lambda: tm.submit("job", {"ok": 1}, bogus=1),
        ),
    ]
    assert_all_refused(tm, cases)


def test_priority_bounds_are_inclusive(tm: Any) -> None:
    high = tm.submit("job", priority=20)
    low = tm.submit("job", priority=-20)
    assert (tm.get_task(high).priority, tm.get_task(low).priority) == (20, -20)


def test_non_json_payload(tm: Any) -> None:
    payloads = {
        "set": {1, 2},
        "object": object(),
        "nested object": {"nested": object()},
        "bytes": b"raw",
    }
    assert_all_refused(
        tm,
        [
            (label, PayloadError, lambda payload=payload: tm.submit("job", payload))
            for label, payload in payloads.items()
        ],
    )


def test_payload_over_max_payload_bytes(make_manager: Any) -> None:
    tm = make_manager(max_payload_bytes=1000)
    tm.use("job", handler)
    tm.submit("job", {"s": "x" * 100})
    assert_all_refused(
        tm,
        [
            ("submit", PayloadError, lambda: tm.submit("job", {"s": "x" * 2000})),
            ("submit_many", PayloadError, lambda: tm.submit_many([("job", {"s": "x" * 2000})])),
            ("cron", PayloadError, lambda: tm.cron("job", "0 0 3 * * *", {"s": "x" * 2000})),
        ],
    )


def test_default_max_payload_is_one_mebibyte(tm: Any) -> None:
    tm.submit("job", {"s": "x" * 500_000})
    assert_refused(tm, PayloadError, lambda: tm.submit("job", {"s": "x" * (1024 * 1024 + 10)}))


def test_submit_many_with_one_bad_item(tm: Any) -> None:
    assert_all_refused(
        tm,
        [
            (
                "non-JSON item",
                PayloadError,
                lambda: tm.submit_many([("job", {"a": 1}), ("job", {"b": object()})]),
            ),
            (
                "unregistered item",
                HandlerRegistrationError,
                lambda: tm.submit_many([("job", {}), ("nobody", {})]),
            ),
        ],
    )


def test_blank_task_name_at_submit(make_manager: Any) -> None:
    client = make_manager(allow_unregistered=True)
    client.submit("job")
    # SPEC names no single error for a blank name at submit: a bad value (InvalidOptionError)
    # or a bad name (HandlerRegistrationError) are both clear refusals
    refused = (InvalidOptionError, HandlerRegistrationError)
    assert_all_refused(
        client,
        [
            ("empty", refused, lambda: client.submit("")),
            ("blank", refused, lambda: client.submit("   ")),
        ],
    )


# --------------------------------------------------------------------------------------------
# cron


def test_bad_cron_expression_and_zone(tm: Any) -> None:
    expressions = ["not a cron", "61 * * * * *", "* * * * * * * *", "", "* * 32 * * *"]
    cases: list[Case] = [
        (f"expression {expr!r}", InvalidCronError, lambda expr=expr: tm.cron("job", expr))
        for expr in expressions
    ]
    cases.append(
        ("zone", InvalidCronError, lambda: tm.cron("job", "0 0 3 * * *", tz="Mars/Olympus"))
    )
    assert_all_refused(tm, cases)


def test_good_cron_with_zone(tm: Any) -> None:
    cron_id = tm.cron("job", "0 0 3 * * *", {"p": 1}, tz="Europe/Paris")
    info = tm.get_task(cron_id)
    assert info.tz == "Europe/Paris"
    assert info.cron_expr == "0 0 3 * * *"
    local = info.next_run_time.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (3, 0, 0)
    assert info.next_run_time > datetime.now(ZoneInfo("UTC"))


# --------------------------------------------------------------------------------------------
# queries


def test_unknown_status_filter(tm: Any) -> None:
    assert_all_refused(
        tm,
        [
            ("get_tasks", InvalidStatusError, lambda: tm.get_tasks(status="bogus")),
            ("get_tasks_by_status", InvalidStatusError, lambda: tm.get_tasks_by_status("done")),
            ("query_tasks", InvalidStatusError, lambda: tm.query_tasks(status="finished")),
            (
                "get_task_stats_by_tag",
                InvalidStatusError,
                lambda: tm.get_task_stats_by_tag("t", status="x"),
            ),
            ("delete_tasks", InvalidStatusError, lambda: tm.delete_tasks(status="bogus")),
        ],
    )


def test_get_task_of_missing_id_is_none(tm: Any) -> None:
    assert tm.get_task(MISSING_ID) is None


def test_bad_paging(tm: Any) -> None:
    task_id = tm.get_tasks()[0].id
    assert_all_refused(
        tm,
        [
            ("negative limit", InvalidOptionError, lambda: tm.query_tasks(limit=-1)),
            ("text limit", InvalidOptionError, lambda: tm.query_tasks(limit="ten")),
            ("negative offset", InvalidOptionError, lambda: tm.query_tasks(offset=-1)),
            ("bad order", InvalidOptionError, lambda: tm.query_tasks(order="sideways")),
            (
                "events bad order",
                InvalidOptionError,
                lambda: tm.query_task_events(task_id, order="up"),
            ),
            (
                "events negative limit",
                InvalidOptionError,
                lambda: tm.query_task_events(task_id, limit=-5),
            ),
        ],
    )


def test_delete_tasks_needs_a_filter(tm: Any) -> None:
    assert_refused(tm, InvalidOptionError, lambda: tm.delete_tasks())


# --------------------------------------------------------------------------------------------
# control calls


def test_control_call_on_missing_id(tm: Any) -> None:
    assert_all_refused(
        tm,
        [
            (control, TaskNotFoundError, lambda control=control: getattr(tm, control)(MISSING_ID))
            for control in ("resume_task", "cancel_task", "pause_task", "retry_task")
        ],
    )


def test_control_calls_in_the_wrong_state(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: "done")
    tm.start()
    done = tm.submit("job")
    wait_for_status(tm, done, "completed")
    tm.pause()
    pending = tm.submit("job")

    assert_all_refused(
        tm,
        [
            ("resume completed", InvalidTransitionError, lambda: tm.resume_task(done)),
            ("retry completed", InvalidTransitionError, lambda: tm.retry_task(done)),
            ("pause completed", InvalidTransitionError, lambda: tm.pause_task(done)),
            ("cancel completed", InvalidTransitionError, lambda: tm.cancel_task(done)),
            ("retry pending", InvalidTransitionError, lambda: tm.retry_task(pending)),
            ("resume pending", InvalidTransitionError, lambda: tm.resume_task(pending)),
        ],
    )
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
    assert_all_refused(
        tm,
        [
            ("cancel cancelled", InvalidTransitionError, lambda: tm.cancel_task(pending)),
            ("resume cancelled", InvalidTransitionError, lambda: tm.resume_task(pending)),
        ],
    )


# --------------------------------------------------------------------------------------------
# manager options


def test_bad_manager_option(make_manager: Any) -> None:
    bad_options: dict[str, dict[str, Any]] = {
        "unknown option": {"bogus": 1},
        "parameters": {"parameters": {}},
        "priority 21": {"priority": 21},
        "negative concurrency": {"max_concurrent_tasks": -1},
        "negative poll": {"poll_interval": -1},
        "negative timeout": {"timeout": -1},
        "unknown backoff": {"retry_backoff": "linear"},
        "negative max_payload_bytes": {"max_payload_bytes": -1},
    }
    problems = []
    for label, options in bad_options.items():
        try:
            make_manager(**options)
        except InvalidOptionError:
            pass
        except Exception as exc:
            problems.append(f"{label}: raised {type(exc).__name__}({exc})")
        else:
            problems.append(f"{label}: accepted")
    assert not problems, "\n".join(problems)


def test_bad_manager_option_leaves_file_untouched(db_file: str) -> None:
    with pytest.raises(InvalidOptionError):
        TaskManager(f"sqlite:{db_file}", bogus=1)
    assert not Path(db_file).exists()


def test_bad_configure_worker(tm: Any) -> None:
    bad: dict[str, dict[str, Any]] = {
        "zero concurrency": {"max_concurrency": 0},
        "unknown strategy key": {"retry_strategy": {"bogus": 1}},
        "unknown backoff": {"retry_strategy": {"backoff": "linear"}},
        "negative attempts": {"retry_strategy": {"max_attempts": -1}},
        "blank capability": {"capabilities": [""]},
    }
    assert_all_refused(
        tm,
        [
            (label, InvalidOptionError, lambda kwargs=kwargs: tm.configure_worker(**kwargs))
            for label, kwargs in bad.items()
        ],
    )
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


# --------------------------------------------------------------------------------------------
# bounded input (issue 10): time options past 100 years, payloads nested past 100 levels

FAR = 1e300  # seconds: once accepted, it broke every listing ("year 33715 is out of range")


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def refused_at_bound(label: str, call: Callable[[], Any]) -> Case:
    return (label, InvalidOptionError, call)


def test_time_options_past_the_bound_at_submit_and_cron(tm: Any) -> None:
    bad: dict[str, dict[str, Any]] = {
        "delay 1e300": {"delay": FAR},
        "delay inf": {"delay": float("inf")},
        "delay 101 years": {"delay": timedelta(days=36525 + 366)},
        "run_at year 9999": {"run_at": datetime(9999, 1, 1, tzinfo=ZoneInfo("UTC"))},
        "run_at year 1": {"run_at": datetime(1, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo"))},
        "timeout": {"timeout": FAR},
        "retry_interval": {"retry_interval": FAR},
        "max_retry_interval": {"max_retry_interval": float("inf")},
    }
    cases: list[Case] = []
    for label, options in bad.items():
        cases.append(
            refused_at_bound(f"submit {label}", lambda o=options: tm.submit("job", {}, **o))
        )
        cases.append(
            refused_at_bound(
                f"submit_many {label}", lambda o=options: tm.submit_many([("job", {}, o)])
            )
        )
        cases.append(
            refused_at_bound(
                f"submit_many shared {label}",
                lambda o=options: tm.submit_many([("job", {}), {"name": "job"}], **o),
            )
        )
    for name in ("timeout", "retry_interval", "max_retry_interval"):
        cases.append(
            refused_at_bound(
                f"cron {name}", lambda n=name: tm.cron("job", "0 0 3 * * *", **{n: FAR})
            )
        )
    assert_all_refused(tm, cases)
    with pytest.raises(InvalidOptionError) as caught:
        tm.submit("job", delay=FAR)
    assert "'delay'" in str(caught.value)
    assert "1e+300" in str(caught.value)
    assert "100 years" in str(caught.value)
    # the largest allowed values still make readable rows
    limit = 36525 * 86400
    ids = [
        tm.submit("job", delay=limit - 60, timeout=limit, retry_interval=limit),
        tm.submit("job", run_at=datetime.now(ZoneInfo("UTC")) + timedelta(days=36524)),
    ]
    assert all(tm.get_task(i).next_run_time.year < 2200 for i in ids)
    assert {t.id for t in tm.get_tasks()} >= set(ids)


def test_time_options_past_the_bound_at_registration(tm: Any) -> None:
    def other(task: Any) -> None:
        return None

    refused = (InvalidOptionError, HandlerRegistrationError)
    assert_all_refused(
        tm,
        [
            ("use timeout", refused, lambda: tm.use("x", handler, timeout=FAR)),
            (
                "use dict retry_interval",
                refused,
                lambda: tm.use("x", {"handler": handler, "retry_interval": float("inf")}),
            ),
            (
                "bulk max_retry_interval",
                refused,
                lambda: tm.use({"x": {"handler": handler, "max_retry_interval": FAR}}),
            ),
            ("decorator timeout", refused, lambda: tm.task("x", timeout=FAR)(other)),
        ],
    )
    with pytest.raises(HandlerRegistrationError):
        tm.submit("x")  # none of them registered


def test_time_options_past_the_bound_on_the_manager(tm: Any, make_manager: Any) -> None:
    for options in (
        {"poll_interval": FAR},
        {"task_heartbeat_interval": FAR},
        {"task_heartbeat_timeout": float("inf")},
        {"worker_heartbeat_interval": FAR},
        {"worker_heartbeat_timeout": timedelta(days=40_000)},
        {"timeout": FAR},
        {"retry_interval": FAR},
        {"max_retry_interval": FAR},
        {"expire_time": FAR},
        {"retention": FAR},
        {"retention": {"expire_time": FAR}},
        {"retention_interval": FAR},
    ):
        with pytest.raises(InvalidOptionError, match="100 years"):
            make_manager(**options)
    assert_all_refused(
        tm,
        [
            (
                f"configure_worker {key}",
                InvalidOptionError,
                lambda key=key: tm.configure_worker(retry_strategy={key: FAR}),
            )
            for key in ("interval", "max_interval")
        ]
        + [
            (
                "run_retention expire_time",
                InvalidOptionError,
                lambda: tm.run_retention({"expire_time": FAR}),
            ),
            ("run_retention now", InvalidOptionError, lambda: tm.run_retention({"now": FAR})),
        ],
    )
    info = tm.get_task(tm.submit("job"))
    assert (info.retry_interval, info.timeout) == (0.0, 60.0)  # the defaults are unchanged


def test_a_child_spec_past_the_bound_fails_the_parent_and_creates_nothing(
    make_manager: Any,
) -> None:
    tm = make_manager(max_retries=1)
    tm.use("job", handler)
    tm.use("parent", lambda task: task.next([{"name": "job", "delay": FAR}]))
    tm.start()
    parent = tm.submit("parent")
    info = wait_for_status(tm, parent, "permanently_failed")
    assert "InvalidOptionError" in info.error
    assert "'delay'" in info.error
    assert "100 years" in info.error
    assert tm.get_child_tasks(parent) == []


def test_payloads_nested_past_the_bound_are_refused(tm: Any) -> None:
    deep = nested(101)
    very_deep = nested(20_000)
    assert_all_refused(
        tm,
        [
            ("submit 101 levels", PayloadError, lambda: tm.submit("job", deep)),
            ("submit 20,000 levels", PayloadError, lambda: tm.submit("job", very_deep)),
            ("submit_many", PayloadError, lambda: tm.submit_many([("job", {}), ("job", deep)])),
            ("cron", PayloadError, lambda: tm.cron("job", "0 0 3 * * *", {"deep": deep})),
        ],
    )
    ok = tm.submit("job", nested(100))
    assert tm.get_task(ok).payload == nested(100)


def test_a_result_nested_past_the_bound_fails_the_attempt(make_manager: Any) -> None:
    tm = make_manager(max_retries=1)
    tm.use("deep", lambda task: nested(101))
    tm.start()
    task_id = tm.submit("deep")
    info = wait_for_status(tm, task_id, "permanently_failed")
    assert "PayloadError" in info.error
    assert "at most 100 levels" in info.error
    assert info.result is None


# --------------------------------------------------------------------------------------------
# rows that cannot be decoded (an older version's or hand-edited) never break a listing


def raw_update(tm: Any, table: str, column: str, value: Any, key: str, key_value: Any) -> None:
    """Write ``value`` into one column as a hand edit would, past every check."""
    store = tm._store
    with store._write() as cur:
        cur.execute(
            store._q(f"UPDATE {table} SET {column} = ? WHERE {key} = ?"), (value, key_value)
        )


def test_corrupt_task_rows_still_list_and_say_what_is_unreadable(
    tm: Any, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_payload = tm.submit("job", {"a": 1})
    far_future = tm.submit("job", {"b": 2})
    bad_result = tm.submit("job", {"c": 3})
    raw_update(tm, "tideflow_tasks", "payload", "{bad", "id", bad_payload)
    raw_update(tm, "tideflow_tasks", "next_run_time", FAR, "id", far_future)
    raw_update(tm, "tideflow_tasks", "result", "[1,", "id", bad_result)

    listed = {t.id: t for t in tm.get_tasks()}
    assert {bad_payload, far_future, bad_result} <= set(listed)
    assert {t.id for t in tm.query_tasks(limit=None).items} == set(listed)
    assert {t.id for t in tm.get_tasks_by_status("pending")} == set(listed)
    assert {t.id for t in tm.get_tasks_by_name("job")} == set(listed)

    info = tm.get_task(bad_payload)
    assert info.payload is None
    assert set(info.unreadable) == {"payload"}
    assert "'{bad'" in info.unreadable["payload"]
    assert "cannot be decoded" in info.unreadable["payload"]
    info = tm.get_task(far_future)
    assert info.next_run_time is None
    assert info.payload == {"b": 2}
    assert set(info.unreadable) == {"next_run_time"}
    assert "1e+300" in info.unreadable["next_run_time"]
    assert "9999" in info.unreadable["next_run_time"]
    assert set(tm.get_task(bad_result).unreadable) == {"result"}
    assert tm.get_task(bad_payload).to_dict()["unreadable"]["payload"].startswith("'{bad'")
    assert tm.get_task_audit(bad_payload).task.unreadable.keys() == {"payload"}

    if ":memory:" in db_url:
        return  # the command line opens its own connection: a private database is not shared
    from tideflow.cli.main import main

    assert main(["tasks", "list", "--db", db_url, "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert f"unreadable payload (see tasks show {bad_payload})" in out
    assert f"unreadable next_run_time (see tasks show {far_future})" in out
    assert main(["tasks", "list", "--db", db_url, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["id"]: r["unreadable"] for r in rows}[bad_payload].keys() == {"payload"}
    assert main(["tasks", "show", str(bad_payload), "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "unreadable payload: '{bad' cannot be read" in out


def test_a_corrupt_worker_row_still_lists(tm: Any) -> None:
    now = time.time()
    ghost(tm, "odd-worker", last_seen=now)
    raw_update(tm, "tideflow_workers", "capabilities", "gpu", "worker_id", "odd-worker")
    raw_update(tm, "tideflow_workers", "expires_at", FAR, "worker_id", "odd-worker")
    (worker,) = [w for w in tm.get_workers() if w.worker_id == "odd-worker"]
    assert worker.capabilities == ()
    assert worker.expires_at is None
    assert set(worker.unreadable) == {"capabilities", "expires_at"}
    assert "'gpu'" in worker.unreadable["capabilities"]
    assert tm.get_worker("odd-worker").unreadable.keys() == {"capabilities", "expires_at"}


def test_a_claimed_task_whose_payload_cannot_be_read_fails_and_blocks_nothing(
    make_manager: Any,
) -> None:
    """The bad row's attempt fails with the reason; the rest of its claim batch runs."""
    worker = make_manager()
    worker.use("job", lambda task: task.payload)
    worker.pause()
    worker.start()
    bad = worker.submit("job", {"a": 1}, max_retries=1)
    good = [worker.submit("job", {"n": n}) for n in range(3)]
    raw_update(worker, "tideflow_tasks", "payload", "{bad", "id", bad)
    worker.resume()
    for task_id in good:
        assert (
            wait_for_status(worker, task_id, "completed").result == worker.get_task(task_id).payload
        )
    info = wait_for_status(worker, bad, "permanently_failed")
    assert info.error.startswith("PayloadError")
    (attempt,) = worker.query_task_attempts(bad).items
    assert attempt.outcome == "failed"
