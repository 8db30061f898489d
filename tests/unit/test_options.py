"""Option validation and resolution (tideflow.core.options, SPEC §4, §13)."""

from __future__ import annotations

import os
import random
import re
import socket
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tideflow.core.cron import next_tick
from tideflow.core.options import (
    MANAGER_OPTIONS,
    MAX_DURATION_SECONDS,
    REGISTRATION_OPTIONS,
    TASK_OPTIONS,
    UNSET,
    ManagerSettings,
    TaskPolicy,
    latest_time,
    resolve_policy,
    retention_cutoff,
    schedule_time,
    validate_options,
)
from tideflow.core.retry import retry_delay
from tideflow.errors import InvalidCronError, InvalidOptionError

NOW = 1_700_000_000.0

SCOPES = {
    "task": TASK_OPTIONS,
    "registration": REGISTRATION_OPTIONS,
    "manager": MANAGER_OPTIONS,
}


def task(**options: Any) -> dict[str, Any]:
    return validate_options(options, TASK_OPTIONS, "submit")


# --- the names each scope takes ------------------------------------------------------------------
@pytest.mark.parametrize("scope", list(SCOPES))
@pytest.mark.parametrize(
    "name", ["timeout", "max_retries", "retry_interval", "retry_backoff", "priority"]
)
def test_policy_options_are_accepted_in_every_scope(scope: str, name: str) -> None:
    assert name in SCOPES[scope]


@pytest.mark.parametrize(
    "name", ["delay", "run_at", "tag", "requires", "unique_key", "max_retry_interval"]
)
def test_task_scope_names(name: str) -> None:
    assert name in TASK_OPTIONS


@pytest.mark.parametrize(
    "name", ["max_concurrent_tasks", "isolation", "description", "requires", "tag"]
)
def test_registration_scope_names(name: str) -> None:
    assert name in REGISTRATION_OPTIONS


@pytest.mark.parametrize(
    "name",
    [
        "max_concurrent_tasks",
        "poll_interval",
        "task_heartbeat_interval",
        "task_heartbeat_timeout",
        "worker_heartbeat_interval",
        "worker_heartbeat_timeout",
        "worker_id",
        "pod_id",
        "capabilities",
        "allow_unregistered",
        "max_payload_bytes",
        "recover_running_jobs",
        "retention",
        "expire_time",
        "retention_interval",
        "max_retry_interval",
        "retry_jitter",
    ],
)
def test_manager_scope_names(name: str) -> None:
    assert name in MANAGER_OPTIONS


@pytest.mark.parametrize(
    ("scope", "name"),
    [
        # manager only (SPEC §4)
        ("task", "capabilities"),
        ("task", "allow_unregistered"),
        ("task", "max_payload_bytes"),
        ("registration", "capabilities"),
        ("registration", "allow_unregistered"),
        ("registration", "max_payload_bytes"),
        ("registration", "worker_id"),
        ("registration", "poll_interval"),
        # registration only
        ("task", "isolation"),
        ("task", "description"),
        ("manager", "isolation"),
        ("manager", "description"),
        # per worker / per type, not per task
        ("task", "max_concurrent_tasks"),
        ("task", "poll_interval"),
        # fib-flow's removed schema keys and plain typos
        ("registration", "parameters"),
        ("registration", "output"),
        ("task", "retries"),
        ("manager", "concurrency"),
    ],
)
def test_names_outside_a_scope_are_refused_with_the_allowed_list(scope: str, name: str) -> None:
    allowed = SCOPES[scope]
    with pytest.raises(InvalidOptionError) as info:
        validate_options({name: 1}, allowed, f"the {scope}")
    message = str(info.value)
    assert name in message
    assert f"the {scope}" in message
    for ok in allowed:
        assert ok in message


