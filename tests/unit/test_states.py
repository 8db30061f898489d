"""The transition table (tideflow.core.states) checked against the table of SPEC §5.

The expected table below is written from the SPEC, not from the code: one entry per SPEC row
(split where the SPEC's attempt handling differs by source), with the guard written as the
condition in the SPEC's "when" column over the facts the guards may look at. Issue 11 (part 5)
adds ``no_retry``: a failure the handler said must not be retried ends the task as its last
attempt would, whatever attempts are left; a timeout is never ``no_retry``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import pytest

from tideflow.core.states import (
    GUARDS,
    NEW,
    TRANSITIONS,
    Facts,
    Transition,
    Trigger,
    transition,
    triggers_from,
)
from tideflow.errors import InvalidTransitionError
from tideflow.models import Status

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
TIMEOUT = "timeout"
PERMANENTLY_FAILED = "permanently_failed"
PAUSED = "paused"
SUSPENDED = "suspended"

ALL_STATUSES = (
    PENDING,
    RUNNING,
    COMPLETED,
    FAILED,
    TIMEOUT,
    PERMANENTLY_FAILED,
    PAUSED,
    SUSPENDED,
)
ALL_SOURCES = ("(new)", *ALL_STATUSES)

ALL_FACTS = tuple(
    Facts(
        is_cron=cron,
        attempts_left=left,
        awaiting_children=awaiting,
        after_failure=failed,
        no_retry=no_retry,
    )
    for cron, left, awaiting, failed, no_retry in itertools.product((False, True), repeat=5)
)


def always(f: Facts) -> bool:
    return True


def one_off(f: Facts) -> bool:
    return not f.is_cron


def cron(f: Facts) -> bool:
    return f.is_cron


def attempts_left(f: Facts) -> bool:
    return f.attempts_left and not f.no_retry


def no_attempts_one_off(f: Facts) -> bool:
    return not f.attempts_left and not f.no_retry and not f.is_cron


def no_attempts_cron(f: Facts) -> bool:
    return not f.attempts_left and not f.no_retry and f.is_cron


def no_retry_one_off(f: Facts) -> bool:
    return f.no_retry and not f.is_cron


def no_retry_cron(f: Facts) -> bool:
    return f.no_retry and f.is_cron


def awaiting_children(f: Facts) -> bool:
    return f.awaiting_children


def explicit_suspension(f: Facts) -> bool:
    return not f.awaiting_children


def fresh_round(f: Facts) -> bool:
    return not f.after_failure


def after_failure(f: Facts) -> bool:
    return f.after_failure


class Expected(NamedTuple):
    trigger: str
    sources: tuple[str, ...]
    when: Callable[[Facts], bool]
    target: str
    events: tuple[str, ...]
    attempt: str | None  # "open", the outcome the open attempt is closed with, or None


# SPEC §5, row by row (attempt outcomes from §5 and §9).
EXPECTED: tuple[Expected, ...] = (
    # (new) -> pending: created
    Expected("create", ("(new)",), always, PENDING, ("task_created",), None),
    # pending / failed / timeout -> running: claimed
    # "task_retry_started when the previous round failed or timed out, otherwise task_started":
    # a pending task's previous round failed after retry_task / resume_task of a paused task
    Expected("claim", (PENDING,), fresh_round, RUNNING, ("task_claimed", "task_started"), "open"),
    Expected(
        "claim", (PENDING,), after_failure, RUNNING, ("task_claimed", "task_retry_started"), "open"
    ),
    Expected(
        "claim", (FAILED, TIMEOUT), always, RUNNING, ("task_claimed", "task_retry_started"), "open"
    ),
    # running -> completed (one-off) / pending (cron)
    Expected("succeed", (RUNNING,), one_off, COMPLETED, ("task_completed",), "completed"),
    Expected("succeed", (RUNNING,), cron, PENDING, ("task_completed",), "completed"),
    # running -> failed / timeout with attempts left
    Expected(
        "fail", (RUNNING,), attempts_left, FAILED, ("task_failed", "task_retry_scheduled"), "failed"
    ),
    Expected(
        "time_out",
        (RUNNING,),
        attempts_left,
        TIMEOUT,
        ("task_timed_out", "task_retry_scheduled"),
        "timeout",
    ),
    # running -> permanently_failed: no attempts left, one-off
    Expected(
        "fail",
        (RUNNING,),
        no_attempts_one_off,
        PERMANENTLY_FAILED,
        ("task_failed", "task_permanently_failed"),
        "failed",
    ),
    Expected(
        "time_out",
        (RUNNING,),
        no_attempts_one_off,
        PERMANENTLY_FAILED,
        ("task_timed_out", "task_permanently_failed"),
        "timeout",
    ),
    # running -> paused: no attempts left, cron
    Expected(
        "fail", (RUNNING,), no_attempts_cron, PAUSED, ("task_failed", "task_paused"), "failed"
    ),
    Expected(
        "time_out",
        (RUNNING,),
        no_attempts_cron,
        PAUSED,
        ("task_timed_out", "task_paused"),
        "timeout",
    ),
    # running -> permanently_failed / paused at once: the failure must not be retried
    # (issue 11: PermanentError, no_retry_on, retry_on), whatever attempts are left
    Expected(
        "fail",
        (RUNNING,),
        no_retry_one_off,
        PERMANENTLY_FAILED,
        ("task_failed", "task_permanently_failed"),
        "failed",
    ),
    Expected("fail", (RUNNING,), no_retry_cron, PAUSED, ("task_failed", "task_paused"), "failed"),
    # running -> suspended: next(children) / task.suspend(reason)
    Expected(
        "spawn",
        (RUNNING,),
        always,
        SUSPENDED,
        ("task_subtasks_created", "task_suspended"),
        "suspended",
    ),
    Expected("suspend", (RUNNING,), always, SUSPENDED, ("task_suspended",), "suspended"),
    # suspended -> pending: every child of the round is terminal
    Expected("children_done", (SUSPENDED,), awaiting_children, PENDING, ("task_resumed",), None),
    # suspended -> pending: resume_task of an explicit suspension
    Expected("resume", (SUSPENDED,), explicit_suspension, PENDING, ("task_resumed",), None),
    # paused -> pending: resume_task
    Expected("resume", (PAUSED,), always, PENDING, ("task_resumed",), None),
    # permanently_failed -> pending: retry_task
    Expected("retry", (PERMANENTLY_FAILED,), always, PENDING, ("task_resumed",), None),
    # cancel_task: a running attempt is fenced off and closed "cancelled"
    Expected(
        "cancel",
        (PENDING, FAILED, TIMEOUT, PAUSED, SUSPENDED),
        always,
        PERMANENTLY_FAILED,
        ("task_cancelled",),
        None,
    ),
    Expected("cancel", (RUNNING,), always, PERMANENTLY_FAILED, ("task_cancelled",), "cancelled"),
    # pause_task: a running attempt is fenced off and closed "paused"
    Expected("pause", (PENDING, FAILED, TIMEOUT), always, PAUSED, ("task_paused",), None),
    Expected("pause", (RUNNING,), always, PAUSED, ("task_paused",), "paused"),
    # running -> pending: owner dead, superseded or stopping; attempt "interrupted"
    Expected("recover", (RUNNING,), always, PENDING, ("task_recovered",), "interrupted"),
)

EXPECTED_TRIGGERS = {
    "create",
    "claim",
    "succeed",
    "fail",
    "time_out",
    "spawn",
    "suspend",
    "children_done",
    "resume",
    "retry",
    "cancel",
    "pause",
    "recover",
}

Cell = tuple[str, str, tuple[bool, ...], str, tuple[str, ...], str | None]


def _truth(predicate: Callable[[Facts], bool]) -> tuple[bool, ...]:
    return tuple(predicate(f) for f in ALL_FACTS)


def _expected_cells() -> list[Cell]:
    return sorted(
        (e.trigger, source, _truth(e.when), e.target, e.events, e.attempt)
        for e in EXPECTED
        for source in e.sources
    )


def _actual_cells() -> list[Cell]:
    return sorted(
        (
            row.trigger.value,
            source,
            _truth(GUARDS[row.guard]),
            row.target,
            row.events,
            row.attempt,
        )
        for row in TRANSITIONS
        for source in row.sources
    )


def _expected_for(trigger: str, source: str, facts: Facts) -> Expected | None:
    matches = [
        e for e in EXPECTED if e.trigger == trigger and source in e.sources and e.when(facts)
    ]
    assert len(matches) <= 1, f"the expected table is ambiguous for {trigger}/{source}/{facts}"
    return matches[0] if matches else None


def test_the_statuses_are_the_eight_of_the_spec() -> None:
    assert {s.value for s in Status} == set(ALL_STATUSES)
    assert NEW == "(new)"


def test_the_triggers_are_exactly_those_the_table_needs() -> None:
    assert {t.value for t in Trigger} == EXPECTED_TRIGGERS
    assert {row.trigger.value for row in TRANSITIONS} == EXPECTED_TRIGGERS


def test_every_row_uses_only_known_statuses_and_guards() -> None:
    for row in TRANSITIONS:
        assert isinstance(row, Transition)
        assert row.sources, row
        assert row.sources <= set(ALL_SOURCES), row
        assert row.target in ALL_STATUSES, row
        assert row.guard in GUARDS, row
        assert row.events, row


def test_the_table_matches_the_spec_cell_by_cell() -> None:
    """Each (trigger, source) cell: guard outcome, target, events in order, attempt action."""
    expected = _expected_cells()
    actual = _actual_cells()
    missing = [c for c in expected if c not in actual]
    extra = [c for c in actual if c not in expected]
    assert not missing, f"SPEC rows missing from TRANSITIONS: {missing}"
    assert not extra, f"TRANSITIONS rows not in the SPEC: {extra}"
    assert actual == expected


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda r: f"{r.trigger.value}-{r.target}")
def test_each_row_is_a_spec_row(row: Transition) -> None:
    """Walk the rows of TRANSITIONS one by one and find each in the SPEC table."""
    candidates = [
        e
        for e in EXPECTED
        if e.trigger == row.trigger.value
        and set(e.sources) == set(row.sources)
        and _truth(e.when) == _truth(GUARDS[row.guard])
    ]
    assert len(candidates) == 1, f"no SPEC row for {row}"
    spec = candidates[0]
    assert row.target == spec.target
    assert row.events == spec.events
    assert row.attempt == spec.attempt


def test_no_two_rows_can_match_the_same_call() -> None:
    for trigger, source, facts in itertools.product(Trigger, ALL_SOURCES, ALL_FACTS):
        matching = [
            r
            for r in TRANSITIONS
            if r.trigger is trigger and source in r.sources and GUARDS[r.guard](facts)
        ]
        assert len(matching) <= 1, (trigger, source, facts, matching)


@pytest.mark.parametrize("trigger", list(Trigger), ids=lambda t: t.value)
def test_transition_selects_the_spec_row_or_raises_for_every_pair(trigger: Trigger) -> None:
    for source, facts in itertools.product(ALL_SOURCES, ALL_FACTS):
        spec = _expected_for(trigger.value, source, facts)
        if spec is None:
            with pytest.raises(InvalidTransitionError) as info:
                transition(trigger, source, facts)
            assert repr(source) in str(info.value), str(info.value)
        else:
            row = transition(trigger, source, facts)
            assert (row.target, row.events, row.attempt) == (
                spec.target,
                spec.events,
                spec.attempt,
            ), (trigger, source, facts)
            assert source in row.sources


@pytest.mark.parametrize("trigger", list(Trigger), ids=lambda t: t.value)
def test_pairs_outside_the_table_raise_naming_the_status(trigger: Trigger) -> None:
    allowed = {s for e in EXPECTED if e.trigger == trigger.value for s in e.sources}
    assert triggers_from(trigger) == allowed
    for source in set(ALL_SOURCES) - allowed:
        with pytest.raises(InvalidTransitionError) as info:
            transition(trigger, source)
        message = str(info.value)
        assert repr(source) in message
        # the message also says where the trigger is allowed from
        for status in allowed:
            assert status in message


@pytest.mark.parametrize(
    ("trigger", "source"),
    [
        ("claim", COMPLETED),
        ("claim", RUNNING),
        ("claim", SUSPENDED),
        ("claim", PAUSED),
        ("claim", PERMANENTLY_FAILED),
        ("succeed", PENDING),
        ("fail", FAILED),
        ("time_out", SUSPENDED),
        ("spawn", PENDING),
        ("suspend", SUSPENDED),
        ("resume", PENDING),
        ("resume", RUNNING),
        ("resume", COMPLETED),
        ("retry", COMPLETED),
        ("retry", FAILED),
        ("cancel", COMPLETED),
        ("cancel", PERMANENTLY_FAILED),
        ("pause", SUSPENDED),
        ("pause", PAUSED),
        ("pause", COMPLETED),
        ("recover", PENDING),
        ("recover", SUSPENDED),
        ("create", PENDING),
    ],
)
def test_notable_forbidden_calls(trigger: str, source: str) -> None:
    with pytest.raises(InvalidTransitionError, match=source):
        transition(Trigger(trigger), source)


def test_terminal_completed_allows_nothing() -> None:
    for trigger in Trigger:
        for facts in ALL_FACTS:
            with pytest.raises(InvalidTransitionError, match="'completed'"):
                transition(trigger, COMPLETED, facts)


class TestGuards:
    def test_failure_with_attempts_left_schedules_a_retry_for_one_off_and_cron(self) -> None:
        for is_cron in (False, True):
            facts = Facts(is_cron=is_cron, attempts_left=True)
            assert transition(Trigger.FAIL, RUNNING, facts).target == FAILED
            assert transition(Trigger.TIME_OUT, RUNNING, facts).target == TIMEOUT

    def test_last_attempt_of_a_one_off_task_fails_permanently(self) -> None:
        facts = Facts(is_cron=False, attempts_left=False)
        fail = transition(Trigger.FAIL, RUNNING, facts)
        assert fail.target == PERMANENTLY_FAILED
        assert fail.events == ("task_failed", "task_permanently_failed")
        timed_out = transition(Trigger.TIME_OUT, RUNNING, facts)
        assert timed_out.target == PERMANENTLY_FAILED
        assert timed_out.events == ("task_timed_out", "task_permanently_failed")

    def test_last_attempt_of_a_cron_task_pauses_it(self) -> None:
        facts = Facts(is_cron=True, attempts_left=False)
        assert transition(Trigger.FAIL, RUNNING, facts).events == ("task_failed", "task_paused")
        assert transition(Trigger.TIME_OUT, RUNNING, facts).target == PAUSED

    def test_a_failure_not_to_retry_ends_at_once_whatever_attempts_are_left(self) -> None:
        for left in (False, True):
            one_off = transition(Trigger.FAIL, RUNNING, Facts(attempts_left=left, no_retry=True))
            assert one_off.guard == "no_retry_one_off"
            assert one_off.target == PERMANENTLY_FAILED
            assert one_off.events == ("task_failed", "task_permanently_failed")
            cron = transition(
                Trigger.FAIL, RUNNING, Facts(is_cron=True, attempts_left=left, no_retry=True)
            )
            assert cron.guard == "no_retry_cron"
            assert (cron.target, cron.events) == (PAUSED, ("task_failed", "task_paused"))

    def test_a_timeout_is_never_no_retry(self) -> None:
        with pytest.raises(InvalidTransitionError, match="'running'"):
            transition(Trigger.TIME_OUT, RUNNING, Facts(attempts_left=True, no_retry=True))

    def test_success_of_one_off_completes_and_of_cron_reschedules(self) -> None:
        assert transition(Trigger.SUCCEED, RUNNING, Facts(is_cron=False)).target == COMPLETED
        assert transition(Trigger.SUCCEED, RUNNING, Facts(is_cron=True)).target == PENDING

    def test_awaiting_children_only_resumes_by_children_done(self) -> None:
        waiting = Facts(awaiting_children=True)
        assert transition(Trigger.CHILDREN_DONE, SUSPENDED, waiting).target == PENDING
        with pytest.raises(InvalidTransitionError, match="'suspended'"):
            transition(Trigger.RESUME, SUSPENDED, waiting)

    def test_explicit_suspension_only_resumes_by_hand(self) -> None:
        explicit = Facts(awaiting_children=False)
        assert transition(Trigger.RESUME, SUSPENDED, explicit).target == PENDING
        with pytest.raises(InvalidTransitionError, match="'suspended'"):
            transition(Trigger.CHILDREN_DONE, SUSPENDED, explicit)

    def test_resume_of_paused_ignores_the_children_fact(self) -> None:
        for facts in ALL_FACTS:
            assert transition(Trigger.RESUME, PAUSED, facts).target == PENDING

    def test_claim_from_pending_starts_and_from_a_failed_round_retries(self) -> None:
        assert transition(Trigger.CLAIM, PENDING).events[-1] == "task_started"
        retried = Facts(after_failure=True)
        assert transition(Trigger.CLAIM, PENDING, retried).events[-1] == "task_retry_started"
        assert transition(Trigger.CLAIM, FAILED).events[-1] == "task_retry_started"
        assert transition(Trigger.CLAIM, TIMEOUT).events[-1] == "task_retry_started"

    def test_guarded_refusal_names_the_status_and_the_condition(self) -> None:
        with pytest.raises(InvalidTransitionError) as info:
            transition(Trigger.RESUME, SUSPENDED, Facts(awaiting_children=True))
        message = str(info.value)
        assert "'suspended'" in message
        assert "children" in message


def test_default_facts_are_a_one_off_task_without_attempts_left_or_children() -> None:
    facts = Facts()
    assert (facts.is_cron, facts.attempts_left, facts.awaiting_children) == (False, False, False)
    assert transition(Trigger.FAIL, RUNNING).target == PERMANENTLY_FAILED
