"""Maintenance rounds against a store whose clock the test moves (no database, no sleeping).

``FakeStore`` keeps workers, the lease and task rows in dicts and judges liveness with its own
``now``, as the real stores judge it with the database's clock. Every test runs twice: with the
round's reads in one transaction (``sweep``) and with ``sweep`` failing, step by step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any

import pytest

from tideflow.core.options import ManagerSettings
from tideflow.core.types import Change, SweepRead, SweepRequest, TaskRow
from tideflow.worker.maintenance import MAINTENANCE_LEASE, Maintenance
from unit.test_lifecycle import make_row

T0 = 1_800_000_000.0
SETTINGS = ManagerSettings(
    worker_id="me",
    worker_heartbeat_timeout=30.0,
    task_heartbeat_timeout=60.0,
    retention_interval=300.0,
)


@dataclasses.dataclass
class FakeWorker:
    status: str
    last_seen: float
    pod_id: str | None = None


class FakeStore:
    """The store operations maintenance uses, in memory, judged with ``self.now``."""

    retention_batch = 10

    def __init__(self) -> None:
        self.now = T0
        self.workers: dict[str, FakeWorker] = {}
        self.lease: tuple[str | None, float] = (None, 0.0)
        self.tasks: dict[int, TaskRow] = {}
        self.fail: set[str] = set()  # operations that raise
        self.fail_task: set[int] = set()  # tasks whose write raises
        self.applied: list[Change] = []
        self.retention_calls: list[float] = []
        self.sweeps = 0  # rounds whose reads ran in one transaction

    def _check(self, op: str) -> None:
        if op in self.fail:
            raise RuntimeError(f"{op} is broken")

    def mark_dead_workers(self, silent_for: float, *, exclude: str) -> list[str]:
        self._check("mark_dead_workers")
        dead = [
            wid
            for wid, w in self.workers.items()
            if wid != exclude and w.status == "active" and w.last_seen < self.now - silent_for
        ]
        for wid in dead:
            self.workers[wid].status = "dead"
        return dead

    def acquire_lease(self, name: str, holder: str, stale_after: float) -> bool:
        self._check("acquire_lease")
        assert name == MAINTENANCE_LEASE
        current, renewed = self.lease
        owner = self.workers.get(current) if current is not None else None
        if (
            current in (None, holder)
            or renewed < self.now - stale_after
            or owner is None
            or owner.status != "active"
        ):
            self.lease = (holder, self.now)
            return True
        return False

    def sweep(self, request: SweepRequest) -> SweepRead:
        """The round's reads in one transaction: all or nothing, like the real stores'."""
        self._check("sweep")
        saved = copy.deepcopy((self.workers, self.lease))
        try:
            dead = self.mark_dead_workers(request.silent_for, exclude=request.worker_id)
            if request.fenced or not self.acquire_lease(
                request.lease, request.worker_id, request.silent_for
            ):
                return SweepRead(dead, False, [], [])
            orphaned = self.orphaned_tasks(exclude=request.worker_id) if request.recover else []
            stalled = self.running_tasks(heartbeat_older_than=request.stalled_after)
        except Exception:
            self.workers, self.lease = saved  # rolled back
            raise
        self.sweeps += 1
        return SweepRead(dead, True, orphaned, stalled)

    def orphaned_tasks(self, *, exclude: str, limit: int = 1000) -> list[TaskRow]:
        self._check("orphaned_tasks")
        return [
            row
            for row in self.tasks.values()
            if row.status == "running"
            and row.worker_id != exclude
            and (
                row.worker_id not in self.workers or self.workers[row.worker_id].status != "active"
            )
        ][:limit]

    def running_tasks(
        self,
        *,
        worker_id: str | None = None,
        heartbeat_older_than: float | None = None,
        limit: int = 1000,
    ) -> list[TaskRow]:
        self._check("running_tasks")
        return [
            row
            for row in self.tasks.values()
            if row.status == "running"
            and (worker_id is None or row.worker_id == worker_id)
            and (
                heartbeat_older_than is None
                or (row.heartbeat_at or 0) < self.now - heartbeat_older_than
            )
        ][:limit]

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        self._check("apply")
        bad = [c.task_id for c in changes if c.task_id in self.fail_task]
        if bad:
            raise RuntimeError(f"task {bad[0]} cannot be written")
        held = []
        for change in changes:
            row = self.tasks[change.task_id]
            ok = row.status in change.from_statuses and (
                change.fence is None
                or (row.worker_id, row.attempt) == (change.fence.worker_id, change.fence.attempt)
            )
            if ok:
                self.tasks[row.id] = row.with_values(change.values)
                self.applied.append(change)
            held.append(ok)
        return held

    def get_task(self, task_id: int) -> TaskRow | None:
        return self.tasks.get(task_id)

    def delete_expired(
        self, before: float, statuses: Sequence[str], limit: int, after_id: int = 0
    ) -> tuple[int, int, int, int | None]:
        self.retention_calls.append(before)
        return 0, 0, 0, None

    def delete_stale_workers(self, before: float) -> int:
        return 0


def running_row(task_id: int, worker_id: str, *, heartbeat_at: float = T0) -> TaskRow:
    return make_row(
        id=task_id,
        root_id=task_id,
        status="running",
        worker_id=worker_id,
        attempt=1,
        start_time=heartbeat_at,
        heartbeat_at=heartbeat_at,
    )


@pytest.fixture(params=["together", "step by step"])
def store(request: pytest.FixtureRequest) -> FakeStore:
    s = FakeStore()
    s.workers["me"] = FakeWorker("active", T0)
    if request.param == "step by step":
        s.fail.add("sweep")
    return s


def maintenance(store: FakeStore, settings: ManagerSettings = SETTINGS) -> Maintenance:
    return Maintenance(
        store,  # type: ignore[arg-type]
        "me",
        lambda: settings,
        clock=lambda: store.now,
        rng=random.Random(1),
    )


def test_silent_worker_is_marked_dead_and_its_tasks_recovered(store: FakeStore) -> None:
    store.workers["w1"] = FakeWorker("active", T0)
    store.tasks[1] = running_row(1, "w1")
    m = maintenance(store)
    store.now = T0 + 29
    assert m.run_once().recovered == []
    assert store.tasks[1].status == "running"
    store.now = T0 + 31
    done = m.run_once()
    assert done.marked_dead == ["w1"]
    assert done.leader
    assert done.recovered == [1]
    row = store.tasks[1]
    assert (row.status, row.next_run_time) == ("pending", T0 + 31)
    (event,) = (e for e in store.applied[0].events if e.event_type == "task_recovered")
    assert event.metadata["recovered_from_worker_id"] == "w1"


def test_lease_of_a_dead_holder_is_free_at_once(store: FakeStore) -> None:
    """A holder that is no longer active loses the lease without waiting for it to expire."""
    store.workers["holder"] = FakeWorker("active", T0)
    store.lease = ("holder", T0)
    m = maintenance(store)
    assert not m.run_once().leader
    store.workers["holder"].status = "superseded"
    assert m.run_once().leader
    assert store.lease == ("me", T0)


def test_fenced_worker_marks_the_dead_but_takes_no_lease(store: FakeStore) -> None:
    store.workers["successor"] = FakeWorker("active", T0 - 100)
    store.tasks[1] = running_row(1, "successor")
    done = maintenance(store).run_once(fenced=True)
    assert done.marked_dead == ["successor"]
    assert not done.leader
    assert store.lease == (None, 0.0)
    assert store.tasks[1].status == "running"  # recovery is the lease holder's job


def test_stalled_task_of_a_live_worker_times_out(store: FakeStore) -> None:
    store.workers["w1"] = FakeWorker("active", T0 + 100)
    store.tasks[1] = running_row(1, "w1", heartbeat_at=T0)
    store.tasks[2] = running_row(2, "w1", heartbeat_at=T0 + 90)
    store.now = T0 + 100
    done = maintenance(store).run_once()
    assert done.timed_out == [1]
    assert store.tasks[1].status == "timeout"
    assert store.tasks[2].status == "running"


def test_a_failing_step_fails_alone_and_is_logged_once(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.workers["w1"] = FakeWorker("dead", T0)
    store.tasks[1] = running_row(1, "w1")
    store.fail.add("mark_dead_workers")
    m = maintenance(store)
    with caplog.at_level(logging.WARNING, logger="tideflow.maintenance"):
        first = m.run_once()
        second = m.run_once()
    assert first.failed_steps == ["mark dead"]
    assert first.recovered == [1]  # the later steps still ran
    assert second.failed_steps == ["mark dead"]
    assert sum("'mark dead' failed" in r.getMessage() for r in caplog.records) == 1


def test_one_unwritable_task_does_not_block_the_others(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.workers["w1"] = FakeWorker("dead", T0)
    for task_id in (1, 2, 3):
        store.tasks[task_id] = running_row(task_id, "w1")
    store.fail_task.add(2)
    with caplog.at_level(logging.WARNING, logger="tideflow.maintenance"):
        done = maintenance(store).run_once()
    assert done.recovered == [1, 3]
    assert store.tasks[2].status == "running"
    assert any("recovery of task 2" in r.getMessage() for r in caplog.records)


def test_recover_workers_recovers_a_superseded_predecessor_without_the_lease(
    store: FakeStore,
) -> None:
    store.workers["other"] = FakeWorker("active", T0)
    store.lease = ("other", T0)  # somebody else runs the sweeps
    store.workers["old"] = FakeWorker("superseded", T0, pod_id="p")
    store.tasks[1] = running_row(1, "old")
    store.tasks[2] = running_row(2, "other")
    assert maintenance(store).recover_workers(["old"]) == [1]
    assert store.tasks[1].status == "pending"
    assert store.tasks[2].status == "running"


def test_recovery_is_fenced_by_attempt(store: FakeStore) -> None:
    """The row moved on (the old owner's attempt finished) between the read and the write."""
    store.workers["w1"] = FakeWorker("dead", T0)
    stale = running_row(1, "w1")
    store.tasks[1] = stale._replace(attempt=2)
    m = maintenance(store)
    store.orphaned_tasks = lambda **_: [stale]  # type: ignore[method-assign]
    assert m.run_once().recovered == []
    assert store.tasks[1].status == "running"


def test_retention_runs_every_interval_but_never_in_the_first_round(store: FakeStore) -> None:
    m = maintenance(store)
    try:
        assert not m.run_once().retention_started
        store.now = T0 + 299
        assert not m.run_once().retention_started
        store.now = T0 + 300
        assert m.run_once().retention_started
        job = m.retention_job
        assert job is not None
        job.result(timeout=10)
        assert store.retention_calls == [T0 + 300 - SETTINGS.expire_time]
        store.now = T0 + 301
        assert not m.run_once().retention_started
    finally:
        m.close()


def test_no_recovery_when_disabled(store: FakeStore) -> None:
    store.workers["w1"] = FakeWorker("dead", T0)
    store.tasks[1] = running_row(1, "w1")
    settings = dataclasses.replace(SETTINGS, recover_running_jobs=False)
    assert maintenance(store, settings).run_once().recovered == []
    assert store.tasks[1].status == "running"


def test_orphaned_claims_are_released_on_the_second_look(store: FakeStore) -> None:
    store.tasks[1] = running_row(1, "me")
    store.tasks[2] = running_row(2, "me")
    m = maintenance(store)
    owned: dict[int, Any] = {1: 1, 2: 1}
    assert m.release_orphans(owned, {(2, 1)}) == []  # first sighting: maybe still launching
    assert m.release_orphans(owned, {(2, 1)}) == [1]
    assert store.tasks[1].status == "pending"
    assert store.tasks[2].status == "running"


def test_a_dead_workers_stalled_task_is_recovered_not_timed_out(store: FakeStore) -> None:
    """Its heartbeat is as old as its worker's silence: recovery comes first, and the task
    read as stalled in the same round is not timed out as well."""
    store.workers["w1"] = FakeWorker("active", T0)
    store.tasks[1] = running_row(1, "w1", heartbeat_at=T0)
    store.now = T0 + 61  # past both the worker's (30 s) and the task's (60 s) timeout
    done = maintenance(store).run_once()
    assert (done.marked_dead, done.recovered, done.timed_out) == (["w1"], [1], [])
    assert store.tasks[1].status == "pending"
    assert [c.task_id for c in store.applied] == [1]


def test_a_round_reads_in_one_transaction_when_it_can() -> None:
    store = FakeStore()
    store.workers["me"] = FakeWorker("active", T0)
    m = maintenance(store)
    m.run_once()
    m.run_once()
    assert store.sweeps == 2
    store.fail.add("running_tasks")  # the sweep's stall read breaks: step by step, once
    done = m.run_once()
    assert store.sweeps == 2
    assert done.leader
    assert done.failed_steps == ["stall sweep"]
