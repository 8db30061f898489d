"""PostgreSQL under real concurrency: worker processes, NOTIFY wake-ups, lost connections, setup.

Each test gets a clean database from the ``postgres_url`` fixture (skipped when no server
answers, failed under ``CI=true``; see ``tests/conftest.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for
from tideflow import TaskManager

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("worker_script.py")


def _connect(url: str) -> Any:
    return psycopg.connect(url, autocommit=True)


def _sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with _connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _application_name(url: str) -> str | None:
    return psycopg.conninfo.conninfo_to_dict(url).get("application_name")


def _terminate_backends(url: str) -> int:
    """Kill every other backend of this database (of this test session when it is named)."""
    sql = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    params: tuple[Any, ...] = ()
    name = _application_name(url)
    if name:  # leave other test runs sharing the server alone
        sql += " AND application_name = %s"
        params = (name,)
    return len(_sql(url, sql, params))


@pytest.fixture
def client(postgres_url: str) -> Iterator[TaskManager]:
    tm = TaskManager(postgres_url, allow_unregistered=True, poll_interval=0.05)
    tm.setup()
    yield tm
    tm.close()


def test_notify_wakes_an_idle_worker_at_once(postgres_url: str, client: TaskManager) -> None:
    # the worker polls only every 5 s: a start within 1 s of the submit is the NOTIFY wake-up
    worker = TaskManager(postgres_url, poll_interval=5, worker_id="listener")
    try:
        worker.use("job", lambda task: task.payload)
        worker.start()
        name = _application_name(postgres_url)
        wait_for(
            lambda: (
                _sql(
                    postgres_url,
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'LISTEN tideflow_tasks'"
                    + (" AND application_name = %s" if name else ""),
                    (name,) if name else (),
                )[0][0]
                >= 1
            ),
            timeout=10,
            message="the worker never LISTENed",
        )
        # a first task run to the end: the claim that followed came back empty, so the worker
        # now sleeps its 5 s poll interval
        warm_up = client.submit("job", -1)
        wait_for(lambda: client.get_task(warm_up).status == "completed", timeout=10)  # type: ignore[union-attr]
        for i in range(3):
            task_id = client.submit("job", i)  # another manager: no in-process wake-up
            info = wait_for(
                lambda task_id=task_id: (t := client.get_task(task_id)).status == "completed" and t,
                timeout=4,
                message="the idle worker did not wake up for a new task",
            )
            latency = (info.start_time - info.created_at).total_seconds()
            assert latency < 1.0, f"task {i} started {latency:.3f}s after it was submitted"
    finally:
        worker.stop(timeout=5)
        worker.close()


def test_worker_survives_lost_connections(postgres_url: str, client: TaskManager) -> None:
    n_tasks = 300
    worker = TaskManager(
        postgres_url, poll_interval=0.05, worker_id="survivor", max_concurrent_tasks=8
    )
    stop_killing = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop_killing.wait(0.25):
            kills.append(_terminate_backends(postgres_url))

    thread = threading.Thread(target=killer, daemon=True)
    try:
        worker.use("job", lambda task: time.sleep(0.01) or task.payload)
        ids = client.submit_many([("job", i) for i in range(n_tasks)])
        worker.start()
        wait_for(
            lambda: client.query_tasks(status="completed", limit=1).total > 20,
            timeout=30,
            message="the worker never got going",
        )
        thread.start()
        wait_for(  # several rounds of killed connections while the batch runs
            lambda: len(kills) >= 6, timeout=15, message="the killer thread did not run"
        )
        stop_killing.set()
        thread.join(timeout=10)
        assert sum(kills) > 0, "no backend was terminated"

        def finished() -> int:
            return client.query_tasks(status="completed", limit=1).total

        wait_for(
            lambda: finished() == n_tasks,
            timeout=60,
            interval=0.1,
            message=lambda: f"only {finished()}/{n_tasks} completed after losing connections",
        )
        assert client.query_tasks(status="running", limit=1).total == 0
        for task_id in ids[:: n_tasks // 30]:
            assert client.get_task(task_id).result == ids.index(task_id)
        # the worker is still serving (and its LISTEN connection came back)
        late = client.submit("job", 7)
        info = wait_for(
            lambda: (t := client.get_task(late)).status == "completed" and t,
            timeout=10,
            message="the worker stopped serving after the connection loss",
        )
        assert info.result == 7
    finally:
        stop_killing.set()
        worker.stop(timeout=5)
        worker.close()
