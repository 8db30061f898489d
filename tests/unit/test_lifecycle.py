"""Planned changes of tideflow.core.lifecycle (SPEC §5, §6, §7, §16): pure, no database."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tideflow.core import cron, lifecycle, retry
from tideflow.core.options import TaskPolicy
from tideflow.core.types import (
    AttemptClose,
    AttemptOpen,
    Change,
    Fence,
    NewEvent,
    NewTask,
    TaskRow,
)
from tideflow.errors import InvalidTransitionError

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z, 20 s past a minute boundary
MINUTE = 60.0

ALL_STATUSES = (
    "pending",
    "running",
    "completed",
    "failed",
    "timeout",
    "permanently_failed",
    "paused",
    "suspended",
)

BASE = TaskRow(
    id=42,
    name="job",
    type="async",
    status="pending",
    priority=0,
    payload='{"x":1}',
    result=None,
    error=None,
    tag=None,
    stage=0,
    context=None,
    created_at=NOW - 100,
    next_run_time=NOW - 10,
    start_time=None,
    last_active_time=NOW - 100,
    last_event_type="task_created",
    last_event_time=NOW - 100,
    heartbeat_at=None,
    timeout=60.0,
    max_retries=3,
    retry_count=0,
    retry_interval=0.0,
    retry_backoff="fixed",
    max_retry_interval=3600.0,
    retry_jitter=True,
    cron_expr=None,
    tz=None,
    parent_id=None,
    root_id=42,
    parent_stage=None,
    total_children=0,
    completed_children=0,
    worker_id=None,
    attempt=0,
    requires=None,
    unique_key=None,
    suspend_reason=None,
    current_stage_name=None,
    progress_text=None,
    progress_percent=None,
)


def make_row(**overrides: Any) -> TaskRow:
    """A task row with sensible defaults (a pending one-off root task)."""
    return BASE._replace(**overrides)


def running(**overrides: Any) -> TaskRow:
    """A task in its first attempt on worker w1."""
    values: dict[str, Any] = {
        "status": "running",
        "worker_id": "w1",
        "attempt": 1,
        "start_time": NOW - 5,
        "heartbeat_at": NOW - 1,
        "last_event_type": "task_started",
    }
    values.update(overrides)
    return make_row(**values)


def cron_row(**overrides: Any) -> TaskRow:
    values: dict[str, Any] = {"type": "cron", "cron_expr": "0 * * * * *", "tz": "UTC"}
    values.update(overrides)
    return running(**values)


def child(**overrides: Any) -> TaskRow:
    """A child (id 99) of parent 7, spawned at the parent's stage 2, in workflow root 1."""
    values: dict[str, Any] = {"id": 99, "parent_id": 7, "root_id": 1, "parent_stage": 2}
    values.update(overrides)
    return running(**values)


def apply(row: TaskRow, change: Change) -> TaskRow:
    """What the row becomes once the store applied ``change``."""
    assert change.task_id == row.id
    assert row.status in change.from_statuses
    return row.with_values(change.values)


def event_types(change: Change) -> list[str]:
    return [e.event_type for e in change.events]


def event(change: Change, event_type: str) -> NewEvent:
    found = [e for e in change.events if e.event_type == event_type]
    assert len(found) == 1, (event_type, event_types(change))
    return found[0]


def rng() -> random.Random:
    return random.Random(1234)


def no_tick(expr: str, tz: str, after: float) -> float:
    raise AssertionError("a one-off task must not compute a cron tick")


def test_make_row_gives_a_valid_task_row() -> None:
    row = make_row(stage=3)
    assert isinstance(row, TaskRow)
    assert row.stage == 3
    assert row.status == "pending"
    assert running().status == "running"
    assert running().worker_id == "w1"


