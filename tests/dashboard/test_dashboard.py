"""The web dashboard over a real manager and database: pages, JSON API, actions behind the token
and CSRF, metrics, escaping, and ``tideflow dashboard`` serving it over HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

from starlette.testclient import TestClient

from support.wait import wait_for, wait_for_status
from tideflow import TaskManager
from tideflow.dashboard import create_app
from tideflow.errors import InvalidOptionError

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(f"sqlite:{tmp_path / 'dash.db'}", poll_interval=0.02)

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "child", "payload": i} for i in range(2)])
        return "all done"

    def boom(task: Any) -> None:
        raise RuntimeError("it broke <b>badly</b>")

    manager.use({"parent": parent, "child": lambda task: task.payload * 10, "boom": boom})
    manager.start()
    root = manager.submit("parent")
    failed = manager.submit("boom", {"note": "<script>alert(1)</script>"}, max_retries=1)
    wait_for_status(manager, root, "completed")
    wait_for_status(manager, failed, "permanently_failed")
    manager.stop()
    yield manager
    manager.close()


@pytest.fixture
def client(tm: TaskManager) -> TestClient:
    """A browser that has not signed in, on a dashboard started with --public-read (reading
    without the token is tested in test_security.py), reached by a loopback name."""
    app = create_app(tm, TOKEN, public_read=True)
    return TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False)


def ids(tm: TaskManager, name: str) -> list[int]:
    return [t.id for t in tm.query_tasks(name=name).items]


def sign_in(client: TestClient) -> str:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    response = client.post("/login", data={"csrf": csrf.group(1), "token": TOKEN, "next": "/"})
    assert response.status_code == 303
    return csrf.group(1)


def test_pages_show_the_database(tm: TaskManager, client: TestClient) -> None:
    (root,) = ids(tm, "parent")
    (failed,) = ids(tm, "boom")

    home = client.get("/")
    assert home.status_code == 200
    assert re.search(r"completed<\/span><b[^>]*>3</b>", home.text)
    assert re.search(r"permanently failed<\/span><b[^>]*>1</b>", home.text)
    assert "tasks finished per minute" in home.text

    listing = client.get("/tasks", params={"status": "completed"})
    assert listing.status_code == 200
    assert f'href="/tasks/{root}"' in listing.text
    assert f'href="/tasks/{failed}"' not in listing.text
    paged = client.get("/tasks", params={"limit": 1})
    assert "1-1 of 4" in paged.text
    assert "offset=1" in paged.text  # a next link

    task = client.get(f"/tasks/{failed}")
    assert task.status_code == 200
    assert "task_permanently_failed" in task.text
    assert "RuntimeError" in task.text
    # handler-controlled text is escaped, never markup
    assert "<script>alert(1)</script>" not in task.text
    assert "<b>badly</b>" not in task.text
    assert "&lt;b&gt;badly&lt;/b&gt;" in task.text

    flow = client.get(f"/workflows/{root}")
    assert flow.status_code == 200
    assert flow.text.count('class="tl-row critical"') == 2  # the root and its last child
    for child in ids(tm, "child"):
        assert f'href="/tasks/{child}"' in flow.text

    workers = client.get("/workers")
    assert tm.worker_id in workers.text
    assert "stopped" in workers.text

    # pages update themselves through server-sent events (test_live.py), never by reloading
    assert "http-equiv" not in home.text
    assert 'data-stream="/events/stream"' in listing.text

    assert client.get("/tasks/999999").status_code == 404
    assert client.get("/tasks", params={"status": "bogus"}).status_code == 400
    assert client.get("/tasks", params={"limit": "many"}).status_code == 400


def test_json_api_and_metrics(tm: TaskManager, client: TestClient) -> None:
    (root,) = ids(tm, "parent")
    overview = client.get("/api/overview").json()
    assert overview["statuses"]["completed"] == 3
    assert overview["total"] == 4
    assert len(overview["throughput"]) == 60
    assert sum(b["completed"] for b in overview["throughput"]) == 3

    page = client.get("/api/tasks", params={"name": "child", "limit": 1}).json()
    assert (page["total"], len(page["items"]), page["has_more"]) == (2, 1, True)

    audit = client.get(f"/api/tasks/{root}").json()
    assert audit["task"]["result"] == "all done"
    assert [a["outcome"] for a in audit["attempts"]["items"]] == ["suspended", "completed"]

    summary = client.get(f"/api/workflows/{root}").json()
    assert summary["totals"]["tasks"] == 3
    assert client.get("/api/workflows/999999").status_code == 404
    workers = client.get("/api/workers").json()
    assert [w["worker_id"] for w in workers] == [tm.worker_id]

    other = TaskManager(tm.db_url, allow_unregistered=True)
    other.submit("nobody-runs-this", requires=["gpu"])
    other.close()
    waiting = client.get("/api/overview").json()["unserved"]
    assert [(u["name"], u["requires"], u["count"]) for u in waiting] == [
        ("nobody-runs-this", ["gpu"], 1)
    ]
    assert "no active worker has a handler" in client.get("/").text

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'tideflow_tasks{name="child",status="completed"} 2.0' in metrics.text
    assert 'tideflow_workers{status="stopped"} 1.0' in metrics.text
    assert 'tideflow_tasks_finished_last_5m{status="completed"} 3.0' in metrics.text


def test_actions_need_the_token_and_a_csrf_token(tm: TaskManager, client: TestClient) -> None:
    (failed,) = ids(tm, "boom")

    # not signed in: sent to the login page, nothing changes
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf is not None
    response = client.post(f"/tasks/{failed}/retry", data={"csrf": csrf.group(1)})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert tm.get_task(failed).status == "permanently_failed"  # type: ignore[union-attr]

    wrong = client.post("/login", data={"csrf": csrf.group(1), "token": "nope-nope-nope"})
    assert wrong.status_code == 401

    csrf_value = sign_in(client)
    # signed in, but a form without the matching CSRF token (a cross-site post) is refused
    forged = client.post(f"/tasks/{failed}/retry", data={"csrf": "forged"})
    assert forged.status_code == 403
    assert tm.get_task(failed).status == "permanently_failed"  # type: ignore[union-attr]

    done = client.post(f"/tasks/{failed}/retry", data={"csrf": csrf_value})
    assert done.status_code == 303
    assert done.headers["location"] == f"/tasks/{failed}?done=retry"
    assert tm.get_task(failed).status == "pending"  # type: ignore[union-attr]

    # a transition the state machine refuses is a 409 with its message
    refused = client.post(f"/tasks/{failed}/resume", data={"csrf": csrf_value})
    assert refused.status_code == 409
    assert "cannot resume" in refused.text

    client.post(f"/tasks/{failed}/delete", data={"csrf": csrf_value})
    assert tm.get_task(failed) is None
    assert client.post("/tasks/1/explode", data={"csrf": csrf_value}).status_code == 404


def test_api_actions_need_the_bearer_token(tm: TaskManager, client: TestClient) -> None:
    (failed,) = ids(tm, "boom")
    denied = client.post(f"/api/tasks/{failed}/retry")
    assert denied.status_code == 401
    denied = client.post(
        f"/api/tasks/{failed}/retry", headers={"Authorization": "Bearer wrong-token"}
    )
    assert denied.status_code == 401
    assert tm.get_task(failed).status == "permanently_failed"  # type: ignore[union-attr]

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ok = client.post(f"/api/tasks/{failed}/retry", headers=bearer)
    assert ok.json() == {"task_id": failed, "action": "retry", "ok": True}
    assert tm.get_task(failed).status == "pending"  # type: ignore[union-attr]
    missing = client.post("/api/tasks/999999/cancel", headers=bearer)
    assert missing.status_code == 404
    assert "999999" in missing.json()["error"]


def test_login_never_redirects_off_site(tm: TaskManager, client: TestClient) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf is not None
    for target in ("https://evil.example/", "//evil.example/x"):
        response = client.post(
            "/login", data={"csrf": csrf.group(1), "token": TOKEN, "next": target}
        )
        assert response.headers["location"] == "/"


def test_a_short_token_is_refused(tm: TaskManager) -> None:
    with pytest.raises(InvalidOptionError, match="at least 8"):
        create_app(tm, "short")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_tideflow_dashboard_serves_over_http(tm: TaskManager) -> None:
    import httpx2

    port = _free_port()
    env = {**os.environ, "TIDEFLOW_DASHBOARD_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli", "dashboard", "--db", tm.db_url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:

        def overview() -> Any:
            try:
                return httpx2.get(
                    f"http://127.0.0.1:{port}/api/overview",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=2,
                ).json()
            except httpx2.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                return None

        data = wait_for(overview, timeout=30, message="the dashboard never answered")
        assert data["total"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=10)
