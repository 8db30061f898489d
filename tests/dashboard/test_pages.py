"""The dashboard's pages as an operator reads and drives them: search and sort, the list's
columns, bulk actions with their review, readable values (JSON, errors once, metadata times,
bidi isolation, long tags), the cancelled badge, the workflow timeline and its paging, the
workers page's age-out, and that no page carries inline script or style."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

from starlette.testclient import TestClient

from support.wait import wait_for, wait_for_status
from tideflow import TaskManager
from tideflow.dashboard import app as dashboard_app
from tideflow.dashboard import create_app, views
from tideflow.errors import InvalidOptionError
from tideflow.models import TaskAttempt, TaskInfo, WorkerInfo

TOKEN = "s3cret-token-for-page-tests"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
LONG_TAG = "t" * 5000
BIG_ERROR = "ValueError: " + "line of a long traceback\n" * 800 + "the very end"  # 20 KB


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(f"sqlite:{tmp_path / 'pages.db'}", poll_interval=0.02)

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "child", "payload": i} for i in range(3)])
        return {"html": "<b>done</b>", "arabic": "مرحبا"}

    def boom(task: Any) -> None:
        raise RuntimeError(BIG_ERROR)

    def child(task: Any) -> int:
        task.progress("halfway", progress_percent=50)
        return int(task.payload) * 10

    manager.use({"Report.Parent": parent, "child": child, "boom": boom, "later": lambda t: 1})
    manager.start()
    root = manager.submit("Report.Parent", {"note": "<script>alert(1)</script>"})
    failed = manager.submit("boom", {"rtl": f"abc{RLO}def"}, max_retries=2, retry_interval=0.01)
    manager.submit("later", tag=LONG_TAG, delay=3600)
    wait_for_status(manager, root, "completed")
    wait_for_status(manager, failed, "permanently_failed")
    manager.stop()
    yield manager
    manager.close()


def client_for(tm: TaskManager) -> TestClient:
    return TestClient(
        create_app(tm, TOKEN, public_read=True),
        base_url="http://127.0.0.1:8765",
        follow_redirects=False,
    )


@pytest.fixture
def client(tm: TaskManager) -> TestClient:
    return client_for(tm)


def sign_in(client: TestClient) -> str:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    response = client.post("/login", data={"csrf": csrf.group(1), "token": TOKEN, "next": "/"})
    assert response.status_code == 303
    return csrf.group(1)


def one(tm: TaskManager, name: str) -> TaskInfo:
    (task,) = tm.query_tasks(name=name).items
    return task


def listed(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="task-row-(\d+)"', html)]


# --- search and sort ---------------------------------------------------------------------------
def test_search_by_name_prefix_tag_worker_id_and_time(tm: TaskManager, client: TestClient) -> None:
    root = one(tm, "Report.Parent")
    later = one(tm, "later")
    assert listed(client.get("/tasks", params={"q_name": "report.PAR"}).text) == [root.id]
    assert listed(client.get("/tasks", params={"q_tag": "TTTT"}).text) == [later.id]
    by_id = client.get("/tasks", params={"q_id": f"{later.id}, {root.id}"}).text
    assert sorted(listed(by_id)) == sorted([later.id, root.id])
    worker = tm.worker_id.upper()[2:10]
    ran = client.get("/tasks", params={"q_worker": worker}).text
    assert later.id not in listed(ran)
    assert root.id in listed(ran)
    # finished within the last hour: everything but the delayed task
    recent = listed(client.get("/tasks", params={"finished_from": "1h"}).text)
    assert later.id not in recent
    assert root.id in recent
    assert listed(client.get("/tasks", params={"created_to": "2000-01-01"}).text) == []
    # the JSON API takes the same searches
    api = client.get("/api/tasks", params={"q_name": "REPORT", "sort": "created"}).json()
    assert [t["id"] for t in api["items"]] == [root.id]
    # the form keeps what was searched
    page = client.get("/tasks", params={"q_name": "rep<x>"}).text
    assert 'value="rep&lt;x&gt;"' in page


def test_sorting_and_its_links(tm: TaskManager, client: TestClient) -> None:
    page = client.get("/tasks", params={"sort": "name", "order": "asc"}).text
    names = [t.name for t in sorted(tm.query_tasks().items, key=lambda t: (t.name, t.id))]
    assert [tm.get_task(i).name for i in listed(page)] == names  # type: ignore[union-attr]
    # the sorted column's header flips the order; another column starts descending
    assert 'href="/tasks?sort=name&amp;order=desc&amp;limit=50"' in page
    assert 'href="/tasks?sort=created&amp;order=desc&amp;limit=50"' in page
    durations = client.get("/tasks", params={"sort": "duration", "order": "desc"})
    assert durations.status_code == 200
    assert listed(durations.text)[-1] == one(tm, "later").id  # no duration: last


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "name;drop"}, "sort must be one of"),
        ({"q_id": "12abc"}, "task ids"),
        ({"created_from": "last tuesday"}, "created_from must be a date and time"),
        ({"q_name": "a\x00b"}, "control characters"),
        ({"q_tag": "x" * 501}, "at most 500"),
        ({"order": "sideways"}, "order must be one of"),
    ],
)
def test_bad_searches_are_400_with_a_reason(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    response = client.get("/tasks", params=params)
    assert response.status_code == 400
    assert message in response.text


def test_the_list_shows_the_new_columns(tm: TaskManager, client: TestClient) -> None:
    page = client.get("/tasks").text
    for column in ("started", "finished", "duration", "progress", "error"):
        assert f'data-testid="sort-{column}"' in page or f"<th>{column}</th>" in page
    failed = one(tm, "boom")
    row = page[page.index(f'id="task-row-{failed.id}"') :]
    row = row[: row.index("</tr>")]
    assert "RuntimeError: ValueError: line of a long traceback" in row  # a preview
    assert row.count("line of a long traceback") <= 2  # not the whole error
    assert '<time datetime="' in row
    child = tm.query_tasks(name="child").items[0]
    assert f'id="progress-{child.id}"' in page
    assert f'data-testid="progress-{child.id}"' in page
    # a 5,000-character tag is clipped, its full value in the tooltip
    later = page[page.index(f'id="task-row-{one(tm, "later").id}"') :]
    assert f'<bdi class="clip" title="{LONG_TAG}">' in later


# --- readable values ---------------------------------------------------------------------------
def test_task_page_is_readable(tm: TaskManager, client: TestClient) -> None:
    failed = one(tm, "boom")
    page = client.get(f"/tasks/{failed.id}").text
    # the error in full once; attempts, events and metadata show previews
    assert page.count("Traceback (most recent call last)") == 1
    error = tm.get_task(failed.id).error  # type: ignore[union-attr]
    assert error is not None
    line = "line of a long traceback"
    assert page.count(line) <= error.count(line) + 10  # the rest: a line each at most
    assert '<details class="value" id="task-error">' in page  # a long value starts folded
    # JSON is pretty and unescaped (autoescape makes it safe), values isolated
    assert "\\u003c" not in page
    assert "\\u202e" not in page
    assert f"&#34;rtl&#34;: &#34;abc{RLO}def&#34;" in page  # escaped, not \\u-escaped
    assert '<pre dir="auto" class="iso" id="task-payload">' in page
    # event metadata times are dates, not epoch floats
    scheduled = page[page.index("task_retry_scheduled") :]
    scheduled = scheduled[: scheduled.index("</tr>")]
    assert "<dt>next_run_time</dt><dd><time datetime=" in scheduled
    assert not re.search(r"\b1\d{9}\.\d+", scheduled)
    # a finished task has no "next run"
    assert "next run" not in page
    assert "finished</th>" in page

    root = one(tm, "Report.Parent")
    result = client.get(f"/tasks/{root.id}").text
    assert "&lt;b&gt;done&lt;/b&gt;" in result
    assert "مرحبا" in result
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result
    assert "<script>alert(1)" not in result


def test_cancelled_tasks_say_so(tm: TaskManager, client: TestClient) -> None:
    later = one(tm, "later")
    pending = client.get(f"/tasks/{later.id}").text
    assert "next run</th>" in pending
    tm.cancel_task(later.id, reason="not needed")
    page = client.get(f"/tasks/{later.id}").text
    assert 'class="status s-cancelled" data-status="cancelled">cancelled<' in page
    assert "this task was cancelled" in page
    listing = client.get("/tasks").text
    row = listing[listing.index(f'<tr id="task-row-{later.id}"') :]
    assert f'data-task-id="{later.id}" data-status="cancelled">' in row[: row.index("</tr>")]
    # and the failed one is still a failure
    failed = one(tm, "boom")
    assert (
        'data-status="permanently_failed">permanently failed<'
        in client.get(f"/tasks/{failed.id}").text
    )


def test_no_page_has_inline_script_or_style(tm: TaskManager, client: TestClient) -> None:
    root = one(tm, "Report.Parent")
    sign_in(client)
    for url in ("/", "/tasks", f"/tasks/{root.id}", f"/workflows/{root.id}", "/workers", "/login"):
        html = client.get(url).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), url
        assert not re.search(r"\sstyle=", html), url
        assert not re.search(r"<style", html), url
        assert not re.search(r"\son[a-z]+=", html), url
    for name in ("dashboard.js", "dashboard.css"):
        assert client.get(f"/static/{name}").status_code == 200


# --- bulk actions ------------------------------------------------------------------------------
def test_bulk_retry_of_every_failed_task_of_a_name(tm: TaskManager, client: TestClient) -> None:
    failed = one(tm, "boom")
    csrf = sign_in(client)
    listing = client.get("/tasks", params={"status": "permanently_failed", "name": "boom"})
    assert 'data-testid="bulk-review"' in listing.text
    form = {"csrf": csrf, "action": "retry", "scope": "all"}
    review = client.post(
        "/tasks/bulk", data={**form, "status": "permanently_failed", "name": "boom"}
    )
    assert review.status_code == 200
    assert re.search(r'data-testid="bulk-count">1<', review.text)
    assert "Retry 1 task?" in review.text
    assert tm.get_task(failed.id).status == "permanently_failed"  # type: ignore[union-attr]
    confirm = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', review.text)
    done = client.post("/tasks/bulk", data=dict(confirm) | {"ids": str(failed.id)})
    assert done.status_code == 303
    assert "retried+1+task" in done.headers["location"]
    assert "status=permanently_failed" in done.headers["location"]  # back to the same list
    assert tm.get_task(failed.id).status == "pending"  # type: ignore[union-attr]


def test_bulk_actions_need_sign_in_and_csrf(tm: TaskManager, client: TestClient) -> None:
    later = one(tm, "later")
    refused = client.post("/tasks/bulk", data={"action": "delete", "ids": str(later.id)})
    assert refused.status_code == 303  # to the sign-in page
    assert refused.headers["location"].startswith("/login")
    csrf = sign_in(client)
    bad = client.post("/tasks/bulk", data={"csrf": csrf, "action": "explode", "ids": "1"})
    assert bad.status_code == 400
    nothing = client.post("/tasks/bulk", data={"csrf": csrf, "action": "cancel"})
    assert nothing.status_code == 400
    assert "no task is selected" in nothing.text
    assert tm.get_task(later.id) is not None


def test_bulk_cancel_and_delete_skip_running_tasks_unless_included(tmp_path: Path) -> None:
    release = threading.Event()
    tm = TaskManager(f"sqlite:{tmp_path / 'bulk.db'}", poll_interval=0.02)
    tm.use("block", lambda task: release.wait(30))
    tm.use("later", lambda task: 1)
    try:
        tm.start()
        running = tm.submit("block")
        waiting = tm.submit("later", delay=3600)
        done = tm.submit("later")
        wait_for_status(tm, running, "running")
        wait_for_status(tm, done, "completed")
        client = client_for(tm)
        csrf = sign_in(client)
        chosen = {"csrf": csrf, "action": "cancel", "ids": [str(running), str(waiting), str(done)]}
        review = client.post("/tasks/bulk", data=chosen)
        assert review.status_code == 200
        text = review.text
        assert re.search(r'data-testid="bulk-count">1<', text)
        assert "1 is running" in text
        assert "they are <b>skipped</b>" in text
        assert "1 completed: skipped" in text
        assert 'data-testid="bulk-include-running"' in text
        # confirmed without including the running task: only the waiting one is cancelled
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', text))
        ids = re.findall(r'<input type="hidden" name="ids" value="(\d+)">', text)
        assert sorted(map(int, ids)) == sorted([running, waiting])  # the completed one dropped
        answer = client.post("/tasks/bulk", data={**fields, "ids": ids})
        assert answer.status_code == 303
        assert "cancelled+1+task" in answer.headers["location"]
        assert tm.get_task(waiting).last_event_type == "task_cancelled"  # type: ignore[union-attr]
        assert tm.get_task(running).status == "running"  # type: ignore[union-attr]
        # including it: it is cancelled mid-attempt
        review = client.post(
            "/tasks/bulk",
            data={"csrf": csrf, "action": "cancel", "ids": str(running), "include_running": "1"},
        )
        assert "they are <b>included</b>" in review.text
        answer = client.post(
            "/tasks/bulk",
            data={
                "csrf": csrf,
                "action": "cancel",
                "ids": str(running),
                "include_running": "1",
                "confirm": "1",
            },
        )
        assert "cancelled+1+task" in answer.headers["location"]
        wait_for(lambda: tm.get_task(running).status == "permanently_failed")  # type: ignore[union-attr]
        # delete the rest, all matching a search
        review = client.post(
            "/tasks/bulk", data={"csrf": csrf, "action": "delete", "scope": "all", "name": "later"}
        )
        assert re.search(r'data-testid="bulk-count">2<', review.text)
        fields = dict(
            re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', review.text)
        )
        ids = re.findall(r'<input type="hidden" name="ids" value="(\d+)">', review.text)
        answer = client.post("/tasks/bulk", data={**fields, "ids": ids})
        assert "deleted+2+tasks" in answer.headers["location"]
        assert tm.query_tasks(name="later").total == 0
    finally:
        release.set()
        tm.stop()
        tm.close()


# --- the workflow timeline ---------------------------------------------------------------------
def test_workflow_timeline_explains_time_and_pages(
    tm: TaskManager, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = one(tm, "Report.Parent")
    children = tm.query_tasks(name="child").items
    page = client.get(f"/workflows/{root.id}").text
    assert 'data-testid="workflow-timeline"' in page
    for t in (root, *children):
        assert f'data-testid="timeline-row-{t.id}"' in page
    assert f'data-testid="fold-{root.id}"' in page  # the root's subtree folds
    assert page.count('class="tl-row critical"') == 2
    assert "Wall-clock" in page
    assert "waiting (critical path)" in page
    assert '<rect class="a o-completed"' in page
    assert 'data-testid="critical-path"' in page

    monkeypatch.setattr(dashboard_app, "TREE_LIMIT", 2)
    first = client.get(f"/workflows/{root.id}").text
    assert "tasks 1-2 of 4" in first
    assert 'href="?offset=2"' in first
    second = client.get(f"/workflows/{root.id}", params={"offset": 2}).text
    assert "tasks 3-4 of 4" in second
    assert 'href="?offset=0"' in second
    assert f'data-testid="timeline-row-{children[-1].id}"' in second


def test_timeline_and_critical_path_count_waiting() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def task(i: int, parent: int | None, created: float, finished: float, **kw: Any) -> TaskInfo:
        return TaskInfo(
            id=i,
            name=f"t{i}",
            type="async",
            status="completed",
            priority=0,
            payload=None,
            result=None,
            error=None,
            tag=None,
            stage=0,
            context=None,
            created_at=t0 + timedelta(seconds=created),
            next_run_time=None,
            start_time=t0 + timedelta(seconds=kw.get("start", created)),
            last_active_time=t0 + timedelta(seconds=finished),
            last_event_type="task_completed",
            last_event_time=None,
            timeout=60,
            max_retries=1,
            retry_count=0,
            retry_interval=1,
            retry_backoff="fixed",
            cron_expr=None,
            tz=None,
            parent_id=parent,
            root_id=1,
            total_children=kw.get("children", 0),
            completed_children=0,
            worker_id=None,
            attempt=1,
            requires=[],
            unique_key=None,
            suspend_reason=None,
            current_stage_name=None,
            progress_text=None,
            progress_percent=None,
        )

    def attempt(task_id: int, start: float, end: float) -> TaskAttempt:
        return TaskAttempt(
            id=task_id,
            task_id=task_id,
            attempt=1,
            worker_id="w",
            stage=0,
            started_at=t0 + timedelta(seconds=start),
            ended_at=t0 + timedelta(seconds=end),
            outcome="completed",
            error=None,
            timeout_flag=False,
            duration_seconds=end - start,
        )

    # the root runs 1 s, then its children: a quick one, and a slow one that waited 5 s in
    # the queue before running 2 s; the root finishes at 10 s
    root = task(1, None, 0, 10, children=2)
    quick = task(2, 1, 1, 2)
    slow = task(3, 1, 1, 8, start=6)
    tasks = [root, quick, slow]
    attempts = [attempt(1, 0, 1), attempt(2, 1, 2), attempt(3, 6, 8), attempt(1, 9, 10)]
    path = views.critical_path(root, lambda i: [quick, slow] if i == 1 else [])
    assert [t.id for t in path] == [1, 3]
    by_task = {1: attempts[:1] + attempts[3:], 3: attempts[2:3]}
    drawn = views.timeline(tasks, attempts, t0 + timedelta(seconds=20), 1, path, by_task)
    assert drawn.critical_seconds == 10
    # 10 s of wall-clock: the root ran 2 s, the slow child 2 s; the other 6 s were waiting
    assert drawn.critical_wait == pytest.approx(6)
    slow_bar = next(b for b in drawn.bars if b.task.id == 3)
    assert slow_bar.queued == pytest.approx((10.0, 50.0))  # created at 1 s, claimed at 6 s
    assert slow_bar.attempts == [(60.0, 20.0, "completed")]
    root_bar = next(b for b in drawn.bars if b.task.id == 1)
    assert root_bar.waiting == [pytest.approx((10.0, 80.0))]  # suspended for its children
    assert [b.depth for b in drawn.bars] == [0, 1, 1]


# --- workers -----------------------------------------------------------------------------------
def test_workers_page_shows_what_runs_and_ages_out_stopped_ones(
    tm: TaskManager, client: TestClient
) -> None:
    page = client.get("/workers").text
    assert tm.worker_id in page  # stopped a moment ago: still listed
    assert 'data-testid="workers-all"' in page

    now = datetime.now(UTC)

    def worker(name: str, status: str, seen: timedelta) -> WorkerInfo:
        return WorkerInfo(
            worker_id=name,
            pod_id=None,
            host="h",
            pid=1,
            status=status,
            capabilities=[],
            handlers=[],
            concurrency=1,
            registered_at=now - seen,
            last_seen_at=now - seen,
            expires_at=now,
        )

    everyone = [
        worker("busy", "active", timedelta(hours=5)),  # active: always shown
        worker("recent", "stopped", timedelta(minutes=10)),
        worker("old", "stopped", timedelta(hours=2)),
        worker("gone", "dead", timedelta(days=3)),
    ]
    shown, hidden = views.visible_workers(everyone, now, show_all=False)
    assert [w.worker_id for w in shown] == ["busy", "recent"]
    assert hidden == 2
    assert views.visible_workers(everyone, now, show_all=True) == (everyone, 0)
    assert client.get("/workers", params={"all": "2"}).status_code == 400


def test_workers_page_lists_running_tasks(tmp_path: Path) -> None:
    release = threading.Event()
    tm = TaskManager(f"sqlite:{tmp_path / 'w.db'}", poll_interval=0.02)

    def block(task: Any) -> None:
        task.progress("busy", progress_percent=30)
        release.wait(30)

    tm.use("block", block)
    try:
        tm.start()
        task_id = tm.submit("block")
        wait_for(lambda: (tm.get_task(task_id).progress_percent or 0) > 0)  # type: ignore[union-attr]
        page = client_for(tm).get("/workers").text
        assert f'href="/tasks/{task_id}"' in page
        assert "1 task</a>" in page
    finally:
        release.set()
        tm.stop()
        tm.close()


# --- the views' helpers ------------------------------------------------------------------------
def test_helpers() -> None:
    assert views.duration_text(None) == "-"
    assert views.duration_text(0.0421) == "0.042 s"
    assert views.duration_text(75) == "1 min 15 s"
    assert views.duration_text(7380) == "2 h 03 min"
    assert views.preview("first\nsecond", 50) == "first …"
    assert views.preview("x" * 10, 4) == "xxxx…"
    assert views.pretty_json({"a": "<é>"}) == '{\n  "a": "<é>"\n}'
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert views.parse_when("2h", "x", now) == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert views.parse_when("2026-04-30T08:00", "x", now) == datetime(2026, 4, 30, 8, tzinfo=UTC)
    assert views.parse_when("2026-04-30 08:00+02:00", "x", now).utcoffset() == timedelta(hours=2)
    with pytest.raises(InvalidOptionError):
        views.parse_when("soon", "x", now)
    with pytest.raises(InvalidOptionError, match="before the year 1"):
        views.parse_when("999999w", "x", now)
    rows = views.event_metadata({"next_run_time": 1_700_000_000.5, "error": "e" * 500, "n": [1]})
    assert rows[0][2] == "time"
    assert isinstance(rows[0][1], datetime)
    assert rows[1][2] == "text"
    assert len(rows[1][1]) <= 161
    assert rows[2] == ("n", "[1]", "json")
