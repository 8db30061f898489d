"""One clock for liveness: the store judges heartbeats, expiry, leases and due times by the
database's now, in the statement, whatever the calling host's clock says.

Drives the store directly on every backend; the clock-skew cases (PostgreSQL and MySQL only)
run this process's ``time.time`` a minute ahead or behind the server's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tideflow.core import lifecycle
from tideflow.core.options import TaskPolicy
from tideflow.core.types import ClaimRequest, SweepRead, SweepRequest, TaskRow, WorkerRow
from tideflow.store.factory import open_store
from tideflow.store.protocol import Store

SERVER_DIALECTS = ("postgresql", "mysql")
LEASE = "maintenance"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A set-up store on the backend under test."""
    opened = open_store(db_url)
    try:
        opened.setup()
        yield opened
    finally:
        opened.close()


@pytest.fixture
def server_store(store: Store) -> Store:
    """The store, on a backend with a server clock of its own (PostgreSQL, MySQL)."""
    if store.dialect not in SERVER_DIALECTS:
        pytest.skip(
            "SQLite runs on one host: its clock is this host's clock,"
            " so there is no server clock to disagree with"
        )
    return store


@pytest.fixture(params=[60.0, -60.0], ids=["ahead", "behind"])
def skewed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[], float]:
    """Run this process's ``time.time`` 60 s ahead of (or behind) the real time; returns the
    real clock."""
    real = time.time
    skew: float = request.param
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    return real


def worker(store: Store, worker_id: str, *, seen_ago: float = 0.0, **fields: str) -> list[str]:
    """Register a worker row last seen ``seen_ago`` seconds ago on the store's clock."""
    seen = store.clock() - seen_ago
    return store.register_worker(
        WorkerRow(
            worker_id=worker_id,
            pod_id=fields.get("pod_id"),
            host="test",
            pid=1,
            status=fields.get("status", "active"),
            capabilities="[]",
            handlers='["job"]',
            concurrency=1,
            registered_at=seen,
            last_seen_at=seen,
            expires_at=seen + 30,
        )
    )


def around(value: float | None, before: float, after: float) -> bool:
    """Whether ``value`` was taken between ``before`` and ``after`` (with 1 s for the error of
    measuring the clock offset)."""
    return value is not None and before - 1.0 <= value <= after + 1.0


def statuses(store: Store) -> dict[str, str]:
    return {w.worker_id: w.status for w in store.list_workers()}


def submit(store: Store, *, due_in: float = -1.0) -> int:
    """Insert a ``job`` task due ``due_in`` seconds from now on the store's clock."""
    now = store.clock()
    task = lifecycle.new_task(
        name="job",
        type="async",
        payload="null",
        policy=TaskPolicy(),
        next_run_time=now + due_in,
        now=now,
    )
    (task_id,) = store.insert_tasks([task])
    return task_id


def claim(
    store: Store, worker_id: str, *, limit: int = 10, plan_at: float | None = None
) -> list[TaskRow]:
    """Claim due ``job`` tasks for ``worker_id``, planned at ``plan_at`` (default: clock())."""
    now = store.clock() if plan_at is None else plan_at
    return store.claim(
        ClaimRequest(
            worker_id=worker_id,
            now=now,
            limit=limit,
            names={"job": None},
            capabilities=frozenset(),
            plan=lifecycle.claim(worker_id, now),
        )
    )


# --- every backend -------------------------------------------------------------------------------
def test_clock_is_the_local_clock_plus_the_measured_offset(store: Store) -> None:
    assert abs(store.sync_clock()) < 1.0  # the servers under test run on this host
    before = time.time()
    now = store.clock()
    assert around(now, before, time.time())


def test_a_failed_clock_measurement_keeps_the_offset_and_never_raises(db_url: str) -> None:
    opened = open_store(db_url)
    offset = opened.sync_clock()
    opened.close()
    assert opened.sync_clock() == offset  # the measurement fails: the store is closed
    before = time.time()
    now = opened.clock()
    assert before + offset <= now <= time.time() + offset


def test_heartbeat_worker_sets_last_seen_and_expiry_from_the_database_clock(store: Store) -> None:
    worker(store, "w1", seen_ago=1000)
    before = store.clock()
    assert store.heartbeat_worker("w1", 30.0) == "active"
    after = store.clock()
    (row,) = store.list_workers()
    assert around(row.last_seen_at, before, after)
    assert row.expires_at - row.last_seen_at == pytest.approx(30.0, abs=0.01)
    store.set_worker_status("w1", "superseded", store.clock())
    assert store.heartbeat_worker("w1", 30.0) == "superseded"
    assert store.heartbeat_worker("gone", 30.0) is None


