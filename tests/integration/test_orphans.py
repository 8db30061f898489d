"""A claim that committed but never reached the worker is given back, not left running."""

from __future__ import annotations

from typing import Any

from support.wait import wait_for_status
from support.workers import claim
from support.workflow import RECOVERED_THEN_COMPLETED


def test_orphaned_claim_is_released_and_then_run(make_manager: Any) -> None:
    tm = make_manager(task_heartbeat_interval=0.05, worker_heartbeat_interval=0.05)
    tm.use("job", lambda task: "done")
    tm.pause()
    tm.start()
    task_id = tm.submit("job")
    # claim the row in the worker's name, as if the claim's reply had been lost on the way
    (row,) = claim(tm, tm.worker_id)
    assert (row.id, row.status) == (task_id, "running")
    tm.resume()

    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "done"
    kinds = [e.event_type for e in tm.query_task_events(task_id).items]
    assert kinds == RECOVERED_THEN_COMPLETED
    outcomes = [a.outcome for a in tm.query_task_attempts(task_id).items]
    assert outcomes == ["interrupted", "completed"]
    assert info.retry_count == 0