def test_several_unknown_names_are_all_listed() -> None:
    with pytest.raises(InvalidOptionError) as info:
        validate_options({"foo": 1, "bar": 2, "timeout": 1}, TASK_OPTIONS, "submit")
    assert "foo" in str(info.value)
    assert "bar" in str(info.value)


def test_unknown_name_is_refused_even_when_unset() -> None:
    with pytest.raises(InvalidOptionError, match="bogus"):
        validate_options({"bogus": UNSET}, TASK_OPTIONS, "submit")


def test_unset_values_are_dropped() -> None:
    assert validate_options({"timeout": UNSET, "priority": 3}, TASK_OPTIONS, "x") == {"priority": 3}
    assert not UNSET
    assert repr(UNSET) == "UNSET"


# --- validators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-20, -1, 0, 7, 20])
def test_priority_in_range(value: int) -> None:
    assert task(priority=value) == {"priority": value}


@pytest.mark.parametrize("value", [-21, 21, 100, -1000])
def test_priority_out_of_range_is_an_error_naming_the_range(value: int) -> None:
    with pytest.raises(InvalidOptionError) as info:
        task(priority=value)
    message = str(info.value)
    assert "priority" in message
    assert "-20" in message
    assert "20" in message


@pytest.mark.parametrize("value", [True, False, 1.5, "5", None, [1]])
def test_priority_must_be_an_integer_not_a_bool(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="priority"):
        task(priority=value)


@pytest.mark.parametrize("value", [0, 1, 3, 100])
def test_max_retries_accepts_non_negative_integers(value: int) -> None:
    assert task(max_retries=value) == {"max_retries": value}


@pytest.mark.parametrize("value", [-1, True, False, 2.0, "3", None])
def test_max_retries_refuses_negatives_bools_and_non_integers(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="max_retries"):
        task(max_retries=value)


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1.0), (0.5, 0.5), (timedelta(minutes=2), 120.0)]
)
def test_timeout_takes_seconds_or_timedelta(value: Any, expected: float) -> None:
    out = task(timeout=value)
    assert out == {"timeout": expected}
    assert isinstance(out["timeout"], float)


@pytest.mark.parametrize(
    "value", [0, -1, -0.001, timedelta(0), timedelta(seconds=-5), True, "10", None, float("nan")]
)
def test_timeout_must_be_a_positive_number(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="timeout"):
        task(timeout=value)


@pytest.mark.parametrize("name", ["retry_interval", "max_retry_interval", "delay"])
def test_non_negative_seconds(name: str) -> None:
    assert task(**{name: 0}) == {name: 0.0}
    assert task(**{name: 2.5}) == {name: 2.5}
    assert task(**{name: timedelta(seconds=3)}) == {name: 3.0}
    for bad in (-1, -0.5, timedelta(seconds=-1), True, "1", float("nan"), [1]):
        with pytest.raises(InvalidOptionError, match=name):
            task(**{name: bad})


def test_delay_none_means_now() -> None:
    assert task(delay=None) == {"delay": 0.0}


@pytest.mark.parametrize("value", ["fixed", "exponential"])
def test_retry_backoff_choices(value: str) -> None:
    assert task(retry_backoff=value) == {"retry_backoff": value}


@pytest.mark.parametrize("value", ["linear", "Fixed", "", None, 1])
def test_retry_backoff_other_values_list_the_choices(value: Any) -> None:
    with pytest.raises(InvalidOptionError) as info:
        task(retry_backoff=value)
    assert "fixed" in str(info.value)
    assert "exponential" in str(info.value)


@pytest.mark.parametrize(
    ("name", "scope"),
    [
        ("retry_jitter", "task"),
        ("allow_unregistered", "manager"),
        ("recover_running_jobs", "manager"),
    ],
)
def test_booleans_are_real_booleans(name: str, scope: str) -> None:
    allowed = SCOPES[scope]
    assert validate_options({name: True}, allowed, "x") == {name: True}
    assert validate_options({name: False}, allowed, "x") == {name: False}
    for bad in (1, 0, "true", None):
        with pytest.raises(InvalidOptionError, match=name):
            validate_options({name: bad}, allowed, "x")


