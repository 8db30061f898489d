"""Child specs of next() and the JSON codec (tideflow.core.workflow / core.codec, SPEC §6, §13)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from tideflow.core import codec
from tideflow.core.options import TaskPolicy
from tideflow.core.registry import Registration, make_registration
from tideflow.core.types import NewTask, TaskRow
from tideflow.core.workflow import CHILD_KEYS, child_results, plan_children
from tideflow.errors import InvalidOptionError, PayloadError

NOW = 1_700_000_000.0
LIMIT = 1024 * 1024

MANAGER = TaskPolicy(
    priority=0,
    timeout=60.0,
    max_retries=3,
    retry_interval=0.0,
    retry_backoff="fixed",
    max_retry_interval=3600.0,
    retry_jitter=True,
)

PARENT = TaskRow(
    id=10,
    name="parent",
    type="async",
    status="running",
    priority=7,
    payload="{}",
    result=None,
    error=None,
    tag="parent-tag",
    stage=2,
    context=b"parent-context",
    created_at=NOW - 60,
    next_run_time=NOW - 30,
    start_time=NOW - 5,
    last_active_time=NOW - 5,
    last_event_type="task_started",
    last_event_time=NOW - 5,
    heartbeat_at=NOW - 1,
    timeout=77.0,
    max_retries=6,
    retry_count=0,
    retry_interval=12.0,
    retry_backoff="exponential",
    max_retry_interval=500.0,
    retry_jitter=False,
    cron_expr=None,
    tz=None,
    parent_id=3,
    root_id=1,
    parent_stage=0,
    total_children=0,
    completed_children=0,
    worker_id="w1",
    attempt=1,
    requires="gpu",
    unique_key="parent-key",
    suspend_reason=None,
    current_stage_name=None,
    progress_text=None,
    progress_percent=None,
)


def plan(
    children: Any,
    registrations: Mapping[str, Registration] | None = None,
    *,
    parent: TaskRow = PARENT,
    manager: TaskPolicy = MANAGER,
    limit: int = LIMIT,
) -> list[NewTask]:
    return plan_children(parent, children, registrations or {}, manager, NOW, limit)


def handler(task: Any) -> None:
    return None


def registered(name: str, **options: Any) -> dict[str, Registration]:
    return {name: make_registration(name, handler, options)}


# --- shapes of next(children) --------------------------------------------------------------------
class TestShapes:
    def test_one_dict_is_one_child(self) -> None:
        planned = plan({"name": "a", "payload": {"x": 1}})
        assert len(planned) == 1
        assert planned[0].values["name"] == "a"
        assert json.loads(planned[0].values["payload"]) == {"x": 1}

    def test_a_list_keeps_its_order(self) -> None:
        planned = plan([{"name": "a"}, {"name": "b"}, {"name": "a", "payload": 2}])
        assert [p.values["name"] for p in planned] == ["a", "b", "a"]
        assert json.loads(planned[2].values["payload"]) == 2

    def test_a_tuple_is_a_list(self) -> None:
        assert len(plan(({"name": "a"}, {"name": "b"}))) == 2

    @pytest.mark.parametrize("empty", [[], ()])
    def test_an_empty_list_is_an_error(self, empty: Any) -> None:
        with pytest.raises(InvalidOptionError, match="at least one"):
            plan(empty)

    @pytest.mark.parametrize("bad", ["a", 5, None, b"x", {"a", "b"}])
    def test_neither_dict_nor_list_is_an_error(self, bad: Any) -> None:
        with pytest.raises(InvalidOptionError):
            plan(bad)

    @pytest.mark.parametrize("item", ["a", 1, None, ["name", "a"]])
    def test_a_non_dict_item_is_an_error(self, item: Any) -> None:
        with pytest.raises(InvalidOptionError, match="dict"):
            plan([{"name": "ok"}, item])

    def test_a_spec_without_name_is_an_error_naming_its_index(self) -> None:
        with pytest.raises(InvalidOptionError) as info:
            plan([{"name": "ok"}, {"payload": 1}])
        assert "#1" in str(info.value)
        assert "name" in str(info.value)

    @pytest.mark.parametrize("name", ["", "  ", 5, None, " x"])
    def test_a_bad_name_is_an_invalid_option(self, name: Any) -> None:
        with pytest.raises(InvalidOptionError):
            plan({"name": name})

    @pytest.mark.parametrize(
        "key", ["context", "run_at", "unique_key", "cron", "parameters", "max_retry_interval"]
    )
    def test_unknown_keys_are_an_error_listing_the_allowed_ones(self, key: str) -> None:
        with pytest.raises(InvalidOptionError) as info:
            plan({"name": "a", key: 1})
        message = str(info.value)
        assert key in message
        for allowed in ("name", "payload", "delay", "priority", "tag", "requires"):
            assert allowed in message

    def test_the_allowed_keys_are_those_of_the_spec(self) -> None:
        assert set(CHILD_KEYS) == {
            "name",
            "payload",
            "priority",
            "timeout",
            "max_retries",
            "retry_interval",
            "retry_backoff",
            "tag",
            "requires",
            "delay",
        }

    @pytest.mark.parametrize(
        "spec",
        [
            {"name": "a", "priority": 21},
            {"name": "a", "priority": True},
            {"name": "a", "timeout": 0},
            {"name": "a", "max_retries": -1},
            {"name": "a", "retry_interval": -1},
            {"name": "a", "retry_backoff": "linear"},
            {"name": "a", "tag": ""},
            {"name": "a", "requires": [""]},
            {"name": "a", "delay": -1},
        ],
    )
    def test_bad_option_values_are_errors(self, spec: dict[str, Any]) -> None:
        with pytest.raises(InvalidOptionError):
            plan(spec)

    def test_names_need_not_be_registered_here(self) -> None:
        planned = plan({"name": "served-elsewhere"}, {})
        assert planned[0].values["name"] == "served-elsewhere"


# --- what the children look like -----------------------------------------------------------------
class TestChildRows:
    def test_children_are_pending_one_off_tasks_in_the_parent_workflow(self) -> None:
        (kid,) = plan({"name": "a"})
        v = kid.values
        assert v["status"] == "pending"
        assert v["type"] == "async"
        assert v["cron_expr"] is None
        assert v["parent_id"] == PARENT.id
        assert v["root_id"] == PARENT.root_id
        assert v["parent_stage"] == PARENT.stage
        assert v["stage"] == 0
        assert v["retry_count"] == 0
        assert v["attempt"] == 0
        assert v["context"] is None  # context never propagates to children
        assert v["unique_key"] is None
        assert v["next_run_time"] == NOW
        assert v["created_at"] == NOW
        assert [e.event_type for e in kid.events] == ["task_created"]

    def test_a_missing_payload_is_null(self) -> None:
        (kid,) = plan({"name": "a"})
        assert codec.decode(kid.values["payload"]) is None

    @pytest.mark.parametrize(
        ("delay", "expected"), [(0, NOW), (5, NOW + 5), (timedelta(minutes=1), NOW + 60)]
    )
    def test_delay_schedules_the_child(self, delay: Any, expected: float) -> None:
        (kid,) = plan({"name": "a", "delay": delay})
        assert kid.values["next_run_time"] == expected

    def test_a_root_parent_passes_its_own_id_as_root(self) -> None:
        root = PARENT._replace(id=5, root_id=5, parent_id=None, stage=0)
        (kid,) = plan({"name": "a"}, parent=root)
        assert (kid.values["parent_id"], kid.values["root_id"], kid.values["parent_stage"]) == (
            5,
            5,
            0,
        )


# --- option resolution for children --------------------------------------------------------------
def policy_of(kid: NewTask) -> tuple[Any, ...]:
    v = kid.values
    return (
        v["priority"],
        v["timeout"],
        v["max_retries"],
        v["retry_interval"],
        v["retry_backoff"],
    )


class TestResolution:
    def test_parent_values_fill_in_for_an_unregistered_type(self) -> None:
        (kid,) = plan({"name": "a"})
        assert policy_of(kid) == (7, 77.0, 6, 12.0, "exponential")

    def test_only_the_parents_five_values_are_inherited(self) -> None:
        (kid,) = plan({"name": "a"})
        # the parent's max_retry_interval=500 and retry_jitter=False are not inherited
        assert kid.values["max_retry_interval"] == MANAGER.max_retry_interval
        assert kid.values["retry_jitter"] is MANAGER.retry_jitter

    def test_tag_requires_and_delay_are_not_inherited(self) -> None:
        (kid,) = plan({"name": "a"})
        assert kid.values["tag"] is None
        assert kid.values["requires"] is None
        assert kid.values["next_run_time"] == NOW

    def test_child_type_registration_beats_the_parent(self) -> None:
        regs = registered("a", timeout=5, max_retries=1, tag="reg-tag", requires=["ssd"])
        (kid,) = plan({"name": "a"}, regs)
        assert policy_of(kid) == (7, 5.0, 1, 12.0, "exponential")
        assert kid.values["tag"] == "reg-tag"
        assert kid.values["requires"] == "ssd"

    def test_registration_of_another_name_does_not_apply(self) -> None:
        (kid,) = plan({"name": "a"}, registered("b", timeout=5))
        assert kid.values["timeout"] == 77.0

    def test_the_spec_beats_registration_and_parent(self) -> None:
        regs = registered("a", timeout=5, priority=3, tag="reg-tag", requires=["ssd"])
        (kid,) = plan(
            {
                "name": "a",
                "timeout": 9,
                "priority": -2,
                "max_retries": 0,
                "retry_interval": 1,
                "retry_backoff": "fixed",
                "tag": "spec-tag",
                "requires": ["gpu", "cpu"],
            },
            regs,
        )
        assert policy_of(kid) == (-2, 9.0, 0, 1.0, "fixed")
        assert kid.values["tag"] == "spec-tag"
        assert set(kid.values["requires"].split(",")) == {"gpu", "cpu"}

    def test_registration_backoff_cap_and_jitter_apply_to_children(self) -> None:
        regs = registered("a", max_retry_interval=9, retry_jitter=False)
        (kid,) = plan({"name": "a"}, regs, manager=dataclasses.replace(MANAGER, retry_jitter=True))
        assert kid.values["max_retry_interval"] == 9.0
        assert kid.values["retry_jitter"] is False

    def test_manager_is_the_last_resort_per_value(self) -> None:
        """With a parent row, the five always come from the parent; others from the manager."""
        manager = TaskPolicy(priority=-5, timeout=1.0, max_retries=9, max_retry_interval=7.0)
        (kid,) = plan({"name": "a"}, manager=manager)
        assert policy_of(kid) == (7, 77.0, 6, 12.0, "exponential")
        assert kid.values["max_retry_interval"] == 7.0

    def test_each_child_resolves_on_its_own(self) -> None:
        regs = registered("a", timeout=5)
        a, b, c = plan([{"name": "a"}, {"name": "b"}, {"name": "a", "timeout": 2}], regs)
        assert (a.values["timeout"], b.values["timeout"], c.values["timeout"]) == (5.0, 77.0, 2.0)


# --- payloads ------------------------------------------------------------------------------------
class TestPayloads:
    @pytest.mark.parametrize(
        "payload", [{"k": [1, 2.5, None, True, "é"]}, [1, 2], "text", 3, None, {}]
    )
    def test_json_payloads_round_trip(self, payload: Any) -> None:
        (kid,) = plan({"name": "a", "payload": payload})
        assert codec.decode(kid.values["payload"]) == payload

    @pytest.mark.parametrize(
        "payload", [{1, 2}, float("nan"), float("inf"), object(), b"bytes", {"k": {1}}]
    )
    def test_non_json_payload_is_a_payload_error(self, payload: Any) -> None:
        with pytest.raises(PayloadError, match="JSON"):
            plan({"name": "a", "payload": payload})

    def test_oversize_payload_is_a_payload_error(self) -> None:
        with pytest.raises(PayloadError, match="max_payload_bytes"):
            plan({"name": "a", "payload": "x" * 100}, limit=50)

    def test_one_bad_child_plans_nothing(self) -> None:
        with pytest.raises(PayloadError):
            plan([{"name": "a", "payload": 1}, {"name": "b", "payload": {1}}])


# --- child_results -------------------------------------------------------------------------------
def test_child_results_report_every_child_in_order_with_the_same_keys() -> None:
    done = PARENT._replace(id=21, name="a", status="completed", result='{"v":1}', error=None)
    failed = PARENT._replace(
        id=22, name="b", status="permanently_failed", result=None, error="E: broke"
    )
    cancelled = PARENT._replace(
        id=23, name="c", status="permanently_failed", result=None, error="cancelled"
    )
    out = child_results([done, failed, cancelled])
    assert out == [
        {"task_id": 21, "name": "a", "status": "completed", "result": {"v": 1}, "error": None},
        {
            "task_id": 22,
            "name": "b",
            "status": "permanently_failed",
            "result": None,
            "error": "E: broke",
        },
        {
            "task_id": 23,
            "name": "c",
            "status": "permanently_failed",
            "result": None,
            "error": "cancelled",
        },
    ]
    assert all(set(item) == {"task_id", "name", "status", "result", "error"} for item in out)


def test_child_results_of_no_children() -> None:
    assert child_results([]) == []


# --- codec ---------------------------------------------------------------------------------------
class TestCodec:
    def test_encode_is_compact_json(self) -> None:
        assert codec.encode({"a": [1, 2]}, "payload", LIMIT) == '{"a":[1,2]}'
        assert codec.encode(None, "payload", LIMIT) == "null"

    def test_decode_inverts_encode_and_keeps_none(self) -> None:
        value = {"s": "é€", "n": [1, 2.5, None, False]}
        assert codec.decode(codec.encode(value, "payload", LIMIT)) == value
        assert codec.decode(None) is None

    @pytest.mark.parametrize(
        "value",
        [
            {1, 2},
            frozenset({1}),
            float("nan"),
            float("-inf"),
            object(),
            b"raw",
            {"nested": [1, {"deep": {3}}]},
            {(1, 2): "tuple key"},
        ],
    )
    def test_encode_rejects_what_json_cannot_hold(self, value: Any) -> None:
        with pytest.raises(PayloadError) as info:
            codec.encode(value, "the payload of 'job'", LIMIT)
        assert "the payload of 'job'" in str(info.value)
        assert "JSON" in str(info.value)

    def test_size_limit_is_inclusive_and_counts_utf8_bytes(self) -> None:
        text = codec.encode("x" * 8, "payload", 10)  # '"xxxxxxxx"' is 10 bytes
        assert len(text) == 10
        with pytest.raises(PayloadError) as info:
            codec.encode("x" * 9, "payload", 10)
        assert "11" in str(info.value)
        assert "max_payload_bytes=10" in str(info.value)
        # "é" is 1 character but 2 bytes in UTF-8: 2 + 2*5 = 12 bytes
        with pytest.raises(PayloadError):
            codec.encode("é" * 5, "payload", 11)
        assert codec.encode("é" * 5, "payload", 12) == '"ééééé"'

    def test_payload_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="payload"):
            codec.encode({1}, "payload", LIMIT)