def test_mark_dead_workers_marks_only_silent_active_workers_but_the_caller(store: Store) -> None:
    worker(store, "silent", seen_ago=120)
    worker(store, "fresh")
    worker(store, "me", seen_ago=120)
    worker(store, "stopped", seen_ago=120, status="stopped")
    worker(store, "heartbeating", seen_ago=120)
    store.heartbeat_worker("heartbeating", 30.0)

    assert store.mark_dead_workers(30.0, exclude="me") == ["silent"]
    assert statuses(store) == {
        "silent": "dead",
        "fresh": "active",
        "me": "active",
        "stopped": "stopped",
        "heartbeating": "active",
    }
    assert store.mark_dead_workers(30.0, exclude="me") == []


def test_orphaned_tasks_lists_tasks_of_workers_not_active_and_marks_nobody(store: Store) -> None:
    owners = ["silent", "dead", "gone", "me"]
    ids = {owner: submit(store) for owner in owners}
    for owner in owners:
        (row,) = claim(store, owner, limit=1)
        assert row.id == ids[owner]
    worker(store, "silent", seen_ago=3600)
    worker(store, "dead", status="dead")
    worker(store, "me")

    orphans = store.orphaned_tasks(exclude="me")
    assert [(t.id, t.worker_id) for t in orphans] == [(ids["dead"], "dead"), (ids["gone"], "gone")]
    assert statuses(store)["silent"] == "active"  # silent for an hour, but not marked here
    assert store.orphaned_tasks(exclude="me", limit=1) == orphans[:1]

    assert store.mark_dead_workers(30.0, exclude="me") == ["silent"]
    assert [t.worker_id for t in store.orphaned_tasks(exclude="me")] == ["silent", "dead", "gone"]


def test_sweep_marks_takes_the_lease_and_reads_in_one_transaction(store: Store) -> None:
    """``sweep`` answers what mark_dead_workers, acquire_lease, orphaned_tasks and
    running_tasks answer one by one, and marks and leases the same."""
    ids = {owner: submit(store, due_in=-600) for owner in ("silent", "gone", "live")}
    for owner in ("silent", "gone", "live"):
        (row,) = claim(store, owner, limit=1, plan_at=store.clock() - 120)
        assert row.id == ids[owner]
    worker(store, "silent", seen_ago=3600)
    worker(store, "live")
    worker(store, "me")
    worker(store, "holder")
    assert store.acquire_lease(LEASE, "holder", 30.0)

    def request(**fields: object) -> SweepRequest:
        values: dict[str, object] = {
            "worker_id": "me",
            "silent_for": 30.0,
            "lease": LEASE,
            "fenced": False,
            "recover": True,
            "stalled_after": 60.0,
        }
        values.update(fields)
        return SweepRequest(**values)  # type: ignore[arg-type]

    # another worker holds the lease: only the marks
    read = store.sweep(request())
    assert (read.dead, read.leader, read.orphaned, read.stalled) == (["silent"], False, [], [])
    assert statuses(store)["silent"] == "dead"
    store.set_worker_status("holder", "stopped", store.clock())
    # a fenced worker never takes the lease, even a free one
    assert store.sweep(request(fenced=True)) == SweepRead([], False, [], [])
    assert store.lease_holder(LEASE) == "holder"

    read = store.sweep(request())
    assert read.leader
    assert store.lease_holder(LEASE) == "me"
    assert [t.id for t in read.orphaned] == [ids["silent"], ids["gone"]]
    assert [t.id for t in read.stalled] == sorted(ids.values())  # every heartbeat 2 min old
    assert store.sweep(request(recover=False)).orphaned == []


def test_task_heartbeats_are_judged_by_their_age_on_the_database_clock(store: Store) -> None:
    task_id = submit(store, due_in=-600)
    (row,) = claim(store, "w1", plan_at=store.clock() - 120)  # heartbeat_at 2 minutes ago
    assert row.heartbeat_at is not None
    assert [t.id for t in store.running_tasks(heartbeat_older_than=60.0)] == [task_id]

    before = store.clock()
    assert store.heartbeat_tasks("w1") == {task_id: 1}
    after = store.clock()
    assert store.running_tasks(heartbeat_older_than=60.0) == []
    assert [t.id for t in store.running_tasks(worker_id="w1")] == [task_id]
    (fresh,) = store.running_tasks(worker_id="w1")
    assert around(fresh.heartbeat_at, before, after)
    assert store.heartbeat_tasks("w2") == {}


def test_claim_takes_due_tasks_by_the_database_clock_not_the_plan_time(store: Store) -> None:
    due = submit(store, due_in=-1)
    submit(store, due_in=30)
    # a plan time an hour ahead must not make the later task due
    rows = claim(store, "w1", plan_at=store.clock() + 3600)
    assert [r.id for r in rows] == [due]
    assert claim(store, "w1") == []