def test_aware_run_at_is_accepted_in_any_zone() -> None:
    at = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert task(run_at=at) == {"run_at": at}
    assert task(run_at=None) == {"run_at": None}


@pytest.mark.parametrize("value", [datetime(2030, 1, 1, 12), "2030-01-01T12:00:00Z", 1e9])
def test_run_at_must_be_an_aware_datetime(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="run_at"):
        task(run_at=value)


def test_naive_run_at_message_says_how_to_fix_it() -> None:
    with pytest.raises(InvalidOptionError, match="timezone-aware"):
        task(run_at=datetime(2030, 1, 1))


@pytest.mark.parametrize("name", ["tag", "unique_key"])
def test_optional_text(name: str) -> None:
    assert task(**{name: "mail"}) == {name: "mail"}
    assert task(**{name: None}) == {name: None}
    for bad in ("", "   ", 5, b"x", ["a"]):
        with pytest.raises(InvalidOptionError, match=name):
            task(**{name: bad})


def test_requires_is_a_sorted_set_of_capability_names() -> None:
    assert task(requires=["gpu", "high-memory", "gpu"]) == {"requires": ("gpu", "high-memory")}
    assert task(requires="gpu") == {"requires": ("gpu",)}
    assert task(requires=None) == {"requires": ()}
    assert task(requires=()) == {"requires": ()}
    for bad in ([""], ["gpu", 3], 5, [" "]):
        with pytest.raises(InvalidOptionError, match="requires"):
            task(requires=bad)


def test_capabilities_validate_like_requires() -> None:
    out = validate_options({"capabilities": ["b", "a"]}, MANAGER_OPTIONS, "m")
    assert out == {"capabilities": ("a", "b")}
    with pytest.raises(InvalidOptionError, match="capabilities"):
        validate_options({"capabilities": [1]}, MANAGER_OPTIONS, "m")


def test_max_concurrent_tasks_is_a_positive_integer() -> None:
    assert validate_options({"max_concurrent_tasks": 1}, REGISTRATION_OPTIONS, "r") == {
        "max_concurrent_tasks": 1
    }
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidOptionError, match="max_concurrent_tasks"):
            validate_options({"max_concurrent_tasks": bad}, MANAGER_OPTIONS, "m")


def test_isolation_and_description_at_registration() -> None:
    assert validate_options({"isolation": "thread"}, REGISTRATION_OPTIONS, "r") == {
        "isolation": "thread"
    }
    with pytest.raises(InvalidOptionError, match="isolation"):
        validate_options({"isolation": "fork"}, REGISTRATION_OPTIONS, "r")
    assert validate_options({"description": "d"}, REGISTRATION_OPTIONS, "r") == {"description": "d"}
    with pytest.raises(InvalidOptionError, match="description"):
        validate_options({"description": 3}, REGISTRATION_OPTIONS, "r")


@pytest.mark.parametrize(
    "name",
    [
        "poll_interval",
        "task_heartbeat_interval",
        "task_heartbeat_timeout",
        "worker_heartbeat_interval",
        "worker_heartbeat_timeout",
        "retention_interval",
    ],
)
def test_manager_intervals_are_positive_seconds(name: str) -> None:
    assert validate_options({name: 0.25}, MANAGER_OPTIONS, "m") == {name: 0.25}
    for bad in (0, -1, True, "1", None):
        with pytest.raises(InvalidOptionError, match=name):
            validate_options({name: bad}, MANAGER_OPTIONS, "m")


def test_max_payload_bytes_is_a_positive_integer() -> None:
    assert validate_options({"max_payload_bytes": 10}, MANAGER_OPTIONS, "m") == {
        "max_payload_bytes": 10
    }
    for bad in (0, -5, 1.5, True):
        with pytest.raises(InvalidOptionError, match="max_payload_bytes"):
            validate_options({"max_payload_bytes": bad}, MANAGER_OPTIONS, "m")


