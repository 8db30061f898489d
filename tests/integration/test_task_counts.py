"""The kept task counts (schema 4, ``tideflow_task_counts``) behind ``get_task_stats``, the
dashboard and ``/metrics`` equal a count of the tasks table, after real workers ran retries,
failures, timeouts, workflows with fan-in, suspensions, cancels (waiting and running), pauses and
resumes, ``retry_task``, deletions and retention; two workers share the database where the
backend allows it. Runs on every backend."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from support.wait import wait_for, wait_for_status
from tideflow.errors import InvalidTransitionError

STATS = "SELECT name, status, COUNT(*) FROM tideflow_tasks GROUP BY name, status"


def counted(tm: Any) -> list[tuple[str, str, int]]:
    """What the tasks table says: ``SELECT name, status, count(*) ... GROUP BY``."""
    with tm._store._read() as cur:
        cur.execute(STATS)
        return sorted((str(n), str(s), int(c)) for n, s, c in cur.fetchall())


def kept(tm: Any) -> list[tuple[str, str, int]]:
    """What ``get_task_stats`` answers."""
    return sorted((r["name"], r["status"], r["count"]) for r in tm.get_task_stats())


def assert_exact(tm: Any) -> None:
    assert kept(tm) == counted(tm)


def settled(tm: Any) -> bool:
    """Nothing running or waiting to run again; only tasks due in an hour are pending."""
    busy = tm.query_tasks(statuses=["running", "failed", "timeout"], limit=0).total
    due = [t for t in tm.query_tasks(status="pending", limit=500).items if t.name != "later"]
    return busy == 0 and not due


def test_kept_counts_equal_the_tasks_table_after_real_work(make_manager: Any, db_url: str) -> None:
    release = threading.Event()
    approved = threading.Event()

    def flaky(task: Any) -> str:
        if task.retry_count < 2:
            raise RuntimeError("not yet")
        return "ok"

    def boom(task: Any) -> None:
        raise RuntimeError("boom")

    def sleepy(task: Any) -> str:
        if task.retry_count == 0:
            time.sleep(0.3)  # past its 0.1 s timeout: timed out, then retried
        return "awake"

    def slow(task: Any) -> str:
        release.wait(30)
        return "released"

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "ok"}, {"name": "ok"}, {"name": "boom", "max_retries": 1}])
        return "children done"

    def approval(task: Any) -> Any:
        return "approved" if approved.is_set() else task.suspend("needs a human")

    handlers = {
        "ok": lambda task: "ok",
        "flaky": flaky,
        "boom": boom,
        "sleepy": sleepy,
        "slow": slow,
        "parent": parent,
        "approval": approval,
        "later": lambda task: "later",
    }
    options = {"max_concurrent_tasks": 4, "retry_interval": 0.01}
    managers = [make_manager(**options)]
    if db_url != "sqlite::memory:":  # a second worker on the same database
        managers.append(make_manager(db=db_url, **options))
    for tm in managers:
        tm.use(handlers)
    tm = managers[0]
    tm.setup()

    ok = [tm.submit("ok") for _ in range(20)]
    for i in range(4):  # deduplicated: one task per key while it is open
        tm.submit("later", unique_key=f"k{i}", delay=3600)
        tm.submit("later", unique_key=f"k{i}", delay=3600)
    later = [t.id for t in tm.query_tasks(name="later", limit=10).items]
    flaky_ids = [tm.submit("flaky", max_retries=5) for _ in range(5)]
    boom_ids = [tm.submit("boom", max_retries=2) for _ in range(3)]
    sleepy_ids = [tm.submit("sleepy", timeout=0.1, max_retries=3) for _ in range(2)]
    slow_ids = [tm.submit("slow", timeout=60) for _ in range(2)]
    parents = [tm.submit("parent") for _ in range(3)]
    approvals = [tm.submit("approval") for _ in range(2)]
    assert_exact(tm)

    for m in managers:
        m.start()
    tm.cancel_task(later[0], reason="not needed")  # pending -> permanently_failed
    tm.pause_task(later[1])  # pending -> paused
    wait_for_status(tm, slow_ids[0], "running")
    tm.cancel_task(slow_ids[0], reason="taking too long")  # running -> permanently_failed
    release.set()
    for task_id in [*ok, *flaky_ids, *sleepy_ids, slow_ids[1], *parents]:
        wait_for_status(tm, task_id, "completed")
    for task_id in boom_ids:
        wait_for_status(tm, task_id, "permanently_failed")
    for task_id in approvals:
        wait_for_status(tm, task_id, "suspended")
    wait_for(lambda: settled(tm), message=lambda: f"not settled: {kept(tm)}")
    assert_exact(tm)

    # retry_task (permanently_failed -> pending, fails again), resume (paused, suspended)
    for task_id in boom_ids:
        tm.retry_task(task_id)
    tm.resume_task(later[1])  # paused -> pending (due in an hour)
    approved.set()
    for task_id in approvals:
        tm.resume_task(task_id)
    for task_id in approvals:
        wait_for_status(tm, task_id, "completed")
    wait_for(lambda: settled(tm), message=lambda: f"not settled: {kept(tm)}")
    for task_id in boom_ids:
        wait_for_status(tm, task_id, "permanently_failed")
    assert_exact(tm)

    # deletions: by id, by status; then retention of every finished workflow
    assert tm.delete_tasks(ids=ok[:5]) == 5
    tm.pause_task(later[2])
    assert tm.delete_tasks(status="paused") == 1
    assert_exact(tm)
    deleted = tm.run_retention({"now": time.time() + 7200, "expire_time": 3600})
    assert deleted["tasks_deleted"] > 0
    assert_exact(tm)
    assert [(n, s) for n, s, _ in kept(tm)] == [("later", "pending")]  # the rest expired

    # and it goes on being kept while the workers keep working
    more = [tm.submit("flaky", max_retries=5) for _ in range(5)]
    for task_id in more:
        wait_for_status(tm, task_id, "completed")
    for m in managers:
        m.stop(timeout=10)
    assert_exact(tm)


def test_a_change_that_loses_its_guard_counts_nothing(make_manager: Any) -> None:
    """A cancel of a task that finished meanwhile, a second retry, a pause of a finished
    task: refused, and the counts stay as the table is."""
    tm = make_manager()
    tm.use("ok", lambda task: "ok")
    task_id = tm.submit("ok")
    tm.start()
    wait_for_status(tm, task_id, "completed")
    for action in (tm.cancel_task, tm.pause_task, tm.retry_task):
        with pytest.raises(InvalidTransitionError):
            action(task_id)
    assert_exact(tm)
    assert kept(tm) == [("ok", "completed", 1)]


# --- tideflow db recount -----------------------------------------------------------------------
def drift(tm: Any) -> None:
    """Make the kept counts wrong the way a writer that does not keep them would: tasks
    inserted and a status changed behind the counts' back."""
    with tm._store._write() as cur:
        cur.execute(
            tm._store._q(
                "UPDATE tideflow_tasks SET status = 'paused'"
                " WHERE id = (SELECT MIN(id) FROM tideflow_tasks WHERE name = ?)"
            )
            if tm._store.dialect != "mysql"
            else tm._store._q(
                "UPDATE tideflow_tasks SET status = 'paused' WHERE name = ? ORDER BY id LIMIT 1"
            ),
            ("ok",),
        )
        cur.execute(
            tm._store._q("UPDATE tideflow_task_counts SET n = n + 7 WHERE name = ?"), ("ok",)
        )


