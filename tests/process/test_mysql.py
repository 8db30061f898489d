"""MySQL/MariaDB store: several processes on one database, concurrent setup, dialect details.

The server is ``TIDEFLOW_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``); the
shared conftest hands out a clean private database, and skips these tests when the server is
unreachable (fails them when ``CI=true``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import MYSQL
from support.wait import wait_for
from tideflow import TaskManager
from tideflow.errors import StoreError

pymysql = pytest.importorskip("pymysql")

SCRIPT = Path(__file__).with_name("worker_script.py")
WORKERS = ("mysql-a", "mysql-b")
N_TASKS = 5000


@pytest.fixture
def mysql_url() -> str:
    """A clean MySQL database (no ``tideflow_*`` tables)."""
    return MYSQL.url()


@pytest.fixture
def sql(mysql_url: str) -> Iterator[Any]:
    """A raw autocommit PyMySQL cursor on the test database, to look behind the store."""
    parts = urlsplit(mysql_url)
    conn = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        autocommit=True,
    )
    try:
        yield conn.cursor()
    finally:
        conn.close()


def _logs(paths: list[Path]) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths if p.exists()
    )


def test_capable_work_is_not_starved_by_a_backlog_it_cannot_serve(mysql_url: str) -> None:
    """Tasks this worker lacks capabilities for are filtered in SQL, not after the LIMIT."""
    with TaskManager(mysql_url, poll_interval=0.02, max_concurrent_tasks=2) as tm:
        done = threading.Event()
        tm.use("job", lambda task: done.set() if task.payload == "plain" else None)
        tm.configure_worker(capabilities=["cpu"])
        for _ in range(50):
            tm.submit("job", "gpu", requires=["gpu"], priority=10)
        cpu = tm.submit("job", "cpu", requires=["cpu"], priority=5)
        plain = tm.submit("job", "plain")
        tm.start()
        wait_for(lambda: tm.get_task(plain).status == "completed", timeout=15)
        assert tm.get_task(cpu).status == "completed"
        assert tm.query_tasks(status="pending", limit=0).total == 50


def _race_submit(managers: list[TaskManager], key: str) -> list[int]:
    """Every manager submits ``key`` at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(managers))
    found: list[int] = []
    errors: list[BaseException] = []

    def submit(tm: TaskManager) -> None:
        barrier.wait()
        try:
            found.append(tm.submit("job", None, unique_key=key))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(tm,)) for tm in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return found


def test_unique_key_is_deduplicated_across_racing_stores(mysql_url: str) -> None:
    """Two stores inserting the same unique_key at once end with one task (no IntegrityError)."""
    managers = [
        TaskManager(mysql_url, allow_unregistered=True, poll_interval=0.02) for _ in range(4)
    ]
    try:
        managers[0].setup()
        for round_no in range(15):
            found = _race_submit(managers, f"k{round_no}")
            assert len(set(found)) == 1, found
        assert managers[0].query_tasks(limit=0).total == 15
    finally:
        for tm in managers:
            tm.close()


def test_values_round_trip_exactly(mysql_url: str) -> None:
    with TaskManager(mysql_url, allow_unregistered=True) as tm:
        task_id = tm.submit("job", {"text": "naïve ☃ 100% ?", "n": 1.5}, tag="Tag ")
        info = tm.get_task(task_id)
        assert info.payload == {"text": "naïve ☃ 100% ?", "n": 1.5}
        assert info.tag == "Tag "
        # binary, no-pad collation: case and trailing spaces matter, as on SQLite/PostgreSQL
        assert tm.query_tasks(tag="Tag ", limit=0).total == 1
        assert tm.query_tasks(tag="tag ", limit=0).total == 0
        assert tm.query_tasks(tag="Tag", limit=0).total == 0


def test_errors_never_show_the_password() -> None:
    from tideflow.store.sql.mysql import MysqlStore

    store = MysqlStore("mysql://root:s3cr3t-pw@127.0.0.1:1/test?connect_timeout=1")
    assert store.safe_url == "mysql://root:***@127.0.0.1:1/test?connect_timeout=1"
    with pytest.raises(StoreError) as info:
        store.get_task(1)
    assert "s3cr3t-pw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    with pytest.raises(StoreError, match="no database"):
        MysqlStore("mariadb://root:s3cr3t-pw@localhost")
    with pytest.raises(StoreError, match="unknown option") as info:
        MysqlStore("mysql://root:s3cr3t-pw@localhost/db?bogus=1")
    assert "s3cr3t-pw" not in str(info.value)


def test_claims_use_the_claim_index(mysql_url: str, sql: Any) -> None:
    with TaskManager(mysql_url, allow_unregistered=True) as tm:
        tm.setup()
    sql.execute(
        "EXPLAIN SELECT id FROM tideflow_tasks FORCE INDEX (tideflow_tasks_claim)"
        " WHERE claimable = 1 AND next_run_time <= 1e12 AND name IN ('a', 'b')"
        " ORDER BY priority DESC, next_run_time, id LIMIT 10 FOR UPDATE SKIP LOCKED"
    )
    columns = [d[0].lower() for d in sql.description]
    (plan,) = sql.fetchall()
    row = dict(zip(columns, plan, strict=True))
    assert row["key"] == "tideflow_tasks_claim", row
