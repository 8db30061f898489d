"""One fenced write rule, every store: the same batches of ``Change``s, the same results.

Drives each store directly (``apply``, ``claim``, ``append_event``; no ``TaskManager``) with
changes planned by ``core/lifecycle.py`` as the worker plans them, and checks the task rows, the
events (type, order, attempt, worker) and the attempt rows that result against one expectation
written here, so every dialect's statements must mean the same. ``sqlite-portable`` is SQLite
with the portable statement per row (``SqlStore._guarded_update``, what SQLite before 3.35 runs
and MySQL runs for a shape of one row).

Times are fixed (tasks are due at ``T0``, long past on every clock), so expectations are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS
from tideflow.core import lifecycle
from tideflow.core.options import TaskPolicy
from tideflow.core.types import Change, ClaimRequest, EventFilter, Fence, TaskRow
from tideflow.store.factory import open_store
from tideflow.store.protocol import Store
from tideflow.store.sql.base import SqlStore
from tideflow.store.sql.sqlite import SqliteStore

T0 = 1_000.0  # created and due
T1 = 2_000.0  # claimed
T2 = 3_000.0  # finished
T3 = 4_000.0  # later

STORES: list[tuple[str, Callable[[Path], str]]] = [
    *BACKENDS,
    ("sqlite-portable", lambda tmp_path: "sqlite::memory:"),
]


@pytest.fixture(params=STORES, ids=[name for name, _ in STORES])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """A set-up store on each backend (and SQLite on the portable per-row path)."""
    name, factory = request.param
    if name == "sqlite-portable":
        monkeypatch.setattr(SqliteStore, "_guarded_update", SqlStore._guarded_update)
    opened = open_store(factory(tmp_path))
    try:
        opened.setup()
        yield opened
    finally:
        opened.close()


# --- planning, as the worker does ----------------------------------------------------------------
def submit(
    store: Store, count: int = 1, *, max_retries: int = 3, parent: TaskRow | None = None
) -> list[int]:
    tasks = [
        lifecycle.new_task(
            name="job",
            type="async",
            payload="null",
            policy=TaskPolicy(max_retries=max_retries),
            next_run_time=T0,
            now=T0,
            parent=parent,
        )
        for _ in range(count)
    ]
    return store.insert_tasks(tasks)


def request(worker_id: str, limit: int = 100, when: float = T1) -> ClaimRequest:
    return ClaimRequest(
        worker_id=worker_id,
        now=when,
        limit=limit,
        names={"job": None},
        capabilities=frozenset(),
        plan=lifecycle.claim(worker_id, when),
    )


def claim(store: Store, worker_id: str, limit: int = 100, when: float = T1) -> list[TaskRow]:
    return store.claim(request(worker_id, limit, when))


def row(store: Store, task_id: int) -> TaskRow:
    found = store.get_task(task_id)
    assert found is not None
    return found


def never(expr: str, tz: str, after: float) -> float:
    raise AssertionError("no cron task here")


def complete(r: TaskRow, result: str = '"ok"', now: float = T2) -> Change:
    return lifecycle.complete(r, result, now, never)


def fail(r: TaskRow, error: str = "boom", now: float = T2) -> Change:
    return lifecycle.fail(r, error, now, random.Random(0))


def spawn(store: Store, parent: TaskRow, count: int, now: float = T2) -> Change:
    children = [
        lifecycle.new_task(
            name="job",
            type="async",
            payload="null",
            policy=TaskPolicy(max_retries=1),
            next_run_time=T0,
            now=now,
            parent=parent,
        )
        for _ in range(count)
    ]
    return lifecycle.spawn(parent, children, b"ctx", now)


def stolen(r: TaskRow) -> TaskRow:
    """``r`` as its worker remembers it after another worker took the task over."""
    return r._replace(worker_id="w-gone")


# --- what the store holds, in a form every store must agree on ---------------------------------
class Names:
    """Task ids as labels (``a``, ``b``, ...) in order of first sight, so expectations do not
    depend on how a backend numbers rows."""

    def __init__(self, ids: Sequence[int] = ()) -> None:
        self.of: dict[int, str] = {}
        for task_id in ids:
            self(task_id)

    def __call__(self, task_id: int | None) -> str | None:
        if task_id is None:
            return None
        if task_id not in self.of:
            self.of[task_id] = "abcdefghijklmnopqrstuvwxyz"[len(self.of)]
        return self.of[task_id]


def tasks(store: Store, names: Names, ids: Sequence[int]) -> dict[str | None, tuple[Any, ...]]:
    """Per task: status, worker, attempt, stage, children done/total, retries, error, result."""
    out: dict[str | None, tuple[Any, ...]] = {}
    for task_id in ids:
        r = row(store, task_id)
        out[names(task_id)] = (
            r.status,
            r.worker_id,
            r.attempt,
            r.stage,
            r.completed_children,
            r.total_children,
            r.retry_count,
            r.error,
            r.result,
        )
    return out


def events(store: Store, names: Names, *, since: int = 0) -> list[tuple[Any, ...]]:
    """Every event after id ``since``, in id order: task, type, from, to, stage, worker,
    attempt, time."""
    found, _ = store.query_events(EventFilter())
    return [
        (
            names(e.task_id),
            e.event_type,
            e.from_status,
            e.to_status,
            e.stage,
            e.worker_id,
            e.attempt,
            e.event_time.timestamp(),
        )
        for e in found
        if e.id > since
    ]


def last_event_id(store: Store) -> int:
    found, _ = store.query_events(EventFilter(order="desc", limit=1))
    return found[0].id if found else 0


def attempts(store: Store, names: Names) -> list[tuple[Any, ...]]:
    """Every attempt row: task, attempt, worker, stage, start, end, outcome, error, timeout."""
    found, _ = store.query_attempts(EventFilter())
    rows = [
        (
            names(a.task_id),
            a.attempt,
            a.worker_id,
            a.stage,
            a.started_at.timestamp(),
            None if a.ended_at is None else a.ended_at.timestamp(),
            a.outcome,
            a.error,
            a.timeout_flag,
        )
        for a in found
    ]
    return sorted(rows, key=lambda a: (str(a[0]), a[1]))


# --- inserts -------------------------------------------------------------------------------------
def test_one_task_and_a_batch_insert_the_same_rows_and_events(store: Store) -> None:
    """``submit`` inserts one task (PostgreSQL: a path of its own, its id taken in the insert),
    ``submit_many`` a batch: the same rows, root ids and events either way, under a parent
    too."""
    (alone,) = submit(store)
    batch = submit(store, 2)
    (child_id,) = submit(store, parent=row(store, alone))
    ids = [alone, *batch, child_id]
    assert len(set(ids)) == 4
    assert alone < batch[0] < batch[1] < child_id
    names = Names(ids)
    assert {k: v[0] for k, v in tasks(store, names, ids).items()} == dict.fromkeys(
        "abcd", "pending"
    )
    roots = {names(i): (names(row(store, i).root_id), names(row(store, i).parent_id)) for i in ids}
    assert roots == {"a": ("a", None), "b": ("b", None), "c": ("c", None), "d": ("a", "a")}
    found, _ = store.query_events(EventFilter())
    assert [(names(e.task_id), names(e.root_id), e.event_type, e.to_status) for e in found] == [
        ("a", "a", "task_created", "pending"),
        ("b", "b", "task_created", "pending"),
        ("c", "c", "task_created", "pending"),
        ("d", "a", "task_created", "pending"),
    ]
    assert store.task_counts() == [("job", "pending", 4)]


# --- fences ---------------------------------------------------------------------------------------
def test_fenced_changes_hold_for_their_owner_and_a_lost_guard_mid_batch_writes_nothing(
    store: Store,
) -> None:
    ids = submit(store, 4)
    names = Names(ids)
    a, b, c, d = claim(store, "w1")
    mark = last_event_id(store)

    held = store.apply(
        [
            complete(a),
            complete(stolen(b)),  # another worker owns b: loses the fence
            fail(c),
            fail(d._replace(attempt=d.attempt + 1)),  # a later attempt: loses too
        ]
    )

    assert held == [True, False, True, False]
    assert tasks(store, names, ids) == {
        "a": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
        "b": ("running", "w1", 1, 0, 0, 0, 0, None, None),
        "c": ("failed", "w1", 1, 0, 0, 0, 1, "boom", None),
        "d": ("running", "w1", 1, 0, 0, 0, 0, None, None),
    }
    assert events(store, names, since=mark) == [
        ("a", "task_completed", "running", "completed", 0, "w1", 1, T2),
        ("c", "task_failed", "running", "failed", 0, "w1", 1, T2),
        ("c", "task_retry_scheduled", "running", "failed", 0, "w1", 1, T2),
    ]
    assert attempts(store, names) == [
        ("a", 1, "w1", 0, T1, T2, "completed", None, False),
        ("b", 1, "w1", 0, T1, None, None, None, False),
        ("c", 1, "w1", 0, T1, T2, "failed", "boom", False),
        ("d", 1, "w1", 0, T1, None, None, None, False),
    ]


def test_a_claim_opens_attempts_and_a_recovered_task_fences_out_its_old_worker(
    store: Store,
) -> None:
    ids = submit(store, 2)
    names = Names(ids)
    a, b = claim(store, "w1")
    assert store.apply([lifecycle.recover(a, T2, "sweeper")]) == [True]
    (a2,) = claim(store, "w2", when=T3)
    assert (a2.id, a2.worker_id, a2.attempt) == (a.id, "w2", 2)
    mark = last_event_id(store)

    # w1 finishes both: a is w2's now (attempt 2), b is still w1's
    assert store.apply([complete(a, now=T3), complete(b, now=T3)]) == [False, True]

    assert tasks(store, names, ids) == {
        "a": ("running", "w2", 2, 0, 0, 0, 0, None, None),
        "b": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
    }
    assert events(store, names, since=mark) == [
        ("b", "task_completed", "running", "completed", 0, "w1", 1, T3),
    ]
    assert attempts(store, names) == [
        ("a", 1, "w1", 0, T1, T2, "interrupted", None, False),
        ("a", 2, "w2", 0, T3, None, None, None, False),
        ("b", 1, "w1", 0, T1, T3, "completed", None, False),
    ]
    claimed = [e for e in events(store, names) if e[1] in ("task_claimed", "task_started")]
    assert claimed == [
        ("a", "task_claimed", "pending", "running", 0, "w1", 1, T1),
        ("a", "task_started", "pending", "running", 0, "w1", 1, T1),
        ("b", "task_claimed", "pending", "running", 0, "w1", 1, T1),
        ("b", "task_started", "pending", "running", 0, "w1", 1, T1),
        ("a", "task_claimed", "pending", "running", 0, "w2", 2, T3),
        ("a", "task_started", "pending", "running", 0, "w2", 2, T3),
    ]


def test_a_change_whose_status_moved_on_loses_even_with_the_right_fence(store: Store) -> None:
    ids = submit(store, 1)
    names = Names(ids)
    (a,) = claim(store, "w1")
    assert store.apply([complete(a)]) == [True]
    mark = last_event_id(store)
    assert store.apply([fail(a), complete(a)]) == [False, False]
    assert tasks(store, names, ids)["a"][0] == "completed"
    assert events(store, names, since=mark) == []


# --- shapes and order -----------------------------------------------------------------------------
def test_mixed_shapes_in_one_batch_write_events_in_the_batch_order(store: Store) -> None:
    ids = submit(store, 6)
    names = Names(ids)
    a, b, c, d, e = claim(store, "w1", limit=5)
    f = row(store, ids[5])  # still pending: its change is not fenced
    mark = last_event_id(store)

    held = store.apply(
        [
            fail(a),  # shape: failure with a retry
            complete(b),  # shape: completion
            lifecycle.cancel(f, "no longer needed", T2),  # unfenced
            lifecycle.suspend(c, "approval", b"ctx", T2),  # shape: suspension
            complete(d),  # completion again, after the other shapes
            complete(stolen(e)),  # completion that loses
        ]
    )

    assert held == [True, True, True, True, True, False]
    assert tasks(store, names, ids) == {
        "a": ("failed", "w1", 1, 0, 0, 0, 1, "boom", None),
        "b": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
        "c": ("suspended", "w1", 1, 0, 0, 0, 0, None, None),
        "d": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
        "e": ("running", "w1", 1, 0, 0, 0, 0, None, None),
        "f": ("permanently_failed", None, 0, 0, 0, 0, 0, "no longer needed", None),
    }
    assert events(store, names, since=mark) == [
        ("a", "task_failed", "running", "failed", 0, "w1", 1, T2),
        ("a", "task_retry_scheduled", "running", "failed", 0, "w1", 1, T2),
        ("b", "task_completed", "running", "completed", 0, "w1", 1, T2),
        ("f", "task_cancelled", "pending", "permanently_failed", 0, None, None, T2),
        ("c", "task_suspended", "running", "suspended", 0, "w1", 1, T2),
        ("d", "task_completed", "running", "completed", 0, "w1", 1, T2),
    ]
    assert [(x[0], x[6]) for x in attempts(store, names)] == [
        ("a", "failed"),
        ("b", "completed"),
        ("c", "suspended"),
        ("d", "completed"),
        ("e", None),
    ]
    assert row(store, ids[2]).context == b"ctx"


def test_the_same_task_twice_in_one_batch_sees_its_changes_in_order(store: Store) -> None:
    ids = submit(store, 2)
    names = Names(ids)
    a, b = claim(store, "w1")
    progress = lifecycle.annotate(
        a, T2 - 1, "task_progress", message="half", values={"progress_percent": 50.0}
    )
    mark = last_event_id(store)

    held = store.apply([progress, complete(b), complete(a), fail(a), complete(b)])

    assert held == [True, True, True, False, False]
    assert tasks(store, names, ids) == {
        "a": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
        "b": ("completed", "w1", 1, 0, 0, 0, 0, None, '"ok"'),
    }
    assert row(store, a.id).progress_percent == 50.0
    assert events(store, names, since=mark) == [
        ("a", "task_progress", "running", "running", 0, "w1", 1, T2 - 1),
        ("b", "task_completed", "running", "completed", 0, "w1", 1, T2),
        ("a", "task_completed", "running", "completed", 0, "w1", 1, T2),
    ]


def test_append_event_is_the_same_fenced_write_and_returns_the_event_id(store: Store) -> None:
    ids = submit(store, 1)
    names = Names(ids)
    (a,) = claim(store, "w1")
    event_id = store.append_event(lifecycle.annotate(a, T2, "task_checkpoint", message="1"))
    assert event_id is not None
    assert event_id == last_event_id(store)
    assert store.append_event(lifecycle.annotate(stolen(a), T2, "task_checkpoint")) is None
    assert events(store, names, since=event_id - 1) == [
        ("a", "task_checkpoint", "running", "running", 0, "w1", 1, T2),
    ]


def test_exchange_applies_the_batch_before_claiming_in_one_transaction(store: Store) -> None:
    ids = submit(store, 3)
    names = Names(ids)
    a, b = claim(store, "w1", limit=2)
    held, claimed = store.exchange([complete(a), complete(stolen(b))], request("w1", when=T3))
    assert held == [True, False]
    assert [names(r.id) for r in claimed] == ["c"]
    assert tasks(store, names, ids)["c"][:3] == ("running", "w1", 1)


# --- children and fan-in --------------------------------------------------------------------------
def spawned(store: Store, count: int) -> tuple[TaskRow, list[TaskRow], Names]:
    """A parent claimed by ``p`` that spawned ``count`` children, claimed by ``w``."""
    (parent_id,) = submit(store, 1)
    (parent,) = claim(store, "p")
    assert store.apply([spawn(store, parent, count)]) == [True]
    kids = claim(store, "w", when=T3)
    names = Names([parent_id, *(k.id for k in kids)])
    return row(store, parent_id), kids, names


def test_a_spawn_inserts_its_children_and_lists_them_in_its_event(store: Store) -> None:
    parent, kids, names = spawned(store, 3)
    all_ids = [parent.id, *(k.id for k in kids)]
    assert [(k.parent_id, k.root_id, k.parent_stage) for k in kids] == [
        (parent.id, parent.id, 0)
    ] * 3
    assert tasks(store, names, all_ids)["a"] == ("suspended", "p", 1, 0, 0, 3, 0, None, None)
    assert parent.context == b"ctx"
    assert parent.suspend_reason == "awaiting_subtasks"
    found, _ = store.query_events(EventFilter(task_id=parent.id))
    created = [e for e in found if e.event_type == "task_subtasks_created"]
    assert [e.metadata for e in created] == [
        {"child_count": 3, "child_task_ids": [k.id for k in kids]}
    ]
    # the children's creation events come before the parent's spawn events
    assert [
        x[:2] for x in events(store, names) if x[1] != "task_claimed" and x[1] != "task_started"
    ] == [
        ("a", "task_created"),
        ("b", "task_created"),
        ("c", "task_created"),
        ("d", "task_created"),
        ("a", "task_subtasks_created"),
        ("a", "task_suspended"),
    ]
    assert ("a", 1, "p", 0, T1, T2, "suspended", None, False) in attempts(store, names)


def test_a_spawn_that_lost_its_fence_inserts_no_children(store: Store) -> None:
    (parent_id,) = submit(store, 1)
    (parent,) = claim(store, "p")
    assert store.apply([spawn(store, stolen(parent), 2)]) == [False]
    assert store.descendants(parent_id) == []
    assert row(store, parent_id).status == "running"


def test_a_spawn_mid_batch_keeps_every_row_in_the_batch_order(store: Store) -> None:
    ids = submit(store, 3)
    names = Names(ids)
    a, p, b = claim(store, "w1")
    mark = last_event_id(store)
    assert store.apply([complete(a), spawn(store, p, 1), complete(b)]) == [True, True, True]
    (kid,) = store.descendants(p.id)
    names(kid.id)
    assert [x[:2] for x in events(store, names, since=mark)] == [
        ("a", "task_completed"),
        ("d", "task_created"),
        ("b", "task_subtasks_created"),
        ("b", "task_suspended"),
        ("c", "task_completed"),
    ]


def resumed(store: Store, names: Names, parent_id: int) -> list[tuple[Any, ...]]:
    return [e for e in events(store, names) if e[0] == names(parent_id) and e[1] == "task_resumed"]


def test_children_finishing_in_one_batch_resume_the_parent_exactly_once(store: Store) -> None:
    parent, (k1, k2, k3), names = spawned(store, 3)
    kids = [parent.id, k1.id, k2.id, k3.id]

    # mixed outcomes: a child that fails for good counts as finished too (max_retries=1)
    held = store.apply([complete(k1, now=T3), fail(k2, now=T3), complete(k3, now=T3)])

    assert held == [True, True, True]
    assert tasks(store, names, kids) == {
        "a": ("pending", "p", 1, 1, 3, 3, 0, None, None),
        "b": ("completed", "w", 1, 0, 0, 0, 0, None, '"ok"'),
        "c": ("permanently_failed", "w", 1, 0, 0, 0, 0, "boom", None),
        "d": ("completed", "w", 1, 0, 0, 0, 0, None, '"ok"'),
    }
    assert resumed(store, names, parent.id) == [
        ("a", "task_resumed", "suspended", "pending", 1, None, None, T3),
    ]
    p = row(store, parent.id)
    assert (p.next_run_time, p.suspend_reason) == (T3, None)
    # the parent is claimable again, for a second attempt at stage 1
    (again,) = claim(store, "p", when=T3 + 1)
    assert (again.id, again.attempt, again.stage) == (parent.id, 2, 1)


def test_children_finishing_across_batches_resume_the_parent_once_on_the_last(
    store: Store,
) -> None:
    parent, (k1, k2, k3), names = spawned(store, 3)
    assert store.apply([complete(k1, now=T3), complete(k2, now=T3)]) == [True, True]
    assert tasks(store, names, [parent.id])["a"][:6] == ("suspended", "p", 1, 0, 2, 3)
    assert resumed(store, names, parent.id) == []

    # the late one arrives with a loser in front of it (a stale copy of a finished child)
    assert store.apply([complete(k1, now=T3), complete(k3, now=T3 + 1)]) == [False, True]
    assert tasks(store, names, [parent.id])["a"][:6] == ("pending", "p", 1, 1, 3, 3)
    assert resumed(store, names, parent.id) == [
        ("a", "task_resumed", "suspended", "pending", 1, None, None, T3 + 1),
    ]


def test_the_parent_changed_after_its_children_in_one_batch_sees_them_counted_first(
    store: Store,
) -> None:
    parent, (k1,), names = spawned(store, 1)
    # the child's completion resumes the parent (pending), so cancelling it as suspended loses
    held = store.apply([complete(k1, now=T3), lifecycle.cancel(parent, "late", T3)])
    assert held == [True, False]
    assert tasks(store, names, [parent.id])["a"][0] == "pending"
    assert len(resumed(store, names, parent.id)) == 1


def test_a_child_of_a_round_that_is_over_counts_nothing(store: Store) -> None:
    parent, (k1, k2), names = spawned(store, 2)
    assert store.apply([lifecycle.cancel(parent, "stop", T3)]) == [True]
    assert store.apply([complete(k1, now=T3), complete(k2, now=T3)]) == [True, True]
    assert tasks(store, names, [parent.id])["a"][:6] == ("permanently_failed", "p", 1, 0, 0, 2)
    assert resumed(store, names, parent.id) == []


def test_a_staged_change_holds_only_at_its_stage(store: Store) -> None:
    parent, (k1,), names = spawned(store, 1)
    fan_in = complete(k1, now=T3).fan_in
    assert fan_in is not None
    assert fan_in.resume is not None
    resume = fan_in.resume
    assert resume.stage == 0
    assert resume.fence is None

    # round 0 resumes; the parent runs round 1 and suspends again at stage 1
    assert store.apply([resume]) == [True]
    (again,) = claim(store, "p", when=T3)
    assert store.apply([spawn(store, again, 1, now=T3)]) == [True]
    assert tasks(store, names, [parent.id])["a"][:4] == ("suspended", "p", 2, 1)

    # suspended again, but at stage 1: the resume of round 0 does not hold (twice over)
    mark = last_event_id(store)
    assert store.apply([resume, resume]) == [False, False]
    assert tasks(store, names, [parent.id])["a"][:4] == ("suspended", "p", 2, 1)
    assert events(store, names, since=mark) == []
    # and round 0's late child counts nothing on round 1
    assert store.apply([complete(k1, now=T3)]) == [True]
    assert tasks(store, names, [parent.id])["a"][4:6] == (0, 1)


def test_a_fenced_and_staged_guard_needs_all_three(store: Store) -> None:
    ids = submit(store, 1)
    names = Names(ids)
    (a,) = claim(store, "w1")
    base = complete(a)
    assert base.fence == Fence("w1", 1)
    assert store.apply([base._replace(stage=1)]) == [False]  # wrong stage
    assert store.apply([base._replace(fence=Fence("w1", 2), stage=0)]) == [False]  # wrong attempt
    assert store.apply([base._replace(stage=0)]) == [True]
    assert tasks(store, names, ids)["a"][0] == "completed"


# --- each fact once: an attempt's row is written at its close -----------------------------------
def stored_attempt_rows(store: Store) -> int:
    """Rows in the attempts table itself (an open attempt has none: its task row states it)."""
    assert isinstance(store, SqlStore)
    with store._read() as cur:
        cur.execute("SELECT COUNT(*) FROM tideflow_attempts")
        return int(cur.fetchone()[0])


def test_an_open_attempt_is_its_task_row_and_keeps_its_id_and_claim_order_when_it_closes(
    store: Store,
) -> None:
    ids = submit(store, 2)
    names = Names(ids)
    (a,) = claim(store, "w1", limit=1)
    (b,) = claim(store, "w2", limit=1)
    opened, total = store.query_attempts(EventFilter())
    assert total == 2
    assert [(names(x.task_id), x.worker_id, x.ended_at) for x in opened] == [
        ("a", "w1", None),
        ("b", "w2", None),
    ]
    assert opened[0].id < opened[1].id  # the order of the claims
    assert stored_attempt_rows(store) == 0

    assert store.apply([complete(b)]) == [True]  # b closes first
    assert stored_attempt_rows(store) == 1
    assert store.apply([complete(a, now=T3)]) == [True]
    closed, _ = store.query_attempts(EventFilter())
    assert [(x.id, names(x.task_id), x.outcome, x.duration_seconds) for x in closed] == [
        (opened[0].id, "a", "completed", T3 - T1),
        (opened[1].id, "b", "completed", T2 - T1),
    ]
    assert stored_attempt_rows(store) == 2


def test_attempt_queries_page_and_filter_across_open_and_closed_attempts(store: Store) -> None:
    ids = submit(store, 3)
    names = Names(ids)
    a, b, c = claim(store, "w1")
    assert store.apply([complete(a), fail(c)]) == [True, True]  # b stays open
    everything, _ = store.query_attempts(EventFilter(order="desc"))
    assert [(names(x.task_id), x.outcome) for x in everything] == [
        ("c", "failed"),
        ("b", None),
        ("a", "completed"),
    ]
    page, total = store.query_attempts(EventFilter(order="desc", limit=1, offset=1))
    assert ([names(x.task_id) for x in page], total) == (["b"], 3)
    still_open, total = store.query_attempts(EventFilter(open_only=True))
    assert ([names(x.task_id) for x in still_open], total) == (["b"], 1)
    ended, _ = store.query_attempts(EventFilter(ended_after=T1))
    assert [names(x.task_id) for x in ended] == ["a", "c"]
    by_task, _ = store.query_attempts(EventFilter(task_id=b.id, worker_id="w1", stage=0))
    assert [(names(x.task_id), x.attempt, x.started_at.timestamp()) for x in by_task] == [
        ("b", 1, T1)
    ]
    failed, total = store.query_attempts(EventFilter(outcome="failed", limit=5))
    assert ([names(x.task_id) for x in failed], total) == (["c"], 1)
    assert store.query_attempts(EventFilter(started_after=T2)) == ([], 0)


def test_an_attempt_closed_and_its_retry_claimed_in_one_exchange_keep_their_own_rows(
    store: Store,
) -> None:
    """The close writes the id its attempt was given, not the one the retry's claim gives the
    task row later in the same transaction."""
    (task_id,) = submit(store, 1)
    names = Names([task_id])
    (a,) = claim(store, "w1")
    held, (again,) = store.exchange([fail(a)], request("w1", when=T3))  # due again at once
    assert held == [True]
    assert again.attempt == 2
    assert store.apply([complete(again, now=T3 + 1)]) == [True]
    found, _ = store.query_attempts(EventFilter(task_id=task_id))
    assert [(names(x.task_id), x.attempt, x.outcome) for x in found] == [
        ("a", 1, "failed"),
        ("a", 2, "completed"),
    ]
    assert found[0].id < found[1].id
    assert stored_attempt_rows(store) == 2