def test_recount_puts_drifted_counts_right(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    tm.setup()
    for _ in range(5):
        tm.submit("ok")
    tm.submit("other")
    assert tm._store.recount_tasks() == []  # nothing to correct
    drift(tm)
    assert kept(tm) != counted(tm)

    fixed = tm._store.recount_tasks()

    assert fixed == [("ok", "paused", 0, 1), ("ok", "pending", 12, 4)]
    assert_exact(tm)
    assert kept(tm) == [("ok", "paused", 1), ("ok", "pending", 4), ("other", "pending", 1)]
    assert tm._store.recount_tasks() == []


def test_recount_beside_working_workers_stays_exact(make_manager: Any, db_url: str) -> None:
    """Recounts while workers finish tasks: each task change is either in a recount's count or
    added to the counts after it, never both and never neither."""
    options = {"max_concurrent_tasks": 20}
    managers = [make_manager(**options)]
    if db_url != "sqlite::memory:":
        managers.append(make_manager(db=db_url, **options))
    for m in managers:
        m.use("ok", lambda task: "ok")
    tm = managers[0]
    tm.setup()
    tm.submit_many([("ok", None)] * 3000)
    for m in managers:
        m.start()
    recounts = 0
    while tm.query_tasks(status="pending", limit=0).total > 0 or recounts < 3:
        tm._store.recount_tasks()
        recounts += 1
    wait_for(lambda: tm.query_tasks(status="completed", limit=0).total == 3000)
    for m in managers:
        m.stop(timeout=10)
    assert_exact(tm)
