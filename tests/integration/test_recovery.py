"""Dead and superseded workers: their running tasks are recovered by a live worker (§8).

A "ghost" is a worker row written straight to the store, with a task claimed in its name, as a
worker process on another machine would have left them. Runs on every backend.
"""

from __future__ import annotations

import time
from typing import Any

from support.wait import heartbeats_pass, wait_for, wait_for_status
from support.workers import claim_as, ghost
from support.workflow import RECOVERED_THEN_COMPLETED

FAST = {"task_heartbeat_interval": 0.05, "worker_heartbeat_interval": 0.05}


def status_of(tm: Any, worker_id: str) -> str | None:
    info = tm.get_worker(worker_id)
    return None if info is None else info.status


def test_task_of_a_dead_worker_is_recovered_without_using_an_attempt(make_manager: Any) -> None:
    tm = make_manager(**FAST)
    tm.use("job", lambda task: f"done by {task.worker_id}")
    tm.pause()
    tm.start()
    dead_task, live_task = tm.submit("job"), tm.submit("job")
    now = time.time()
    ghost(tm, "ghost-dead", last_seen=now - 120)  # past the 30 s worker_heartbeat_timeout
    claim_as(tm, "ghost-dead", dead_task)
    ghost(tm, "ghost-live", last_seen=now)  # seen just now: alive for the next 30 s
    claim_as(tm, "ghost-live", live_task)
    tm.resume()

    info = wait_for_status(tm, dead_task, "completed")
    assert info.result == f"done by {tm.worker_id}"
    assert info.retry_count == 0
    kinds = [e.event_type for e in tm.query_task_events(dead_task).items]
    assert kinds == RECOVERED_THEN_COMPLETED
    (recovered,) = tm.query_task_events(dead_task, event_type="task_recovered").items
    assert recovered.worker_id == "ghost-dead"
    assert recovered.metadata == {
        "recovered_from_worker_id": "ghost-dead",
        "recovered_by_worker_id": tm.worker_id,
    }
    attempts = tm.query_task_attempts(dead_task).items
    assert [(a.attempt, a.worker_id, a.outcome) for a in attempts] == [
        (1, "ghost-dead", "interrupted"),
        (2, tm.worker_id, "completed"),
    ]
    assert status_of(tm, "ghost-dead") == "dead"

    # the live worker's task is left alone, round after round
    heartbeats_pass(tm)
    still = tm.get_task(live_task)
    assert (still.status, still.worker_id, still.attempt) == ("running", "ghost-live", 1)
    assert status_of(tm, "ghost-live") == "active"


def test_a_newer_worker_of_the_same_pod_supersedes_and_recovers(make_manager: Any) -> None:
    tm = make_manager(pod_id="node-7", **FAST)
    tm.use("job", lambda task: "again")
    task_id = tm.submit("job")
    # the old process of pod node-7, alive a moment ago, holds a task
    ghost(tm, "old-process", last_seen=time.time(), pod_id="node-7")
    claim_as(tm, "old-process", task_id)
    tm.start()  # the new process of the same pod registers
    info = wait_for_status(tm, task_id, "completed")
    assert info.result == "again"
    assert info.retry_count == 0
    assert status_of(tm, "old-process") == "superseded"
    assert status_of(tm, tm.worker_id) == "active"
    attempts = tm.query_task_attempts(task_id).items
    assert [(a.worker_id, a.outcome) for a in attempts] == [
        ("old-process", "interrupted"),
        (tm.worker_id, "completed"),
    ]


def test_a_superseded_worker_claims_nothing_until_its_pod_is_free(make_manager: Any) -> None:
    tm = make_manager(pod_id="node-3", **FAST)
    tm.use("job", lambda task: "ran")
    tm.start()
    wait_for(lambda: status_of(tm, tm.worker_id) == "active")
    # a newer process of the same pod registers (and, being a ghost, never heartbeats)
    ghost(tm, "node-3-new", last_seen=time.time(), pod_id="node-3")
    assert status_of(tm, tm.worker_id) == "superseded"
    heartbeats_pass(tm)  # it has read its status and stopped claiming

    task_id = tm.submit("job")
    heartbeats_pass(tm)
    assert tm.get_task(task_id).status == "pending"

    tm._store.set_worker_status("node-3-new", "stopped", time.time())
    info = wait_for_status(tm, task_id, "completed")
    assert (info.result, info.worker_id) == ("ran", tm.worker_id)
    assert status_of(tm, tm.worker_id) == "active"