# --- claim ---------------------------------------------------------------------------------------
class TestClaim:
    def test_first_claim_opens_attempt_one_and_starts(self) -> None:
        row = make_row(stage=0)
        change = lifecycle.claim("w9", NOW)(row)
        assert change.task_id == row.id
        assert change.root_id == row.root_id
        assert "pending" in change.from_statuses
        assert "running" not in change.from_statuses
        v = change.values
        assert v["status"] == "running"
        assert v["attempt"] == 1
        assert v["worker_id"] == "w9"
        assert v["start_time"] == NOW
        assert v["heartbeat_at"] == NOW
        assert v["last_active_time"] == NOW
        assert v["last_event_type"] == "task_started"
        assert v["last_event_time"] == NOW
        assert event_types(change) == ["task_claimed", "task_started"]
        assert change.attempt_open == AttemptOpen(
            attempt=1, worker_id="w9", stage=0, started_at=NOW
        )
        assert change.attempt_close is None
        assert change.fence is None
        for e in change.events:
            assert (e.from_status, e.to_status) == ("pending", "running")
            assert e.worker_id == "w9"
            assert e.attempt == 1
            assert e.event_time == NOW
            assert e.stage == 0

    def test_attempt_counts_every_round_including_recovered_ones(self) -> None:
        row = make_row(attempt=4, retry_count=1, stage=2)
        change = lifecycle.claim("w2", NOW)(row)
        assert change.values["attempt"] == 5
        assert change.attempt_open == AttemptOpen(5, "w2", 2, NOW)
        # a recovery puts it back to pending: the next claim is not a retry
        assert event_types(change) == ["task_claimed", "task_started"]
        assert "retry_count" not in change.values

    @pytest.mark.parametrize("status", ["failed", "timeout"])
    def test_claim_after_a_failed_round_is_a_retry_start(self, status: str) -> None:
        row = make_row(status=status, attempt=1, retry_count=1, error="ValueError: x")
        change = lifecycle.claim("w1", NOW)(row)
        assert event_types(change) == ["task_claimed", "task_retry_started"]
        assert status in change.from_statuses
        assert change.values["status"] == "running"
        assert change.values["attempt"] == 2
        assert change.values["last_event_type"] == "task_retry_started"
        assert all(e.from_status == status for e in change.events)
        assert event(change, "task_retry_started").metadata == {"retry_count": 1}
        # a retry keeps the stage (SPEC §16) and does not clear the last error yet
        assert change.attempt_open is not None
        assert change.attempt_open.stage == row.stage
        assert "error" not in change.values
        assert "stage" not in change.values

    def test_claim_after_retry_task_of_a_failed_task_is_a_retry_start(self) -> None:
        # SPEC §5: the previous round failed, so the claim writes task_retry_started
        failed = make_row(
            status="permanently_failed",
            attempt=3,
            retry_count=2,
            error="ValueError: x",
            last_event_type="task_permanently_failed",
        )
        retried = apply(failed, lifecycle.retry_task(failed, NOW))
        assert retried.status == "pending"
        assert lifecycle.after_failure(retried)
        change = lifecycle.claim("w1", NOW + 1)(retried)
        assert event_types(change) == ["task_claimed", "task_retry_started"]
        assert change.values["last_event_type"] == "task_retry_started"
        assert event(change, "task_retry_started").metadata == {"retry_count": 0}
        assert change.values["attempt"] == 4

    def test_claim_after_resume_of_a_cron_paused_by_failures_is_a_retry_start(self) -> None:
        paused = make_row(
            status="paused",
            type="cron",
            attempt=2,
            retry_count=1,
            error="ValueError: x",
            last_event_type="task_paused",
        )
        resumed = apply(paused, lifecycle.resume(paused, None, NOW))
        change = lifecycle.claim("w1", NOW + 1)(resumed)
        assert event_types(change) == ["task_claimed", "task_retry_started"]

    @pytest.mark.parametrize(
        "row",
        [
            make_row(),  # a new task
            make_row(attempt=2, retry_count=0, error=None, last_event_type="task_resumed"),
            # recovered: the last round was interrupted, not failed
            make_row(attempt=2, retry_count=0, error="E: x", last_event_type="task_recovered"),
            # a retry that was counted and then recovered
            make_row(attempt=2, retry_count=1, error="E: x", last_event_type="task_resumed"),
            # cancelled before it ever ran, then retried
            make_row(attempt=0, retry_count=0, error="cancelled", last_event_type="task_resumed"),
        ],
    )
    def test_claim_of_a_pending_task_whose_last_round_did_not_fail_starts(
        self, row: TaskRow
    ) -> None:
        assert not lifecycle.after_failure(row)
        assert event_types(lifecycle.claim("w1", NOW)(row)) == ["task_claimed", "task_started"]

    @pytest.mark.parametrize(
        "status", ["running", "completed", "permanently_failed", "paused", "suspended"]
    )
    def test_claim_of_an_unclaimable_status_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.claim("w1", NOW)(make_row(status=status))

    def test_claim_keeps_stage_and_context(self) -> None:
        row = make_row(stage=3, context=b"ctx")
        change = lifecycle.claim("w1", NOW)(row)
        after = apply(row, change)
        assert after.stage == 3
        assert after.context == b"ctx"


# --- complete ------------------------------------------------------------------------------------
class TestComplete:
    def test_one_off_completes_clears_error_and_closes_the_attempt(self) -> None:
        row = running(attempt=3, retry_count=2, error="ValueError: earlier")
        change = lifecycle.complete(row, '{"ok":true}', NOW, no_tick)
        assert change.from_statuses == frozenset({"running"})
        assert change.fence == Fence("w1", 3)
        v = change.values
        assert v["status"] == "completed"
        assert v["result"] == '{"ok":true}'
        assert "error" in v
        assert v["error"] is None
        assert v["heartbeat_at"] is None
        assert v["last_event_type"] == "task_completed"
        assert event_types(change) == ["task_completed"]
        e = change.events[0]
        assert (e.from_status, e.to_status, e.worker_id, e.attempt) == (
            "running",
            "completed",
            "w1",
            3,
        )
        assert (
            change.attempt_close[:5]
            == AttemptClose(
                attempt=3, outcome="completed", ended_at=NOW, error=None, timeout_flag=False
            )[:5]
        )
        assert change.attempt_open is None
        assert change.fan_in is None
        assert change.children == ()

    def test_the_close_carries_what_the_running_row_says_of_the_attempt(self) -> None:
        # the store writes the attempt's one row at its close from these
        row = running(attempt=2, worker_id="w7", stage=4, start_time=NOW - 3, attempt_id=9)
        close = lifecycle.complete(row, None, NOW, no_tick).attempt_close
        assert close is not None
        assert (close.worker_id, close.stage, close.started_at, close.attempt_id) == (
            "w7",
            4,
            NOW - 3,
            9,
        )

    @pytest.mark.parametrize(
        "previous_tick",
        [
            NOW - 20 - 2 * MINUTE,  # the run started late: next tick is after now
            NOW - 20 + MINUTE,  # a clock behind the scheduler: next tick after the previous
            NOW,  # same second as the tick
        ],
    )
    def test_cron_success_reschedules_strictly_after_now_and_previous_tick(
        self, previous_tick: float
    ) -> None:
        row = cron_row(
            next_run_time=previous_tick, retry_count=2, stage=4, attempt=7, context=b"kept"
        )
        change = lifecycle.complete(row, '"r"', NOW, cron.next_tick)
        v = change.values
        assert v["status"] == "pending"
        assert v["next_run_time"] > NOW
        assert v["next_run_time"] > previous_tick
        # and it is the FIRST such tick of "every minute at second 0"
        assert v["next_run_time"] % MINUTE == 0
        assert v["next_run_time"] - max(NOW, previous_tick) <= MINUTE
        assert v["retry_count"] == 0
        assert v["stage"] == 0
        assert v["result"] == '"r"'  # the next run sees it as task.result (SPEC §6)
        assert v["error"] is None
        assert event_types(change) == ["task_completed"]
        assert change.events[0].to_status == "pending"
        assert change.attempt_close is not None
        assert change.attempt_close.outcome == "completed"
        assert change.fence == Fence("w1", 7)

    def test_cron_success_asks_the_cron_module_with_expression_zone_and_bound(self) -> None:
        calls: list[tuple[str, str, float]] = []

        def fake_tick(expr: str, tz: str, after: float) -> float:
            calls.append((expr, tz, after))
            return after + 1.5

        row = cron_row(cron_expr="0 0 3 * * *", tz="Europe/Paris", next_run_time=NOW + 30)
        change = lifecycle.complete(row, None, NOW, fake_tick)
        assert calls == [("0 0 3 * * *", "Europe/Paris", NOW + 30)]
        assert change.values["next_run_time"] == NOW + 31.5

    def test_one_off_success_keeps_retry_count_and_stage(self) -> None:
        row = running(retry_count=2, stage=3)
        after = apply(row, lifecycle.complete(row, "1", NOW, no_tick))
        assert (after.stage, after.retry_count) == (3, 2)

    @pytest.mark.parametrize("status", ["pending", "failed", "suspended", "completed"])
    def test_complete_of_a_task_not_running_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.complete(make_row(status=status), "1", NOW, no_tick)

    def test_a_completing_child_carries_its_fan_in(self) -> None:
        change = lifecycle.complete(child(), '"done"', NOW, no_tick)
        assert change.fan_in is not None
        assert change.fan_in.parent_id == 7
        assert change.fan_in.resume.task_id == 7