@pytest.mark.parametrize("name", ["worker_id", "pod_id"])
def test_worker_and_pod_ids_are_non_empty_text(name: str) -> None:
    assert validate_options({name: "node-1"}, MANAGER_OPTIONS, "m") == {name: "node-1"}
    for bad in ("", "  ", 7):
        with pytest.raises(InvalidOptionError, match=name):
            validate_options({name: bad}, MANAGER_OPTIONS, "m")


def test_errors_are_value_errors_for_callers_that_catch_those() -> None:
    with pytest.raises(ValueError, match="priority"):
        task(priority=99)


# --- resolution ----------------------------------------------------------------------------------
MANAGER = TaskPolicy(
    priority=1,
    timeout=11.0,
    max_retries=4,
    retry_interval=2.0,
    retry_backoff="fixed",
    max_retry_interval=100.0,
    retry_jitter=False,
)
PARENT = {
    "priority": 9,
    "timeout": 99.0,
    "max_retries": 7,
    "retry_interval": 8.0,
    "retry_backoff": "exponential",
    "max_retry_interval": 999.0,
    "retry_jitter": True,
}


def test_policy_defaults_are_the_spec_defaults() -> None:
    p = TaskPolicy()
    assert (p.priority, p.timeout, p.max_retries, p.retry_interval, p.retry_backoff) == (
        0,
        60.0,
        3,
        0.0,
        "fixed",
    )
    assert (p.max_retry_interval, p.retry_jitter) == (3600.0, True)


def test_manager_values_apply_when_nothing_else_is_given() -> None:
    assert resolve_policy({}, {}, MANAGER) == MANAGER


def test_registration_beats_manager() -> None:
    p = resolve_policy({}, {"timeout": 120.0, "max_retries": 2}, MANAGER)
    assert (p.timeout, p.max_retries) == (120.0, 2)
    assert (p.priority, p.retry_interval, p.max_retry_interval) == (1, 2.0, 100.0)


def test_task_beats_registration() -> None:
    p = resolve_policy({"timeout": 5.0, "priority": -3}, {"timeout": 120.0, "priority": 5}, MANAGER)
    assert (p.timeout, p.priority) == (5.0, -3)


def test_a_function_form_registration_gives_nothing() -> None:
    p = resolve_policy({"priority": 2}, {}, MANAGER)
    assert p == TaskPolicy(
        priority=2,
        timeout=11.0,
        max_retries=4,
        retry_interval=2.0,
        retry_backoff="fixed",
        max_retry_interval=100.0,
        retry_jitter=False,
    )


def test_parent_fills_only_its_five_values_between_registration_and_manager() -> None:
    p = resolve_policy({}, {}, MANAGER, PARENT)
    assert (p.priority, p.timeout, p.max_retries, p.retry_interval, p.retry_backoff) == (
        9,
        99.0,
        7,
        8.0,
        "exponential",
    )
    # max_retry_interval and retry_jitter are not inherited: the manager's apply
    assert (p.max_retry_interval, p.retry_jitter) == (100.0, False)


def test_order_task_registration_parent_manager() -> None:
    p = resolve_policy(
        {"priority": 3},
        {"priority": 4, "timeout": 40.0},
        MANAGER,
        PARENT,
    )
    assert p.priority == 3  # task
    assert p.timeout == 40.0  # registration over parent
    assert p.max_retries == 7  # parent over manager
    assert p.max_retry_interval == 100.0  # manager (not inherited)


def test_registration_non_policy_options_do_not_leak_into_the_policy() -> None:
    p = resolve_policy({}, {"tag": "x", "description": "d", "max_concurrent_tasks": 2}, MANAGER)
    assert p == MANAGER


