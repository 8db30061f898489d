"""examples/fastapi_app.py, run as a user would: FastAPI's TestClient drives its lifespan (the
manager's ``async with``), the endpoints submit and read tasks, the worker runs in-process."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

from fastapi.testclient import TestClient

from support.wait import wait_for
from tideflow import TaskManager

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"


def load_example(db: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the example module whose manager uses ``db``."""
    monkeypatch.setenv("TIDEFLOW_DB", db)
    name = f"fastapi_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = load_example(db_url, monkeypatch)
    yield module
    module.tm.close()
    sys.modules.pop(module.__name__, None)


def test_submit_then_read_the_result(example: ModuleType) -> None:
    with TestClient(example.app) as client:
        answer = client.post("/reports", json={"rows": 4})
        assert answer.status_code == 202
        task_id = answer.json()["task_id"]

        view = client.get(f"/tasks/{task_id}", params={"wait": 15}).json()
        assert view == {
            "id": task_id,
            "name": "build_report",
            "status": "completed",
            "finished": True,
            "result": {"rows": 4, "total": 6},
            "error": None,
            "progress_percent": 0.0,
        }
    assert repr(example.tm).endswith("closed>")  # the lifespan closed the manager


def test_an_unfinished_task_is_reported_as_it_is(example: ModuleType) -> None:
    with TestClient(example.app) as client:
        example.tm.pause()  # the in-process worker claims nothing for now
        task_id = client.post("/reports", json={"rows": 1}).json()["task_id"]

        view = client.get(f"/tasks/{task_id}", params={"wait": 0.05}).json()
        assert (view["status"], view["finished"], view["result"]) == ("pending", False, None)

        example.tm.resume()
        view = client.get(f"/tasks/{task_id}", params={"wait": 15}).json()
        assert (view["status"], view["result"]) == ("completed", {"rows": 1, "total": 0})


def test_bad_requests_are_refused_and_submit_nothing(example: ModuleType) -> None:
    with TestClient(example.app) as client:
        assert client.post("/reports", json={"rows": -1}).status_code == 422
        assert client.post("/reports", json={}).status_code == 422
        assert client.get("/tasks/999999").status_code == 404
        assert client.get("/tasks/0").status_code == 422
        assert client.get("/tasks/1", params={"wait": 99}).status_code == 422
        assert client.get("/tasks/abc").status_code == 422
        assert example.tm.query_tasks().total == 0


def test_shutdown_lets_the_running_task_finish(
    shared_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_example(shared_db_url, monkeypatch)
    try:
        with TestClient(module.app) as client:
            task_id = client.post("/reports", json={"rows": 50}).json()["task_id"]
            wait_for(
                lambda: client.get(f"/tasks/{task_id}").json()["status"] == "running",
                message="the report never started",
            )
        # shutdown stopped the worker gracefully: the running attempt finished first
    finally:
        module.tm.close()
        sys.modules.pop(module.__name__, None)

    after = TaskManager(shared_db_url)
    try:
        info: Any = after.get_task(task_id)
        assert info.status == "completed"
        assert info.result == {"rows": 50, "total": 1225}
        assert info.attempt == 1
        assert [w.status for w in after.get_workers()] == ["stopped"]
    finally:
        after.close()