# --- fail ----------------------------------------------------------------------------------------
def fail_until_final(max_retries: int) -> tuple[int, list[Change], TaskRow]:
    """Run a fresh task through claim+fail rounds; return attempts made, fail changes, final row."""
    row = make_row(max_retries=max_retries, retry_interval=0.0)
    changes: list[Change] = []
    attempts = 0
    while row.status in ("pending", "failed"):
        assert attempts < 50, "never gave up"
        row = apply(row, lifecycle.claim("w1", NOW)(row))
        attempts += 1
        change = lifecycle.fail(row, f"RuntimeError: round {attempts}", NOW, rng())
        changes.append(change)
        row = apply(row, change)
    return attempts, changes, row


class TestFail:
    @pytest.mark.parametrize(("max_retries", "attempts"), [(0, 1), (1, 1), (2, 2), (3, 3), (5, 5)])
    def test_max_retries_counts_all_attempts_the_first_included(
        self, max_retries: int, attempts: int
    ) -> None:
        made, changes, final = fail_until_final(max_retries)
        assert made == attempts
        assert final.status == "permanently_failed"
        assert final.attempt == attempts
        # retry_count counts the retries scheduled; the last failure does not increment it
        assert final.retry_count == attempts - 1
        assert "retry_count" not in changes[-1].values
        for n, change in enumerate(changes[:-1], start=1):
            assert change.values["status"] == "failed"
            assert change.values["retry_count"] == n
        assert final.error == f"RuntimeError: round {attempts}"

    def test_retry_is_scheduled_in_the_failing_write_after_the_fixed_delay(self) -> None:
        row = running(retry_interval=30.0, retry_count=0, stage=2, context=b"c")
        error = "ValueError: boom\nTraceback (most recent call last):\n  ..."
        change = lifecycle.fail(row, error, NOW, rng())
        v = change.values
        assert v["status"] == "failed"
        assert v["retry_count"] == 1
        assert v["next_run_time"] == NOW + 30.0
        assert v["error"] == error
        assert v["heartbeat_at"] is None
        assert "stage" not in v
        assert "context" not in v
        assert change.fence == Fence("w1", 1)
        assert change.from_statuses == frozenset({"running"})
        assert event_types(change) == ["task_failed", "task_retry_scheduled"]
        assert event(change, "task_failed").metadata == {"error": "ValueError: boom"}
        assert event(change, "task_retry_scheduled").metadata == {
            "retry_count": 1,
            "next_run_time": NOW + 30.0,
        }
        for e in change.events:
            assert (e.from_status, e.to_status, e.worker_id, e.attempt) == (
                "running",
                "failed",
                "w1",
                1,
            )
        assert (
            change.attempt_close[:5]
            == AttemptClose(
                attempt=1, outcome="failed", ended_at=NOW, error=error, timeout_flag=False
            )[:5]
        )
        assert change.fan_in is None
        after = apply(row, change)
        assert (after.stage, after.context) == (2, b"c")

    def test_exponential_backoff_without_jitter_doubles_per_retry_and_is_capped(self) -> None:
        delays = []
        for retry_count in range(5):
            row = running(
                retry_count=retry_count,
                max_retries=10,
                retry_interval=4.0,
                retry_backoff="exponential",
                retry_jitter=False,
                max_retry_interval=40.0,
            )
            change = lifecycle.fail(row, "E: x", NOW, rng())
            assert change.values["retry_count"] == retry_count + 1
            delays.append(change.values["next_run_time"] - NOW)
        # retry_interval * 2**(retry_count-1) for the new retry_count, capped at 40
        assert delays == [4.0, 8.0, 16.0, 32.0, 40.0]

    def test_exponential_backoff_with_jitter_stays_within_bounds(self) -> None:
        seen = set()
        for seed in range(50):
            for retry_count in range(6):
                row = running(
                    retry_count=retry_count,
                    max_retries=10,
                    retry_interval=2.0,
                    retry_backoff="exponential",
                    retry_jitter=True,
                    max_retry_interval=20.0,
                )
                change = lifecycle.fail(row, "E: x", NOW, random.Random(seed))
                delay = change.values["next_run_time"] - NOW
                cap = min(2.0 * 2**retry_count, 20.0)
                assert 0.0 <= delay <= cap
                seen.add(round(delay, 6))
                scheduled = event(change, "task_retry_scheduled").metadata
                assert scheduled is not None
                assert scheduled["next_run_time"] == change.values["next_run_time"]
        assert len(seen) > 100  # actually jittered, not a constant

    def test_jittered_delay_is_the_seeded_draw(self) -> None:
        row = running(
            retry_count=2,
            max_retries=10,
            retry_interval=3.0,
            retry_backoff="exponential",
            retry_jitter=True,
        )
        change = lifecycle.fail(row, "E: x", NOW, random.Random(99))
        expected = retry.retry_delay(3, 3.0, "exponential", 3600.0, True, random.Random(99))
        assert change.values["next_run_time"] == NOW + expected

    def test_last_attempt_of_a_one_off_fails_permanently(self) -> None:
        row = running(max_retries=3, retry_count=2, attempt=3, retry_interval=10.0)
        change = lifecycle.fail(row, "KeyError: 'k'", NOW, rng())
        v = change.values
        assert v["status"] == "permanently_failed"
        assert v["error"] == "KeyError: 'k'"
        assert "retry_count" not in v
        assert "next_run_time" not in v
        assert event_types(change) == ["task_failed", "task_permanently_failed"]
        expected = AttemptClose(3, "failed", NOW, "KeyError: 'k'", False)
        assert change.attempt_close[:5] == expected[:5]
        assert change.fence == Fence("w1", 3)
        assert change.fan_in is None  # a root task has no parent to count it

    def test_last_attempt_of_a_cron_task_pauses_it(self) -> None:
        row = cron_row(max_retries=1, retry_count=0)
        change = lifecycle.fail(row, "OSError: disk", NOW, rng())
        assert change.values["status"] == "paused"
        assert event_types(change) == ["task_failed", "task_paused"]
        assert change.attempt_close is not None
        assert change.attempt_close.outcome == "failed"

    def test_a_cron_failure_with_attempts_left_retries(self) -> None:
        row = cron_row(max_retries=2, retry_count=0, retry_interval=5.0)
        change = lifecycle.fail(row, "OSError: disk", NOW, rng())
        assert change.values["status"] == "failed"
        assert change.values["next_run_time"] == NOW + 5.0

    @pytest.mark.parametrize("timeout_type", ["total", "heartbeat"])
    def test_timed_out_with_attempts_left(self, timeout_type: str) -> None:
        row = running(retry_count=0, max_retries=2, retry_interval=1.0)
        change = lifecycle.fail(
            row, "TaskTimeoutError: past 60s", NOW, rng(), timed_out=True, timeout_type=timeout_type
        )
        assert change.values["status"] == "timeout"
        assert change.values["retry_count"] == 1
        assert change.values["next_run_time"] == NOW + 1.0
        assert event_types(change) == ["task_timed_out", "task_retry_scheduled"]
        meta = event(change, "task_timed_out").metadata
        assert meta is not None
        assert meta["timeout_type"] == timeout_type
        assert (
            change.attempt_close[:5]
            == AttemptClose(1, "timeout", NOW, "TaskTimeoutError: past 60s", True)[:5]
        )

    def test_timed_out_on_the_last_attempt(self) -> None:
        one_off = lifecycle.fail(running(max_retries=1), "T: t", NOW, rng(), timed_out=True)
        assert one_off.values["status"] == "permanently_failed"
        assert event_types(one_off) == ["task_timed_out", "task_permanently_failed"]
        periodic = lifecycle.fail(cron_row(max_retries=1), "T: t", NOW, rng(), timed_out=True)
        assert periodic.values["status"] == "paused"
        assert event_types(periodic) == ["task_timed_out", "task_paused"]

    def test_default_timeout_type_is_total(self) -> None:
        change = lifecycle.fail(running(), "T: t", NOW, rng(), timed_out=True)
        meta = event(change, "task_timed_out").metadata
        assert meta is not None
        assert meta["timeout_type"] == "total"

    def test_no_retry_fails_a_one_off_at_once_and_says_why(self) -> None:
        row = running(max_retries=5, retry_count=0, retry_interval=10.0)
        why = lifecycle.NoRetry("billing.errors.CardDeclined", "PermanentError")
        change = lifecycle.fail(row, "CardDeclined: no", NOW, rng(), no_retry=why)
        v = change.values
        assert v["status"] == "permanently_failed"
        assert "retry_count" not in v
        assert "next_run_time" not in v
        assert event_types(change) == ["task_failed", "task_permanently_failed"]
        assert event(change, "task_permanently_failed").metadata == {
            "reason": "no_retry",
            "exception": "billing.errors.CardDeclined",
            "rule": "PermanentError",
        }
        expected = AttemptClose(1, "failed", NOW, "CardDeclined: no", False)
        assert change.attempt_close[:5] == expected[:5]

    def test_no_retry_pauses_a_cron_task_with_attempts_left(self) -> None:
        row = cron_row(max_retries=3, retry_count=0)
        why = lifecycle.NoRetry("builtins.ValueError", "no_retry_on")
        change = lifecycle.fail(row, "ValueError: bad", NOW, rng(), no_retry=why)
        assert change.values["status"] == "paused"
        assert event_types(change) == ["task_failed", "task_paused"]
        meta = event(change, "task_paused").metadata
        assert meta is not None
        assert meta["reason"] == "no_retry"
        assert meta["rule"] == "no_retry_on"

    def test_no_retry_on_the_last_attempt_still_says_why(self) -> None:
        row = running(max_retries=1)
        why = lifecycle.NoRetry("builtins.KeyError", "retry_on")
        change = lifecycle.fail(row, "KeyError: k", NOW, rng(), no_retry=why)
        assert event(change, "task_permanently_failed").metadata == {
            "reason": "no_retry",
            "exception": "builtins.KeyError",
            "rule": "retry_on",
        }

    def test_a_timeout_ignores_no_retry(self) -> None:
        row = running(max_retries=3, retry_interval=1.0)
        why = lifecycle.NoRetry("builtins.ValueError", "retry_on")
        change = lifecycle.fail(row, "T: t", NOW, rng(), timed_out=True, no_retry=why)
        assert change.values["status"] == "timeout"
        assert event_types(change) == ["task_timed_out", "task_retry_scheduled"]

    @pytest.mark.parametrize("status", ["pending", "failed", "timeout", "suspended", "paused"])
    def test_fail_of_a_task_not_running_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.fail(make_row(status=status), "E: x", NOW, rng())

    def test_a_child_failing_for_good_resumes_its_parent_round(self) -> None:
        row = child(max_retries=1)
        change = lifecycle.fail(row, "E: child broke", NOW, rng())
        assert change.values["status"] == "permanently_failed"
        fan_in = change.fan_in
        assert fan_in is not None
        assert fan_in.parent_id == 7
        resume = fan_in.resume
        assert resume.task_id == 7
        assert resume.root_id == 1
        assert resume.from_statuses == frozenset({"suspended"})
        assert resume.stage == 2  # compare-and-set on the stage that spawned the child
        assert resume.fence is None
        assert resume.values["status"] == "pending"
        assert resume.values["stage"] == 3
        assert resume.values["next_run_time"] == NOW
        assert resume.values["suspend_reason"] is None
        assert [e.event_type for e in resume.events] == ["task_resumed"]
        resumed = resume.events[0]
        assert (resumed.from_status, resumed.to_status) == ("suspended", "pending")
        assert resumed.metadata == {"resume_reason": "children_completed"}
        assert resumed.stage == 3

    def test_a_child_with_attempts_left_does_not_touch_its_parent(self) -> None:
        change = lifecycle.fail(child(max_retries=3), "E: x", NOW, rng())
        assert change.values["status"] == "failed"
        assert change.fan_in is None
        timed = lifecycle.fail(child(max_retries=3), "E: x", NOW, rng(), timed_out=True)
        assert timed.fan_in is None