def test_register_worker_returns_the_workers_of_its_pod_it_superseded(store: Store) -> None:
    assert worker(store, "a3", pod_id="a", status="dead") == []
    assert worker(store, "a1", pod_id="a") == []  # a3 is dead: nothing to supersede
    assert worker(store, "a2", pod_id="a") == ["a1"]
    assert worker(store, "b1", pod_id="b") == []
    store.set_worker_status("a1", "active", store.clock())  # a1 came back by itself

    assert sorted(worker(store, "a4", pod_id="a")) == ["a1", "a2"]
    assert statuses(store) == {
        "a1": "superseded",
        "a2": "superseded",
        "a3": "dead",
        "b1": "active",
        "a4": "active",
    }
    assert worker(store, "a4", pod_id="a") == []  # registering again supersedes nobody
    assert worker(store, "solo") == []


def test_lease_holds_for_nobody_else_while_its_holder_is_active_and_renewing(store: Store) -> None:
    worker(store, "a")
    worker(store, "b")
    assert store.acquire_lease(LEASE, "a", 30.0)
    assert store.lease_holder(LEASE) == "a"
    assert not store.acquire_lease(LEASE, "b", 30.0)
    assert store.acquire_lease(LEASE, "a", 30.0)  # a renewal
    # stale only once the renewal is older than stale_after on the database's clock
    assert not store.acquire_lease(LEASE, "b", 3600.0)
    assert store.acquire_lease(LEASE, "b", -60.0)
    assert store.lease_holder(LEASE) == "b"
    store.release_lease(LEASE, "a")  # not a's to give up
    assert store.lease_holder(LEASE) == "b"
    store.release_lease(LEASE, "b")
    assert store.lease_holder(LEASE) is None
    assert store.acquire_lease(LEASE, "a", 30.0)


@pytest.mark.parametrize("fate", ["dead", "superseded", "stopped", "missing"])
def test_a_lease_is_free_at_once_when_its_holder_is_not_active(store: Store, fate: str) -> None:
    worker(store, "holder")
    worker(store, "next")
    assert store.acquire_lease(LEASE, "holder", 3600.0)
    assert not store.acquire_lease(LEASE, "next", 3600.0)
    if fate == "missing":
        store.set_worker_status("holder", "stopped", store.clock() - 7200)
        assert store.delete_stale_workers(store.clock() - 3600) == 1
        assert "holder" not in statuses(store)
    else:
        store.set_worker_status("holder", fate, store.clock())

    assert store.acquire_lease(LEASE, "next", 3600.0)
    assert store.lease_holder(LEASE) == "next"
    assert not store.acquire_lease(LEASE, "holder", 3600.0)


# --- a host clock a minute off (PostgreSQL and MySQL) --------------------------------------------
def test_clock_corrects_a_skewed_host_clock(
    server_store: Store, skewed: Callable[[], float]
) -> None:
    offset = server_store.sync_clock()
    assert abs(offset - (skewed() - time.time())) < 1.0
    before = skewed()
    now = server_store.clock()
    assert around(now, before, skewed())


def test_a_worker_heartbeat_is_judged_right_on_a_skewed_host(
    server_store: Store, skewed: Callable[[], float]
) -> None:
    store = server_store
    worker(store, "live")
    before = skewed()
    store.heartbeat_worker("live", 30.0)
    after = skewed()
    (row,) = store.list_workers()
    assert around(row.last_seen_at, before, after)
    assert around(row.expires_at, before + 30, after + 30)
    worker(store, "silent", seen_ago=45)  # 45 s on the corrected clock: dead after 30 s

    assert store.mark_dead_workers(30.0, exclude="me") == ["silent"]
    assert store.mark_dead_workers(10.0, exclude="me") == []
    assert statuses(store)["live"] == "active"


def test_task_heartbeats_are_judged_right_on_a_skewed_host(
    server_store: Store, skewed: Callable[[], float]
) -> None:
    store = server_store
    task_id = submit(store, due_in=-600)
    claim(store, "w1", plan_at=skewed() - 45)  # heartbeat_at 45 s ago, really
    assert [t.id for t in store.running_tasks(heartbeat_older_than=30.0)] == [task_id]
    before = skewed()
    store.heartbeat_tasks("w1")
    after = skewed()
    assert store.running_tasks(heartbeat_older_than=10.0) == []
    (row,) = store.running_tasks(worker_id="w1")
    assert around(row.heartbeat_at, before, after)


def test_the_claim_takes_what_is_due_by_the_server_on_a_skewed_host(
    server_store: Store, skewed: Callable[[], float]
) -> None:
    store = server_store
    due = submit(store, due_in=-1)
    submit(store, due_in=30)
    assert [r.id for r in claim(store, "w1")] == [due]
    assert claim(store, "w1") == []


def test_a_lease_is_not_taken_from_a_renewing_holder_on_a_skewed_host(
    server_store: Store, skewed: Callable[[], float]
) -> None:
    store = server_store
    worker(store, "a")
    worker(store, "b")
    assert store.acquire_lease(LEASE, "a", 30.0)
    assert not store.acquire_lease(LEASE, "b", 30.0)