def test_without_recovery_a_dead_workers_task_times_out_when_stalled(make_manager: Any) -> None:
    tm = make_manager(recover_running_jobs=False, task_heartbeat_timeout=0.3, **FAST)
    tm.use("job", lambda task: "second try")
    tm.pause()
    tm.start()
    task_id = tm.submit("job", max_retries=2)
    ghost(tm, "ghost", last_seen=time.time() - 120)
    claim_as(tm, "ghost", task_id)
    tm.resume()

    info = wait_for_status(tm, task_id, "completed")
    assert info.retry_count == 1  # the stalled attempt used one up
    attempts = tm.query_task_attempts(task_id).items
    assert [(a.worker_id, a.outcome) for a in attempts] == [
        ("ghost", "timeout"),
        (tm.worker_id, "completed"),
    ]
    # judged dead all the same: only the recovery of its tasks is off
    assert status_of(tm, "ghost") == "dead"


def test_one_worker_at_a_time_runs_the_sweeps(shared_db_url: str) -> None:
    from tideflow import TaskManager

    def holder() -> str | None:
        return client._store.lease_holder("maintenance")  # type: ignore[no-any-return]

    client = TaskManager(shared_db_url, allow_unregistered=True)
    first = TaskManager(shared_db_url, worker_id="first", poll_interval=0.02, **FAST)
    second = TaskManager(shared_db_url, worker_id="second", poll_interval=0.02, **FAST)
    try:
        for tm in (first, second):
            tm.use("job", lambda task: None)
            tm.pause()  # nothing is claimed: only the sweeps are watched
        first.start()
        wait_for(lambda: holder() == "first", message="the first worker never took the lease")
        second.start()
        heartbeats_pass(second)
        assert holder() == "first"  # renewed every round: the second worker only asks

        def recovered_by(task_id: int) -> str | None:
            found = client.query_task_events(task_id, event_type="task_recovered").items
            return found[0].metadata["recovered_by_worker_id"] if found else None

        ghost(client, "gone-1", last_seen=time.time() - 120)
        task_id = client.submit("job")
        claim_as(client, "gone-1", task_id)
        assert wait_for(lambda: recovered_by(task_id)) == "first"
        client.cancel_task(task_id)  # out of the way of the next claim

        first.stop()  # gives the lease up
        wait_for(lambda: holder() == "second", message="the lease was not taken over")
        ghost(client, "gone-2", last_seen=time.time() - 120)
        task_id = client.submit("job")
        claim_as(client, "gone-2", task_id)
        assert wait_for(lambda: recovered_by(task_id)) == "second"
    finally:
        for tm in (second, first, client):
            tm.stop(timeout=5)
            tm.close()


def test_a_superseded_worker_whose_successor_dies_works_again(make_manager: Any) -> None:
    """Issue 10 path 1: the successor of its pod is killed and no other worker is left to
    judge it: the superseded worker marks it dead itself and registers again."""
    tm = make_manager(pod_id="node-5", worker_heartbeat_timeout=0.5, **FAST)
    tm.use("job", lambda task: "ran")
    tm.start()
    wait_for(lambda: status_of(tm, tm.worker_id) == "active")
    ghost(tm, "node-5-new", last_seen=time.time(), pod_id="node-5")  # then killed: no heartbeat
    assert status_of(tm, tm.worker_id) == "superseded"
    wait_for(lambda: status_of(tm, "node-5-new") == "dead", message="the successor was not judged")
    wait_for(lambda: status_of(tm, tm.worker_id) == "active", message="it never registered again")
    task_id = tm.submit("job")
    info = wait_for_status(tm, task_id, "completed")
    assert info.worker_id == tm.worker_id


def test_a_pod_replacement_recovers_its_predecessor_while_it_holds_the_lease(
    make_manager: Any,
) -> None:
    """Issue 10 path 2: the killed predecessor held the maintenance lease a moment ago; its
    replacement recovers its tasks at once instead of waiting for the lease to expire."""
    tm = make_manager(pod_id="node-9", **FAST)  # default 30 s heartbeat timeout
    tm.use("job", lambda task: "again")
    task_id = tm.submit("job")
    ghost(tm, "node-9-old", last_seen=time.time(), pod_id="node-9")
    assert tm._store.acquire_lease("maintenance", "node-9-old", 30.0)
    claim_as(tm, "node-9-old", task_id)
    tm.start()
    info = wait_for_status(tm, task_id, "completed", timeout=10)
    assert info.result == "again"
    (recovered,) = tm.query_task_events(task_id, event_type="task_recovered").items
    assert recovered.metadata["recovered_by_worker_id"] == tm.worker_id
    # the lease died with its holder: the replacement runs the sweeps now
    wait_for(lambda: tm._store.lease_holder("maintenance") == tm.worker_id)


