"""Searching and sorting tasks (``query_tasks``' search keywords, behind the dashboard's task
list) and the change mark behind its live updates, on every backend: case-insensitive name
prefix, tag and worker searches (non-ASCII too, LIKE wildcards taken literally), ids, several
statuses, created and finished time ranges, every sort key with empty values last, and the
validation of each keyword."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from support.wait import wait_for, wait_for_status
from tideflow import TaskManager
from tideflow.errors import InvalidOptionError


def names(page: Any) -> list[str]:
    return [t.name for t in page.items]


@pytest.fixture
def tm(make_manager: Any) -> TaskManager:
    manager: TaskManager = make_manager()
    for name in ("Report.Daily", "report.weekly", "other", "ÉCOLE.sync", "a_b", "axb", "a%c"):
        manager.use(name, lambda task: task.payload)
    manager.setup()
    return manager


def test_name_prefix_is_case_insensitive_and_literal(tm: TaskManager) -> None:
    for name in ("Report.Daily", "report.weekly", "other", "ÉCOLE.sync", "a_b", "axb", "a%c"):
        tm.submit(name)
    assert sorted(names(tm.query_tasks(name_prefix="REPORT."))) == [
        "Report.Daily",
        "report.weekly",
    ]
    assert names(tm.query_tasks(name_prefix="rePort.w")) == ["report.weekly"]
    # non-ASCII letters fold too (SQLite's own LOWER would not)
    assert names(tm.query_tasks(name_prefix="école")) == ["ÉCOLE.sync"]
    # LIKE's wildcards are plain characters in a search
    assert names(tm.query_tasks(name_prefix="a_")) == ["a_b"]
    assert names(tm.query_tasks(name_prefix="a%")) == ["a%c"]
    assert tm.query_tasks(name_prefix="nothing").total == 0
    # combined with the exact filters, paging and counts
    page = tm.query_tasks(name_prefix="report", limit=1, order="desc")
    assert page.total == 2
    assert names(page) == ["report.weekly"]
    assert page.has_more


def test_tag_and_worker_searches(tm: TaskManager) -> None:
    night = tm.submit("other", tag="Nightly-BATCH-7")
    tm.submit("other", tag="hourly")
    tm.submit("other")
    assert [t.id for t in tm.query_tasks(tag_contains="batch").items] == [night]
    assert [t.id for t in tm.query_tasks(tag_contains="NIGHTLY-b").items] == [night]
    assert tm.query_tasks(tag_contains="_").total == 0

    tm.start()
    wait_for(lambda: tm.query_tasks(status="completed").total == 3)
    worker = tm.worker_id
    middle = worker[len(worker) // 3 : len(worker) // 3 + 4].upper()
    assert tm.query_tasks(worker_contains=middle).total == 3
    assert tm.query_tasks(worker_contains=worker + "-not").total == 0


def test_ids_statuses_and_time_ranges(tm: TaskManager) -> None:
    first = tm.submit("other", 1)
    second = tm.submit("other", 2)
    later = tm.submit("other", 3, delay=3600)
    assert [t.id for t in tm.query_tasks(ids=[second, first, 10**12]).items] == [first, second]
    assert tm.query_tasks(ids=[]).total == 0

    tm.start()
    wait_for_status(tm, second, "completed")
    wait_for_status(tm, first, "completed")
    done = {t.id for t in tm.query_tasks(statuses=["completed", "paused"]).items}
    assert done == {first, second}
    assert {t.id for t in tm.query_tasks(statuses=["pending"]).items} == {later}
    assert tm.query_tasks(statuses=[]).total == 0

    created = {t.id: t.created_at.timestamp() for t in tm.query_tasks().items if t.created_at}
    # (stored times have more digits than a datetime: cut between two tasks, not on one)
    cut = (created[first] + created[second]) / 2
    assert created[first] < cut < created[second]
    since = tm.query_tasks(created_after=datetime.fromtimestamp(cut, UTC))
    assert [t.id for t in since.items] == [second, later]
    assert [t.id for t in tm.query_tasks(created_before=cut).items] == [first]

    finish = {
        t.id: t.last_active_time.timestamp()
        for t in tm.query_tasks(statuses=["completed"]).items
        if t.last_active_time is not None
    }
    start, end = min(finish.values()) - 1, max(finish.values()) + 1
    # a finished range matches finished tasks only (the delayed one has not finished)
    in_range = tm.query_tasks(
        finished_after=start, finished_before=datetime(2999, 1, 1, tzinfo=UTC)
    )
    assert {t.id for t in in_range.items} == {first, second}
    assert tm.query_tasks(finished_before=start).total == 0
    assert tm.query_tasks(finished_after=end).total == 0


def test_sorting_puts_empty_values_last(tm: TaskManager) -> None:
    a = tm.submit("other", tag="b", priority=1)
    b = tm.submit("report.weekly", tag=None, priority=5)
    c = tm.submit("Report.Daily", tag="a", priority=3)
    assert [t.id for t in tm.query_tasks(sort="priority", order="desc").items] == [b, c, a]
    assert [t.id for t in tm.query_tasks(sort="priority").items] == [a, c, b]
    # no tag: last both ways
    assert [t.id for t in tm.query_tasks(sort="tag").items] == [c, a, b]
    assert [t.id for t in tm.query_tasks(sort="tag", order="desc").items] == [a, c, b]
    # nothing finished yet: every finished/duration/progress value is empty, ties by id
    for key in ("finished", "duration", "progress", "started", "worker"):
        assert [t.id for t in tm.query_tasks(sort=key).items] == [a, b, c], key
        assert [t.id for t in tm.query_tasks(sort=key, order="desc").items] == [c, b, a], key
    for key in ("id", "name", "status", "created"):
        assert tm.query_tasks(sort=key).total == 3

    tm.start()
    wait_for(lambda: tm.query_tasks(status="completed").total == 3)
    by_finish = tm.query_tasks(sort="finished").items
    times = [t.last_active_time for t in by_finish]
    assert times == sorted(times)  # type: ignore[type-var]
    assert len(tm.query_tasks(sort="duration", order="desc").items) == 3


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"sort": "bogus"}, "sort must be one of"),
        ({"sort": "id; DROP TABLE x"}, "sort must be one of"),
        ({"statuses": "pending"}, "statuses must be a list"),
        ({"statuses": ["nope"]}, "nope"),
        ({"ids": "12"}, "ids must be a list"),
        ({"ids": [1, "x"]}, "task id"),
        ({"name_prefix": ""}, "name_prefix must be a non-empty string"),
        ({"tag_contains": 5}, "tag_contains must be a non-empty string"),
        ({"worker_contains": "x" * 501}, "at most 500 characters"),
        ({"name_prefix": "a\x00"}, "NUL"),
        ({"created_after": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"finished_before": "yesterday"}, "finished_before must be a datetime"),
    ],
)
def test_bad_search_keywords_are_refused(
    tm: TaskManager, keywords: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidOptionError, match=message.replace("(", r"\(")):
        tm.query_tasks(**keywords)


def test_change_mark_moves_with_every_kind_of_change(tm: TaskManager) -> None:
    marks = [tm.get_change_mark()]

    def moved() -> str:
        mark = tm.get_change_mark()
        assert mark != marks[-1]
        marks.append(mark)
        return mark

    assert tm.get_change_mark() == marks[0]  # nothing changed: the same mark
    task_id = tm.submit("other", 1, delay=3600)
    moved()
    tm.pause_task(task_id)
    moved()
    tm.resume_task(task_id)
    moved()
    tm.delete_tasks(ids=[task_id])
    moved()
    assert tm.get_change_mark() == marks[-1]