# --- spawn and suspend ---------------------------------------------------------------------------
def planned_children(parent: TaskRow, count: int) -> list[NewTask]:
    return [
        lifecycle.new_task(
            name=f"c{i}",
            type="async",
            payload="null",
            policy=TaskPolicy(),
            next_run_time=NOW,
            now=NOW,
            parent=parent,
        )
        for i in range(count)
    ]


class TestSpawn:
    def test_spawn_suspends_awaiting_subtasks_and_attaches_the_children(self) -> None:
        row = running(stage=1, attempt=2, total_children=2, completed_children=2)
        kids = planned_children(row, 3)
        change = lifecycle.spawn(row, kids, b"new ctx", NOW)
        v = change.values
        assert v["status"] == "suspended"
        assert v["suspend_reason"] == "awaiting_subtasks"
        assert v["total_children"] == 3  # the counters are per round
        assert v["completed_children"] == 0
        assert v["context"] == b"new ctx"
        assert v["heartbeat_at"] is None
        assert "stage" not in v
        assert change.children == tuple(kids)
        assert change.fence == Fence("w1", 2)
        assert change.from_statuses == frozenset({"running"})
        assert event_types(change) == ["task_subtasks_created", "task_suspended"]
        assert event(change, "task_subtasks_created").metadata == {"child_count": 3}
        assert event(change, "task_suspended").metadata == {"suspend_reason": "awaiting_subtasks"}
        for e in change.events:
            assert (e.to_status, e.worker_id, e.attempt, e.stage) == ("suspended", "w1", 2, 1)
        assert change.attempt_close[:5] == AttemptClose(2, "suspended", NOW, None, False)[:5]
        for kid in kids:
            assert kid.values["parent_id"] == row.id
            assert kid.values["root_id"] == row.root_id
            assert kid.values["parent_stage"] == 1

    def test_spawn_without_context_leaves_the_context_untouched(self) -> None:
        row = running(context=b"old")
        change = lifecycle.spawn(row, planned_children(row, 1), None, NOW)
        assert "context" not in change.values
        assert apply(row, change).context == b"old"

    def test_spawn_of_a_task_not_running_raises(self) -> None:
        row = make_row(status="suspended")
        with pytest.raises(InvalidTransitionError, match="suspended"):
            lifecycle.spawn(row, planned_children(row, 1), None, NOW)

    def test_lifecycle_names_the_awaiting_reason(self) -> None:
        assert lifecycle.AWAITING_SUBTASKS == "awaiting_subtasks"


