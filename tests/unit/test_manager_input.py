"""Input the TaskManager refuses before touching the database (SPEC §2, §4, §13)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tideflow import TaskManager
from tideflow.errors import HandlerRegistrationError, InvalidOptionError


def handler(task: Any) -> None:
    return None


@pytest.fixture
def tm() -> Iterator[TaskManager]:
    manager = TaskManager("sqlite::memory:")
    yield manager
    manager.close()


@pytest.mark.parametrize("value", ["", "   ", None, 5])
def test_get_tasks_by_name_and_tag_refuse_an_empty_filter(tm: TaskManager, value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="name"):
        tm.get_tasks_by_name(value)
    with pytest.raises(InvalidOptionError, match="tag"):
        tm.get_tasks_by_tag(value)


@pytest.mark.parametrize("value", ["", "  ", 5])
def test_get_tasks_refuses_a_blank_name_or_tag(tm: TaskManager, value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="name"):
        tm.get_tasks(name=value)
    with pytest.raises(InvalidOptionError, match="tag"):
        tm.get_tasks(tag=value)


def test_get_tasks_by_name_and_tag_still_answer(tm: TaskManager) -> None:
    tm.use("job", handler)
    task_id = tm.submit("job", tag="t")
    assert [t.id for t in tm.get_tasks_by_name("job")] == [task_id]
    assert [t.id for t in tm.get_tasks_by_tag("t")] == [task_id]
    assert tm.get_tasks_by_name("other") == []


@pytest.mark.parametrize(
    "form",
    [
        lambda tm: tm.use("x", {"handler": handler, "priority": 99}),
        lambda tm: tm.use("x", handler, priority=99),
        lambda tm: tm.use({"x": {"handler": handler, "priority": 99}}),
        lambda tm: tm.task("x", priority=99)(handler),
    ],
    ids=["options-dict", "keyword", "bulk", "decorator"],
)
def test_bad_option_value_at_registration_is_invalid_option_error(
    tm: TaskManager, form: Any
) -> None:
    with pytest.raises(InvalidOptionError, match="priority") as info:
        form(tm)
    assert not isinstance(info.value, HandlerRegistrationError)
    assert tm.get_task_info("x") is None  # nothing was registered


@pytest.mark.parametrize(
    "form",
    [
        lambda tm: tm.use("x", {"handler": handler, "bogus": 1}),
        lambda tm: tm.use("x", handler, bogus=1),
        lambda tm: tm.task("x", bogus=1)(handler),
    ],
    ids=["options-dict", "keyword", "decorator"],
)
def test_unknown_option_name_at_registration_stays_a_registration_error(
    tm: TaskManager, form: Any
) -> None:
    with pytest.raises(HandlerRegistrationError, match="bogus"):
        form(tm)