# --- manager settings ----------------------------------------------------------------------------
def test_manager_defaults_are_the_spec_defaults() -> None:
    s = ManagerSettings.from_options({})
    assert s.policy == TaskPolicy()
    assert s.max_concurrent_tasks == 10
    assert s.poll_interval == 1.0
    assert (s.task_heartbeat_interval, s.task_heartbeat_timeout) == (5.0, 30.0)
    assert (s.worker_heartbeat_interval, s.worker_heartbeat_timeout) == (5.0, 30.0)
    assert s.pod_id is None
    assert s.capabilities == ()
    assert s.allow_unregistered is False
    assert s.max_payload_bytes == 1024 * 1024
    assert s.recover_running_jobs is True
    assert s.expire_time == 86400.0
    assert set(s.retention_statuses) == {"completed", "permanently_failed"}
    assert s.retention_interval == 300.0


def test_default_worker_id_is_host_pid_random() -> None:
    a = ManagerSettings.from_options({}).worker_id
    b = ManagerSettings.from_options({}).worker_id
    prefix = f"{socket.gethostname()}-{os.getpid()}-"
    for wid in (a, b):
        assert wid.startswith(prefix)
        assert re.fullmatch(r"[0-9a-zA-Z]{4,}", wid[len(prefix) :]), wid
    assert a != b  # unique per manager


def test_explicit_worker_id_is_kept() -> None:
    assert ManagerSettings.from_options({"worker_id": "w-7"}).worker_id == "w-7"


def test_from_options_validates_and_splits_policy_values() -> None:
    s = ManagerSettings.from_options(
        {
            "timeout": 30,
            "max_retries": 5,
            "retry_interval": 2,
            "retry_backoff": "exponential",
            "max_retry_interval": 60,
            "retry_jitter": False,
            "priority": 2,
            "max_concurrent_tasks": 3,
            "capabilities": ["gpu"],
            "pod_id": "pod-a",
            "poll_interval": 0.1,
        }
    )
    assert s.policy == TaskPolicy(
        priority=2,
        timeout=30.0,
        max_retries=5,
        retry_interval=2.0,
        retry_backoff="exponential",
        max_retry_interval=60.0,
        retry_jitter=False,
    )
    assert (s.max_concurrent_tasks, s.capabilities, s.pod_id, s.poll_interval) == (
        3,
        ("gpu",),
        "pod-a",
        0.1,
    )


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"priority": 21}, {"bogus": 1}, {"capabilities": 5}, {"worker_id": ""}],
)
def test_from_options_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        ManagerSettings.from_options(options)


def test_updated_changes_only_what_is_given() -> None:
    s = ManagerSettings.from_options(
        {"timeout": 30, "max_retries": 5, "capabilities": ["gpu"], "worker_id": "w-1"}
    )
    u = s.updated({"max_concurrent_tasks": 2, "max_retries": 1, "retry_backoff": "exponential"})
    assert u.max_concurrent_tasks == 2
    assert u.policy.max_retries == 1
    assert u.policy.retry_backoff == "exponential"
    # everything else kept
    assert u.policy.timeout == 30.0
    assert u.capabilities == ("gpu",)
    assert u.worker_id == "w-1"
    # the original is unchanged (settings are immutable values)
    assert s.max_concurrent_tasks == 10
    assert s.policy.max_retries == 5


def test_updated_keeps_a_generated_worker_id() -> None:
    s = ManagerSettings.from_options({})
    assert s.updated({"capabilities": ["x"]}).worker_id == s.worker_id
    assert s.updated({}).worker_id == s.worker_id


def test_updated_refuses_bad_values_and_changes_nothing() -> None:
    s = ManagerSettings.from_options({"max_retries": 2})
    with pytest.raises(InvalidOptionError):
        s.updated({"max_retries": 1, "priority": 50})
    assert s.policy.max_retries == 2


