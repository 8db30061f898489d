"""Typed payloads (issue 11, part 7) on every backend: ``payload_type`` validates and
serialises at submit (PayloadError naming the field, nothing written) and the handler gets the
typed object."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
import pytest

from support.wait import wait_for_status
from tideflow.errors import PayloadError


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1


@dataclasses.dataclass
class Order:
    id: int
    items: list[Item]


class Invoice(pydantic.BaseModel):
    number: int
    lines: list[str]


def test_a_dataclass_payload_reaches_the_handler_typed(make_manager: Any) -> None:
    tm = make_manager()
    seen: list[Any] = []

    @tm.task("ship", payload_type=Order)
    def ship(task: Any) -> int:
        seen.append(task.payload)
        return sum(item.qty for item in task.payload.items)

    from_instance = ship.submit(Order(1, [Item("a", 2), Item("b")]))
    from_dict = tm.submit("ship", {"id": 2, "items": [{"sku": "c", "qty": 5}]})
    stored = tm.get_task(from_dict)
    assert stored.payload == {"id": 2, "items": [{"sku": "c", "qty": 5}]}  # stored as JSON
    tm.start()

    assert wait_for_status(tm, from_instance, "completed").result == 3
    assert wait_for_status(tm, from_dict, "completed").result == 5
    assert sorted(seen, key=lambda o: o.id) == [
        Order(1, [Item("a", 2), Item("b", 1)]),
        Order(2, [Item("c", 5)]),
    ]
    assert all(isinstance(o.items[0], Item) for o in seen)


def test_a_pydantic_payload_reaches_an_async_handler_typed(make_manager: Any) -> None:
    tm = make_manager()
    seen: list[Any] = []

    async def bill(task: Any) -> str:
        seen.append(task.payload)
        return f"#{task.payload.number}: {len(task.payload.lines)} lines"

    tm.use("bill", bill, payload_type=Invoice)
    task_id = tm.submit("bill", Invoice(number=9, lines=["x", "y"]))
    tm.start()

    assert wait_for_status(tm, task_id, "completed").result == "#9: 2 lines"
    assert seen == [Invoice(number=9, lines=["x", "y"])]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"id": "one", "items": []}, "id"),
        ({"id": 1, "items": [{"sku": "a", "qty": "x"}]}, "items[0].qty"),
        ({"items": []}, "id"),
        ("not an order", None),
    ],
)
def test_bad_payloads_are_refused_and_nothing_is_written(
    make_manager: Any, payload: Any, field: str | None
) -> None:
    tm = make_manager()
    tm.use("ship", lambda task: None, payload_type=Order)
    with pytest.raises(PayloadError, match="the payload of 'ship' does not fit Order") as info:
        tm.submit("ship", payload)
    if field is not None:
        assert f"field {field!r}" in str(info.value)
    with pytest.raises(PayloadError, match="field 'id'"):
        tm.submit_many([("ship", {"id": 1, "items": []}), ("ship", {"id": None, "items": []})])
    tm.use("bill", lambda task: None, payload_type=Invoice)
    with pytest.raises(PayloadError, match="field 'number'"):
        tm.submit("bill", {"number": "x", "lines": []})
    assert tm.get_tasks() == []


def test_a_stored_payload_that_no_longer_fits_fails_at_once(make_manager: Any) -> None:
    tm = make_manager()
    tm.use("ship", lambda task: None)  # no type yet: anything goes in
    task_id = tm.submit("ship", {"id": 1, "items": "none"}, max_retries=3)
    calls: list[Any] = []
    tm.use("ship", lambda task: calls.append(task), payload_type=Order)
    tm.start()

    info = wait_for_status(tm, task_id, "permanently_failed")
    assert calls == []  # the handler never ran
    assert info.attempt == 1
    assert "does not fit Order" in info.error
    assert "field 'items': expected a list" in info.error
    (event,) = tm.query_task_events(task_id, event_type="task_permanently_failed").items
    assert event.metadata["reason"] == "no_retry"
