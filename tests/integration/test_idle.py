"""An idle worker: ``next_due()`` on every store, and on PostgreSQL a worker that sleeps until
a NOTIFY or the next due task instead of polling."""

from __future__ import annotations

import time
from typing import Any

from support.wait import wait_for_status
from support.workers import claim_as, ghost


def test_next_due_is_the_earliest_waiting_task(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)
    store = tm._store
    later = tm.submit("job", delay=600)
    sooner = tm.submit("job", delay=300)
    rows = {t: store.get_task(t) for t in (later, sooner)}
    assert store.next_due() == rows[sooner].next_run_time
    tm.cancel_task(sooner)
    assert store.next_due() == rows[later].next_run_time
    tm.cancel_task(later)
    assert store.next_due() is None


def test_an_idle_worker_wakes_for_a_task_delayed_elsewhere(postgres_url: str) -> None:
    """The worker's poll interval is far longer than the test: only the NOTIFY of the delayed
    task (a claim that comes back short, then a sleep until ``next_due()``) runs it."""
    from tideflow import TaskManager

    worker = TaskManager(postgres_url, poll_interval=3600)
    submitter = TaskManager(postgres_url)
    try:
        worker.use("job", lambda task: task.payload)
        submitter.use("job", lambda task: task.payload)
        worker.start()
        delayed = submitter.submit("job", "later", delay=1.0)
        info = wait_for_status(submitter, delayed, "completed", timeout=20)
        assert info.result == "later"
    finally:
        worker.stop(timeout=5)
        worker.close()
        submitter.close()


def test_heartbeat_is_both_heartbeats_and_the_clock_in_one_call(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("job", lambda task: None)
    task_id = tm.submit("job")
    store = tm._store
    ghost(tm, "beater", last_seen=time.time() - 20)
    claim_as(tm, "beater", task_id)
    before = store.get_task(task_id).heartbeat_at
    seen_before = tm.get_worker("beater").last_seen_at

    owned, status, offset = store.heartbeat("beater", 30.0)

    assert owned == {task_id: 1}
    assert status == "active"
    assert abs(offset) < 5.0
    assert store.get_task(task_id).heartbeat_at >= before
    assert tm.get_worker("beater").last_seen_at > seen_before
    assert store.heartbeat("nobody", 30.0)[:2] == ({}, None)