def test_retention_in_seconds_sets_expire_time() -> None:
    assert ManagerSettings.from_options({"retention": 3600}).expire_time == 3600.0
    assert ManagerSettings.from_options({"expire_time": 60}).expire_time == 60.0
    with pytest.raises(InvalidOptionError):
        ManagerSettings.from_options({"retention": -1})


def test_retention_dict_sets_expire_time_and_statuses() -> None:
    s = ManagerSettings.from_options({"retention": {"expire_time": 120, "statuses": ["completed"]}})
    assert s.expire_time == 120.0
    assert tuple(s.retention_statuses) == ("completed",)
    partial = ManagerSettings.from_options({"retention": {"statuses": ["permanently_failed"]}})
    assert partial.expire_time == 86400.0
    assert tuple(partial.retention_statuses) == ("permanently_failed",)


def test_retention_dict_expire_time_is_validated() -> None:
    with pytest.raises(InvalidOptionError, match="expire_time"):
        ManagerSettings.from_options({"retention": {"expire_time": -5}})
    with pytest.raises(InvalidOptionError, match="expire_time"):
        ManagerSettings.from_options({"retention": {"expire_time": "soon"}})


def test_a_later_retention_update_keeps_the_other_retention_value() -> None:
    s = ManagerSettings.from_options({"retention": {"expire_time": 10, "statuses": ["completed"]}})
    u = s.updated({"retention": {"expire_time": 20}})
    assert u.expire_time == 20.0
    assert tuple(u.retention_statuses) == ("completed",)


@pytest.mark.parametrize(
    "retention",
    [
        {"statuses": ["bogus"]},  # not a status
        {"statuses": 5},  # not a list
        {"expire": 10},  # unknown key (typo of expire_time)
    ],
)
def test_bad_retention_dict_is_an_invalid_option(retention: dict[str, Any]) -> None:
    """SPEC §13 / Appendix A: bad option values raise InvalidOptionError (§10: validated)."""
    with pytest.raises(InvalidOptionError):
        ManagerSettings.from_options({"retention": retention})


# --- schedule_time -------------------------------------------------------------------------------
def test_schedule_now_plus_delay() -> None:
    assert schedule_time(NOW, None, None) == NOW
    assert schedule_time(NOW, 0.0, None) == NOW
    assert schedule_time(NOW, 10.0, None) == NOW + 10.0


def test_schedule_at_run_at() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert schedule_time(NOW, None, at) == at.timestamp()
    paris = datetime(2030, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert schedule_time(NOW, None, paris) == at.timestamp()


def test_delay_and_run_at_together_is_an_error() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidOptionError) as info:
        schedule_time(NOW, 5.0, at)
    assert "delay" in str(info.value)
    assert "run_at" in str(info.value)


def test_validated_timedelta_delay_schedules() -> None:
    opts = task(delay=timedelta(minutes=1))
    assert schedule_time(NOW, opts["delay"], opts.get("run_at")) == NOW + 60.0


# --- upper bounds of time options (issue 10) --------------------------------------------------
DURATION_OPTIONS = {
    "task": ("delay", "timeout", "retry_interval", "max_retry_interval"),
    "registration": ("timeout", "retry_interval", "max_retry_interval"),
    "manager": (
        "timeout",
        "retry_interval",
        "max_retry_interval",
        "poll_interval",
        "task_heartbeat_interval",
        "task_heartbeat_timeout",
        "worker_heartbeat_interval",
        "worker_heartbeat_timeout",
        "expire_time",
        "retention_interval",
        "retention",
    ),
}
TOO_LONG = [
    MAX_DURATION_SECONDS + 1,
    1e300,
    float("inf"),
    timedelta(days=36526),
    timedelta.max,
    10**400,
]


