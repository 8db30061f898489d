"""Retention (SPEC §10): expired workflows go with their events and attempts; nothing live does.
Runs on every backend."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from support.wait import heartbeats_pass, wait_for, wait_for_status
from support.workers import claim_as, ghost
from tideflow.errors import InvalidOptionError

LATER = {"now": time.time() + 7200, "expire_time": 3600}  # everything finished is expired


def audit_rows(tm: Any, task_ids: list[int]) -> tuple[int, int]:
    events = sum(tm.query_task_events(i, limit=0).total for i in task_ids)
    attempts = sum(tm.query_task_attempts(i, limit=0).total for i in task_ids)
    return events, attempts


def test_run_retention_deletes_expired_workflows_and_keeps_live_ones(make_manager: Any) -> None:
    tm = make_manager()

    def parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "ok"}, {"name": "ok"}])
        return "parent done"

    def waiting_parent(task: Any) -> Any:
        if task.stage == 0:
            return task.next([{"name": "ok"}, {"name": "approval"}])
        return "never"

    def boom(task: Any) -> None:
        raise RuntimeError("boom")

    tm.use(
        {
            "ok": lambda task: "ok",
            "boom": boom,
            "parent": parent,
            "waiting_parent": waiting_parent,
            "approval": lambda task: task.suspend("needs a human"),
        }
    )
    ok_id = tm.submit("ok")
    boom_id = tm.submit("boom", max_retries=1)
    parent_id = tm.submit("parent")
    waiting_id = tm.submit("waiting_parent")
    later_id = tm.submit("ok", delay=3600)
    tm.start()
    wait_for_status(tm, ok_id, "completed")
    wait_for_status(tm, boom_id, "permanently_failed")
    wait_for_status(tm, parent_id, "completed")
    wait_for_status(tm, waiting_id, "suspended")
    wait_for(lambda: tm.query_tasks(status="suspended", limit=0).total == 2)
    tm.stop()

    # nothing has expired yet under the default policy (a day)
    assert tm.run_retention() == {"tasks_deleted": 0, "events_deleted": 0, "attempts_deleted": 0}

    tree = [t.id for t in tm.query_tasks(workflow_root_id=parent_id).items]
    waiting_tree = [t.id for t in tm.query_tasks(workflow_root_id=waiting_id).items]
    assert len(tree) == len(waiting_tree) == 3
    doomed = [ok_id, boom_id, *tree]
    events, attempts = audit_rows(tm, doomed)
    kept_before = audit_rows(tm, [*waiting_tree, later_id])

    deleted = tm.run_retention(LATER)
    assert deleted == {
        "tasks_deleted": len(doomed),
        "events_deleted": events,
        "attempts_deleted": attempts,
    }
    assert all(tm.get_task(i) is None for i in doomed)
    assert audit_rows(tm, doomed) == (0, 0)
    # the suspended workflow (with its completed child) and the pending task stay, audit and all
    assert all(tm.get_task(i) is not None for i in [*waiting_tree, later_id])
    assert audit_rows(tm, [*waiting_tree, later_id]) == kept_before

    # the policy's statuses decide what counts: pending, here (suspended never does)
    deleted = tm.run_retention({**LATER, "statuses": ["pending"]})
    assert deleted["tasks_deleted"] == 1
    assert tm.get_task(later_id) is None
    assert tm.get_task(waiting_id) is not None


def test_a_bad_policy_is_refused_and_deletes_nothing(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    done_id = tm.submit("anything")
    tm.cancel_task(done_id)  # permanently_failed now
    for policy, match in (
        ("a day", "must be a dict"),
        ({"expire": 1}, "unknown retention policy key"),
        ({"statuses": ["running"]}, "statuses"),
        ({"statuses": "completed"}, "statuses"),
        ({"expire_time": -1}, "expire_time"),
        ({"now": datetime(2030, 1, 1)}, "timezone-aware"),  # naive on purpose
    ):
        with pytest.raises(InvalidOptionError, match=match):
            tm.run_retention(policy)
    assert tm.get_task(done_id) is not None
    assert tm.run_retention({"expire_time": 0, "now": time.time() + 1})["tasks_deleted"] == 1


FAST = {"task_heartbeat_interval": 0.05, "worker_heartbeat_interval": 0.05}


def test_the_worker_does_not_sweep_at_start_up(make_manager: Any) -> None:
    tm = make_manager(retention={"expire_time": 0}, retention_interval=3600, **FAST)
    tm.use("ok", lambda task: "ok")
    task_id = tm.submit("ok")
    tm.start()
    wait_for_status(tm, task_id, "completed")
    heartbeats_pass(tm)
    assert tm.get_task(task_id) is not None  # expired, but the first sweep is an hour away


def test_the_worker_sweeps_every_retention_interval(make_manager: Any) -> None:
    tm = make_manager(retention={"expire_time": 0}, retention_interval=0.1, **FAST)
    tm.use("ok", lambda task: "ok")
    tm.start()
    first = tm.submit("ok")
    wait_for(lambda: tm.get_task(first) is None, message="the first task was never swept")
    second = tm.submit("ok")
    wait_for(lambda: tm.get_task(second) is None, message="the second task was never swept")
    assert tm.query_task_events(second).total == 0


def test_retention_forgets_workers_long_gone(make_manager: Any) -> None:
    tm = make_manager(allow_unregistered=True)
    task_id = tm.submit("job")
    long_ago = time.time() - 7200
    ghost(tm, "stopped-long-ago", last_seen=long_ago, status="stopped")
    ghost(tm, "dead-long-ago", last_seen=long_ago, status="dead")
    ghost(tm, "dead-but-holding", last_seen=long_ago, status="active")
    claim_as(tm, "dead-but-holding", task_id)  # its task must be recovered first
    tm._store.set_worker_status("dead-but-holding", "dead", long_ago)
    ghost(tm, "stopped-just-now", last_seen=time.time(), status="stopped")
    ghost(tm, "active-long-ago", last_seen=long_ago)  # nobody has judged it yet

    tm.run_retention({"expire_time": 3600})
    assert {w.worker_id for w in tm.get_workers()} == {
        "dead-but-holding",
        "stopped-just-now",
        "active-long-ago",
    }