class TestSuspend:
    def test_explicit_suspension_stores_reason_and_context(self) -> None:
        row = running(stage=2, attempt=1)
        change = lifecycle.suspend(row, "awaiting_approval", b"ctx", NOW)
        v = change.values
        assert v["status"] == "suspended"
        assert v["suspend_reason"] == "awaiting_approval"
        assert v["context"] == b"ctx"
        assert "total_children" not in v
        assert "stage" not in v
        assert event_types(change) == ["task_suspended"]
        e = change.events[0]
        assert e.metadata == {"suspend_reason": "awaiting_approval"}
        assert (e.worker_id, e.attempt, e.stage) == ("w1", 1, 2)
        assert change.fence == Fence("w1", 1)
        assert change.attempt_close[:5] == AttemptClose(1, "suspended", NOW, None, False)[:5]
        assert change.children == ()

    def test_suspend_without_context_leaves_it(self) -> None:
        change = lifecycle.suspend(running(context=b"keep"), "later", None, NOW)
        assert "context" not in change.values

    def test_suspend_of_a_task_not_running_raises(self) -> None:
        with pytest.raises(InvalidTransitionError, match="pending"):
            lifecycle.suspend(make_row(status="pending"), "x", None, NOW)


# --- recover -------------------------------------------------------------------------------------
class TestRecover:
    def test_recovery_returns_the_task_at_once_without_using_an_attempt(self) -> None:
        row = running(worker_id="dead-worker", attempt=2, retry_count=1, stage=3, context=b"c")
        change = lifecycle.recover(row, NOW, "rescuer", "worker dead")
        v = change.values
        assert v["status"] == "pending"
        assert v["next_run_time"] == NOW
        assert v["heartbeat_at"] is None
        assert "retry_count" not in v
        assert "stage" not in v
        assert "context" not in v
        assert change.fence == Fence("dead-worker", 2)
        assert change.from_statuses == frozenset({"running"})
        assert event_types(change) == ["task_recovered"]
        e = change.events[0]
        assert e.metadata == {
            "recovered_from_worker_id": "dead-worker",
            "recovered_by_worker_id": "rescuer",
        }
        assert e.message == "worker dead"
        assert (e.from_status, e.to_status, e.attempt) == ("running", "pending", 2)
        assert change.attempt_close[:5] == AttemptClose(2, "interrupted", NOW, None, False)[:5]
        assert change.fan_in is None
        after = apply(row, change)
        assert (after.retry_count, after.stage, after.context) == (1, 3, b"c")
        # the next claim is a plain start of attempt 3, not a retry
        again = lifecycle.claim("rescuer", NOW + 1)(after)
        assert event_types(again) == ["task_claimed", "task_started"]
        assert again.values["attempt"] == 3

    @pytest.mark.parametrize("status", ["pending", "suspended", "completed", "failed"])
    def test_recover_of_a_task_not_running_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.recover(make_row(status=status), NOW, "w2")