@pytest.mark.parametrize(
    ("scope", "name"), [(s, n) for s, names in DURATION_OPTIONS.items() for n in names]
)
@pytest.mark.parametrize("value", TOO_LONG, ids=lambda v: repr(v)[:24])
def test_durations_past_the_bound_are_refused(scope: str, name: str, value: Any) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        validate_options({name: value}, SCOPES[scope], scope)
    message = str(caught.value)
    assert repr(name) in message
    assert "100 years" in message
    assert str(MAX_DURATION_SECONDS) in message


@pytest.mark.parametrize(
    ("scope", "name"), [(s, n) for s, names in DURATION_OPTIONS.items() for n in names]
)
def test_the_bound_itself_is_allowed(scope: str, name: str) -> None:
    checked = validate_options({name: MAX_DURATION_SECONDS}, SCOPES[scope], scope)
    assert checked[name] == MAX_DURATION_SECONDS


def test_the_bound_is_a_hundred_years_and_keeps_times_far_from_year_9999() -> None:
    assert MAX_DURATION_SECONDS == 100 * 365.25 * 86400
    assert datetime.fromtimestamp(latest_time(), UTC).year < 2200


def test_the_message_names_the_value_given() -> None:
    with pytest.raises(InvalidOptionError, match=r"'delay'.*got 1e\+300"):
        task(delay=1e300)


@pytest.mark.parametrize(
    "run_at",
    [
        datetime(9999, 12, 31, tzinfo=UTC),
        datetime.now(UTC) + timedelta(days=36525, hours=1),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
    ],
    ids=["year 9999", "just past the bound", "year 1", "before 1970"],
)
def test_run_at_outside_the_window_is_refused(run_at: datetime) -> None:
    with pytest.raises(InvalidOptionError, match=r"'run_at' must lie between 1970.* from now"):
        task(run_at=run_at)


def test_run_at_inside_the_window_is_kept() -> None:
    soon = datetime.now(UTC) + timedelta(days=36524)
    assert task(run_at=soon)["run_at"] == soon


def test_manager_settings_refuse_durations_past_the_bound() -> None:
    for options in (
        {"poll_interval": 1e12},
        {"retention": {"expire_time": 1e300}},
        {"retention": float("inf")},
        {"worker_heartbeat_timeout": timedelta(days=40000)},
    ):
        with pytest.raises(InvalidOptionError, match="100 years"):
            ManagerSettings.from_options(options)


def test_retention_policy_is_bounded() -> None:
    settings = ManagerSettings.from_options({})
    with pytest.raises(InvalidOptionError, match=r"'expire_time'.*100 years"):
        retention_cutoff(settings, {"expire_time": 1e300}, NOW)
    for now in (1e300, float("inf"), -1.0, datetime(9999, 1, 1, tzinfo=UTC)):
        with pytest.raises(InvalidOptionError, match="now"):
            retention_cutoff(settings, {"now": now}, NOW)
    assert retention_cutoff(settings, {"now": NOW, "expire_time": 10}, 0.0)[0] == NOW - 10


def test_computed_retry_delays_stay_within_the_bound() -> None:
    rng = random.Random(1)
    # a row written before the bound existed may hold any interval
    for backoff in ("fixed", "exponential"):
        delay = retry_delay(5000, 1e300, backoff, 1e300, False, rng)
        assert delay == MAX_DURATION_SECONDS
        assert datetime.fromtimestamp(NOW + delay, UTC).year < 2200
    assert retry_delay(3, 10.0, "exponential", 3600.0, False, rng) == 40.0


def test_a_cron_tick_past_the_horizon_is_refused() -> None:
    near_the_end = latest_time() - 3600
    with pytest.raises(InvalidCronError, match=r"beyond the scheduling bound of 100 years"):
        next_tick("0 0 1 1 *", "UTC", near_the_end)  # the next 1 January is past the bound
    with pytest.raises(InvalidOptionError, match="at most 100 years from now"):
        next_tick("* * * * *", "UTC", 1e300)
    assert next_tick("* * * * *", "UTC", NOW) == NOW + 40  # 1_700_000_000 is hh:mm:20
