"""Rows to public records: an undecodable field never breaks a read (core.records, issue 10)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tideflow.core.records import task_info, worker_info
from tideflow.core.types import WorkerRow
from unit.test_lifecycle import NOW, make_row

# a pending task with a result and requirements: the lifecycle tests' row, varied
ROW = make_row(
    id=7,
    root_id=7,
    result='"done"',
    tag="t",
    next_run_time=NOW,
    requires="gpu,ssd",
)

WORKER = WorkerRow(
    worker_id="w1",
    pod_id=None,
    host="h",
    pid=1,
    status="active",
    capabilities='["gpu"]',
    handlers='["job"]',
    concurrency=4,
    registered_at=NOW - 10,
    last_seen_at=NOW,
    expires_at=NOW + 30,
)


def test_a_sound_row_reads_fully_with_nothing_unreadable() -> None:
    info = task_info(ROW)
    assert info.payload == {"x": 1}
    assert info.result == "done"
    assert info.created_at == datetime.fromtimestamp(NOW - 100, UTC)
    assert info.requires == ("gpu", "ssd")
    assert info.unreadable == {}
    assert info.to_dict()["unreadable"] == {}


@pytest.mark.parametrize(
    ("field", "stored", "reason"),
    [
        ("payload", "{bad", "stored JSON cannot be decoded"),
        ("result", "[1, 2", "stored JSON cannot be decoded"),
        ("payload", "[" * 50_000 + "]" * 50_000, "nested too deep"),
        ("next_run_time", 1e300, "years 1 to 9999"),
        ("next_run_time", float("nan"), "years 1 to 9999"),
        ("next_run_time", float("inf"), "years 1 to 9999"),
        ("created_at", 1e300, "years 1 to 9999"),
        ("created_at", -1e15, "years 1 to 9999"),
        ("start_time", 1e20, "years 1 to 9999"),
        ("last_active_time", "yesterday", "years 1 to 9999"),
        ("last_event_time", 1e300, "years 1 to 9999"),
    ],
)
def test_an_undecodable_field_is_none_and_says_why(field: str, stored: Any, reason: str) -> None:
    info = task_info(ROW._replace(**{field: stored}))
    assert getattr(info, field) is None
    assert set(info.unreadable) == {field}
    assert reason in info.unreadable[field]
    # every other field still reads
    sound = task_info(ROW)
    for other in dataclasses.fields(info):
        if other.name not in (field, "unreadable"):
            assert getattr(info, other.name) == getattr(sound, other.name), other.name
    # and the record serialises, naming the field
    data = json.loads(json.dumps(info.to_dict()))
    assert data[field] is None
    assert reason in data["unreadable"][field]


def test_several_unreadable_fields_are_all_named() -> None:
    info = task_info(ROW._replace(payload="{", result="}", next_run_time=1e300))
    assert sorted(info.unreadable) == ["next_run_time", "payload", "result"]
    assert "'{'" in info.unreadable["payload"]  # the stored value is shown (shortened)


def test_a_long_stored_value_is_shortened_in_the_reason() -> None:
    info = task_info(ROW._replace(payload="{" + "x" * 10_000))
    assert len(info.unreadable["payload"]) < 300


def test_a_sound_worker_row() -> None:
    info = worker_info(WORKER)
    assert info.capabilities == ("gpu",)
    assert info.handlers == ("job",)
    assert info.last_seen_at == datetime.fromtimestamp(NOW, UTC)
    assert info.unreadable == {}


@pytest.mark.parametrize(
    ("field", "stored", "empty", "reason"),
    [
        ("capabilities", "gpu,ssd", (), "not JSON"),
        ("capabilities", '{"gpu": 1}', (), "not a JSON list of strings"),
        ("handlers", "[1, 2]", (), "not a JSON list of strings"),
        ("last_seen_at", 1e300, None, "years 1 to 9999"),
        ("expires_at", float("nan"), None, "years 1 to 9999"),
    ],
)
def test_an_undecodable_worker_field(field: str, stored: Any, empty: Any, reason: str) -> None:
    info = worker_info(dataclasses.replace(WORKER, **{field: stored}))
    assert getattr(info, field) == empty
    assert set(info.unreadable) == {field}
    assert reason in info.unreadable[field]
    assert info.to_dict()["unreadable"] == dict(info.unreadable)