# --- cancel, pause, resume, retry_task -----------------------------------------------------------
class TestCancel:
    def test_cancel_of_a_running_task_fences_and_closes_cancelled(self) -> None:
        row = running(attempt=2)
        change = lifecycle.cancel(row, "no longer needed", NOW)
        v = change.values
        assert v["status"] == "permanently_failed"
        assert v["error"] == "no longer needed"
        assert change.fence == Fence("w1", 2)
        assert change.from_statuses == frozenset({"running"})
        assert event_types(change) == ["task_cancelled"]
        e = change.events[0]
        assert e.message == "no longer needed"
        assert (e.from_status, e.to_status, e.worker_id, e.attempt) == (
            "running",
            "permanently_failed",
            "w1",
            2,
        )
        assert change.attempt_close is not None
        assert change.attempt_close.outcome == "cancelled"
        assert change.attempt_close.attempt == 2

    @pytest.mark.parametrize("status", ["pending", "failed", "timeout", "paused", "suspended"])
    def test_cancel_of_a_task_not_running_has_no_fence_and_no_attempt(self, status: str) -> None:
        row = make_row(status=status, worker_id="w-old", attempt=1, suspend_reason="x")
        change = lifecycle.cancel(row, "stop", NOW)
        assert change.values["status"] == "permanently_failed"
        assert change.values["error"] == "stop"
        assert change.fence is None
        assert change.attempt_close is None
        assert change.from_statuses == frozenset({status})
        e = change.events[0]
        assert (e.from_status, e.worker_id, e.attempt) == (status, None, None)

    def test_cancel_without_reason_still_records_an_error(self) -> None:
        change = lifecycle.cancel(make_row(), None, NOW)
        assert isinstance(change.values["error"], str)
        assert change.values["error"]

    @pytest.mark.parametrize("status", ["completed", "permanently_failed"])
    def test_cancel_of_a_terminal_task_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.cancel(make_row(status=status), "x", NOW)

    @pytest.mark.parametrize("status", ["pending", "running", "paused", "suspended"])
    def test_cancelling_a_child_counts_it_on_its_parent(self, status: str) -> None:
        change = lifecycle.cancel(child(status=status), "stop", NOW)
        assert change.fan_in is not None
        assert change.fan_in.resume.task_id == 7
        assert change.fan_in.resume.values["stage"] == 3


class TestPause:
    def test_pause_of_a_running_task_fences_and_closes_paused(self) -> None:
        change = lifecycle.pause(running(attempt=4, stage=1), NOW)
        assert change.values["status"] == "paused"
        assert change.fence == Fence("w1", 4)
        assert change.attempt_close[:5] == AttemptClose(4, "paused", NOW, None, False)[:5]
        assert event_types(change) == ["task_paused"]
        assert change.fan_in is None
        assert "stage" not in change.values

    @pytest.mark.parametrize("status", ["pending", "failed", "timeout"])
    def test_pause_of_a_waiting_task(self, status: str) -> None:
        change = lifecycle.pause(make_row(status=status), NOW)
        assert change.values["status"] == "paused"
        assert change.fence is None
        assert change.attempt_close is None
        assert change.from_statuses == frozenset({status})

    @pytest.mark.parametrize("status", ["suspended", "paused", "completed", "permanently_failed"])
    def test_pause_elsewhere_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.pause(make_row(status=status), NOW)