def test_the_lease_of_a_dead_holder_is_free_at_once(make_manager: Any) -> None:
    """Issue 10 path 2 without pod_id: a holder that renewed the lease just now but whose
    worker is dead (silent past the timeout) no longer blocks recovery or retention."""
    tm = make_manager(
        worker_heartbeat_timeout=5.0,
        retention_interval=0.2,
        retention={"expire_time": 0.0, "statuses": ["permanently_failed"]},
        **FAST,
    )

    def job(task: Any) -> str:
        if task.payload == "fail":
            raise ValueError("expected")
        return "again"

    tm.use("job", job)
    old = tm.submit("job")
    tm.pause()
    tm.start()
    failing = tm.submit("job", "fail", max_retries=1)
    ghost(tm, "killed-holder", last_seen=time.time() - 60)
    assert tm._store.acquire_lease("maintenance", "killed-holder", 30.0)  # renewed just now
    claim_as(tm, "killed-holder", old)
    tm.resume()
    wait_for_status(tm, old, "completed", timeout=4)  # well within the 5 s timeout
    # and the automatic retention sweep runs (failed tasks expire at once here)
    wait_for(lambda: tm.get_task(failing) is None, timeout=4, message="retention never ran")


def test_failing_steps_do_not_stop_the_workers_own_heartbeat(
    make_manager: Any, monkeypatch: Any
) -> None:
    """Issue 10 path 3: the task heartbeat and the release of an orphaned claim fail every
    round, yet the worker keeps heartbeating itself (and so is never judged dead)."""
    import threading

    tm = make_manager(**FAST)
    tm.use("job", lambda task: None)
    tm.pause()
    tm.start()
    task_id = tm.submit("job")
    store = tm._store

    def broken_for_the_worker(real: Any) -> Any:
        def call(*args: Any) -> Any:
            if threading.current_thread().name.startswith("tideflow-"):
                raise RuntimeError("the database refused this call")
            return real(*args)

        return call

    monkeypatch.setattr(store, "get_task", broken_for_the_worker(store.get_task))
    claim_as(tm, tm.worker_id, task_id)  # an orphan: owned by the worker, never run
    heartbeats_pass(tm, rounds=2)  # the orphan has been seen
    # the combined heartbeat fails, and so does the task heartbeat of its one-by-one fallback
    monkeypatch.setattr(store, "heartbeat", broken_for_the_worker(store.heartbeat))
    monkeypatch.setattr(store, "heartbeat_tasks", broken_for_the_worker(store.heartbeat_tasks))
    heartbeats_pass(tm, rounds=4)
    assert status_of(tm, tm.worker_id) == "active"
    assert tm.get_task(task_id).status == "running"


def test_pause_returns_only_once_no_claim_is_on_its_way(
    make_manager: Any, monkeypatch: Any
) -> None:
    """A claim already on its way when pause() is called lands before pause() returns, so a
    task submitted after pause() returned is never claimed."""
    import threading

    tm = make_manager(**FAST)
    tm.use("job", lambda task: None)
    store = tm._store
    real_exchange = store.exchange
    entered, release = threading.Event(), threading.Event()

    def slow_exchange(changes: Any, request: Any) -> Any:
        if request is not None and not release.is_set():
            entered.set()
            release.wait(10)
        return real_exchange(changes, request)

    monkeypatch.setattr(store, "exchange", slow_exchange)
    tm.start()
    assert entered.wait(10)
    pauser = threading.Thread(target=tm.pause)
    pauser.start()
    pauser.join(0.3)
    assert pauser.is_alive(), "pause() returned while a claim was still on its way"
    release.set()
    pauser.join(10)
    assert not pauser.is_alive()
    task_id = tm.submit("job")
    heartbeats_pass(tm)
    assert tm.get_task(task_id).status == "pending"


def test_a_superseded_worker_stays_fenced_when_its_handlers_change(make_manager: Any) -> None:
    """Registering a handler refreshes the worker row, but never while it is fenced: that
    would supersede the newer worker of its pod in turn."""
    tm = make_manager(pod_id="node-4", **FAST)
    tm.use("job", lambda task: "ran")
    tm.start()
    wait_for(lambda: status_of(tm, tm.worker_id) == "active")
    ghost(tm, "node-4-new", last_seen=time.time(), pod_id="node-4")
    heartbeats_pass(tm)  # it has read its status
    tm.use("other", lambda task: None)  # a hot reload asks for a new registration
    heartbeats_pass(tm)
    assert status_of(tm, tm.worker_id) == "superseded"
    assert status_of(tm, "node-4-new") == "active"