class TestResume:
    def test_resume_of_an_explicit_suspension_advances_the_stage(self) -> None:
        row = make_row(
            status="suspended", stage=2, suspend_reason="awaiting_approval", context=b"c"
        )
        change = lifecycle.resume(row, "approved", NOW)
        v = change.values
        assert v["status"] == "pending"
        assert v["stage"] == 3
        assert v["next_run_time"] == NOW
        assert v["suspend_reason"] is None
        assert "context" not in v
        assert change.from_statuses == frozenset({"suspended"})
        assert change.fence is None
        assert change.attempt_close is None
        assert event_types(change) == ["task_resumed"]
        e = change.events[0]
        assert e.metadata == {"resume_reason": "approved"}
        assert (e.from_status, e.to_status) == ("suspended", "pending")

    def test_resume_without_reason_is_manual(self) -> None:
        row = make_row(status="suspended", suspend_reason="x")
        change = lifecycle.resume(row, None, NOW)
        assert change.events[0].metadata == {"resume_reason": "manual"}

    def test_explicit_suspension_after_a_finished_round_can_be_resumed(self) -> None:
        row = make_row(
            status="suspended", stage=1, suspend_reason="review", total_children=2,
            completed_children=2,
        )  # fmt: skip
        assert lifecycle.resume(row, None, NOW).values["stage"] == 2

    def test_a_parent_awaiting_its_children_cannot_be_resumed_by_hand(self) -> None:
        row = make_row(
            status="suspended", suspend_reason="awaiting_subtasks", total_children=3,
            completed_children=1,
        )  # fmt: skip
        with pytest.raises(InvalidTransitionError, match="suspended"):
            lifecycle.resume(row, "impatient", NOW)

    def test_resume_of_paused_resets_retries_and_keeps_the_stage(self) -> None:
        row = make_row(status="paused", stage=2, retry_count=2, error="E: last", context=b"c")
        change = lifecycle.resume(row, None, NOW)
        v = change.values
        assert v["status"] == "pending"
        assert v["retry_count"] == 0
        assert v["next_run_time"] == NOW
        assert "stage" not in v
        assert "context" not in v
        assert "error" not in v  # error keeps the last error until the task completes
        assert change.from_statuses == frozenset({"paused"})
        assert event_types(change) == ["task_resumed"]
        assert change.events[0].stage == 2
        after = apply(row, change)
        assert (after.stage, after.context, after.error) == (2, b"c", "E: last")

    def test_resume_of_a_paused_cron_keeps_a_future_tick(self) -> None:
        row = make_row(
            status="paused", type="cron", cron_expr="0 * * * * *", next_run_time=NOW + 40
        )
        change = lifecycle.resume(row, None, NOW)
        # resuming a schedule does not run it before its next tick
        assert change.values["next_run_time"] == NOW + 40
        assert change.values["retry_count"] == 0

    @pytest.mark.parametrize(
        "status", ["pending", "running", "failed", "timeout", "completed", "permanently_failed"]
    )
    def test_resume_elsewhere_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.resume(make_row(status=status), None, NOW)


class TestRetryTask:
    def test_retry_gives_fresh_attempts_from_the_same_stage(self) -> None:
        row = make_row(
            status="permanently_failed", stage=2, retry_count=2, attempt=3, error="E: x",
            context=b"c",
        )  # fmt: skip
        change = lifecycle.retry_task(row, NOW)
        v = change.values
        assert v["status"] == "pending"
        assert v["retry_count"] == 0
        assert v["next_run_time"] == NOW
        assert "stage" not in v
        assert "attempt" not in v  # the audit attempt number keeps counting rounds
        assert change.from_statuses == frozenset({"permanently_failed"})
        assert event_types(change) == ["task_resumed"]
        assert change.fan_in is None
        after = apply(row, change)
        assert (after.stage, after.context) == (2, b"c")
        # a fresh set of max_retries attempts
        made = 0
        while after.status in ("pending", "failed"):
            after = apply(after, lifecycle.claim("w1", NOW)(after))
            made += 1
            after = apply(after, lifecycle.fail(after, "E: y", NOW, rng()))
        assert made == row.max_retries
        assert after.attempt == 3 + made

    @pytest.mark.parametrize(
        "status", ["pending", "running", "failed", "timeout", "completed", "paused", "suspended"]
    )
    def test_retry_elsewhere_raises(self, status: str) -> None:
        with pytest.raises(InvalidTransitionError, match=status):
            lifecycle.retry_task(make_row(status=status), NOW)


# --- annotate ------------------------------------------------------------------------------------
class TestAnnotate:
    def test_progress_event_refreshes_heartbeat_under_the_fence(self) -> None:
        row = running(attempt=2, stage=1)
        change = lifecycle.annotate(
            row,
            NOW,
            "task_progress",
            message="half",
            metadata={"progress_percent": 50},
            values={"progress_percent": 50.0, "progress_text": "half"},
        )
        assert change.from_statuses == frozenset({"running"})
        assert change.fence == Fence("w1", 2)
        v = change.values
        assert v["heartbeat_at"] == NOW
        assert v["last_active_time"] == NOW
        assert v["last_event_type"] == "task_progress"
        assert v["progress_percent"] == 50.0
        assert v["progress_text"] == "half"
        assert "status" not in v
        assert event_types(change) == ["task_progress"]
        e = change.events[0]
        assert (e.from_status, e.to_status, e.worker_id, e.attempt, e.stage) == (
            "running",
            "running",
            "w1",
            2,
            1,
        )
        assert e.metadata == {"progress_percent": 50}
        assert e.message == "half"
        assert change.attempt_open is None
        assert change.attempt_close is None

    def test_checkpoint_without_values(self) -> None:
        change = lifecycle.annotate(running(), NOW, "task_checkpoint", metadata={"code": "c1"})
        assert set(change.values) == {
            "heartbeat_at",
            "last_active_time",
            "last_event_type",
            "last_event_time",
        }


# --- common properties ---------------------------------------------------------------------------
def _every_plan() -> Iterator[tuple[str, TaskRow, Change]]:
    r = running(attempt=2, stage=1)
    yield "complete", r, lifecycle.complete(r, "1", NOW, no_tick)
    yield "fail", r, lifecycle.fail(r, "E: x", NOW, rng())
    yield "fail-last", r, lifecycle.fail(r._replace(max_retries=1), "E: x", NOW, rng())
    yield "timeout", r, lifecycle.fail(r, "E: x", NOW, rng(), timed_out=True)
    yield "spawn", r, lifecycle.spawn(r, planned_children(r, 1), None, NOW)
    yield "suspend", r, lifecycle.suspend(r, "why", None, NOW)
    yield "recover", r, lifecycle.recover(r, NOW, "w2")
    yield "cancel", r, lifecycle.cancel(r, "x", NOW)
    yield "pause", r, lifecycle.pause(r, NOW)


PLANS = list(_every_plan())


@pytest.mark.parametrize(("label", "row", "change"), PLANS, ids=[p[0] for p in PLANS])
def test_every_write_about_a_running_task_is_fenced_and_closes_its_attempt(
    label: str, row: TaskRow, change: Change
) -> None:
    assert change.fence == Fence(row.worker_id or "", row.attempt), label
    assert change.from_statuses == frozenset({"running"}), label
    assert change.attempt_close is not None, label
    assert change.attempt_close.attempt == row.attempt
    assert change.attempt_close.ended_at == NOW
    assert change.values["last_event_type"] == change.events[-1].event_type
    assert change.values["last_event_time"] == NOW
    assert change.values["heartbeat_at"] is None  # it is no longer running
    for e in change.events:
        # SPEC Appendix A: attempt is set on every event written during an attempt
        assert (e.worker_id, e.attempt) == (row.worker_id, row.attempt), label
        assert e.event_time == NOW


@pytest.mark.parametrize(("label", "row", "change"), PLANS, ids=[p[0] for p in PLANS])
def test_only_terminal_writes_of_children_fan_in(label: str, row: TaskRow, change: Change) -> None:
    terminal = change.values["status"] in ("completed", "permanently_failed")
    as_child = row._replace(parent_id=7, root_id=1, parent_stage=0)
    replanned = {
        "complete": lambda: lifecycle.complete(as_child, "1", NOW, no_tick),
        "fail": lambda: lifecycle.fail(as_child, "E: x", NOW, rng()),
        "fail-last": lambda: lifecycle.fail(as_child._replace(max_retries=1), "E: x", NOW, rng()),
        "timeout": lambda: lifecycle.fail(as_child, "E: x", NOW, rng(), timed_out=True),
        "spawn": lambda: lifecycle.spawn(as_child, planned_children(as_child, 1), None, NOW),
        "suspend": lambda: lifecycle.suspend(as_child, "why", None, NOW),
        "recover": lambda: lifecycle.recover(as_child, NOW, "w2"),
        "cancel": lambda: lifecycle.cancel(as_child, "x", NOW),
        "pause": lambda: lifecycle.pause(as_child, NOW),
    }[label]()
    assert change.fan_in is None  # a root task never fans in
    assert (replanned.fan_in is not None) == terminal, label
    if replanned.fan_in is not None:
        assert replanned.fan_in.resume.stage == 0
        assert replanned.fan_in.resume.values["stage"] == 1


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_a_refused_call_returns_no_plan(status: str) -> None:
    """Every control function either returns a Change from an allowed status or raises."""
    row = make_row(status=status, worker_id="w1" if status == "running" else None, attempt=1)
    allowed = {
        "cancel": {"pending", "failed", "timeout", "paused", "suspended", "running"},
        "pause": {"pending", "failed", "timeout", "running"},
        "resume": {"paused", "suspended"},
        "retry_task": {"permanently_failed"},
    }
    calls = {
        "cancel": lambda: lifecycle.cancel(row, "r", NOW),
        "pause": lambda: lifecycle.pause(row, NOW),
        "resume": lambda: lifecycle.resume(row, None, NOW),
        "retry_task": lambda: lifecycle.retry_task(row, NOW),
    }
    for name, call in calls.items():
        if status in allowed[name]:
            assert isinstance(call(), Change)
        else:
            with pytest.raises(InvalidTransitionError, match=status):
                call()


def test_new_task_plans_a_pending_row_and_its_created_event() -> None:
    policy = TaskPolicy(priority=5, timeout=9.0, max_retries=2, retry_interval=1.5)
    planned = lifecycle.new_task(
        name="n",
        type="async",
        payload="{}",
        policy=policy,
        next_run_time=NOW + 10,
        now=NOW,
        tag="t",
        requires=("gpu", "ssd"),
    )
    v = planned.values
    assert v["status"] == "pending"
    assert (v["priority"], v["timeout"], v["max_retries"], v["retry_interval"]) == (5, 9.0, 2, 1.5)
    assert v["next_run_time"] == NOW + 10
    assert v["retry_count"] == 0
    assert v["attempt"] == 0
    assert v["stage"] == 0
    assert v["root_id"] is None  # a root task's root is its own id, known after insert
    assert v["parent_id"] is None
    assert v["requires"] is not None
    assert set(v["requires"].split(",")) == {"gpu", "ssd"}
    assert [e.event_type for e in planned.events] == ["task_created"]
    assert planned.events[0].to_status == "pending"
    assert planned.events[0].from_status is None
