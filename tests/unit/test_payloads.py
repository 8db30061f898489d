"""Typed payloads (issue 11, part 7): tideflow.core.payloads with dataclasses and pydantic v2
models; no database."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

import pydantic
import pytest

from tideflow.core import payloads
from tideflow.errors import InvalidOptionError, PayloadError

WHAT = "the payload of 'ship'"


class Speed(enum.Enum):
    SLOW = "slow"
    FAST = "fast"


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1


@dataclasses.dataclass
class Order:
    id: int
    items: list[Item]
    speed: Speed = Speed.SLOW
    note: str | None = None
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    kind: Literal["retail", "wholesale"] = "retail"


class Invoice(pydantic.BaseModel):
    number: int
    lines: list[str]
    total: float = 0.0


def test_a_dataclass_instance_dumps_to_json_ready_data() -> None:
    order = Order(7, [Item("a", 2)], Speed.FAST, weights={"a": 1})
    assert payloads.dump(Order, order, WHAT) == {
        "id": 7,
        "items": [{"sku": "a", "qty": 2}],
        "speed": "fast",
        "note": None,
        "weights": {"a": 1.0},
        "kind": "retail",
    }


def test_a_dict_of_fields_is_validated_and_defaults_filled() -> None:
    data = payloads.dump(Order, {"id": 1, "items": [{"sku": "b"}]}, WHAT)
    assert data["items"] == [{"sku": "b", "qty": 1}]
    assert data["speed"] == "slow"


def test_load_gives_back_the_typed_object() -> None:
    order = Order(7, [Item("a", 2)], Speed.FAST, note="gift")
    loaded = payloads.load(Order, payloads.dump(Order, order, WHAT), WHAT)
    assert loaded == order
    assert isinstance(loaded.items[0], Item)
    assert loaded.speed is Speed.FAST


@pytest.mark.parametrize(
    ("value", "field", "problem"),
    [
        ({"items": []}, "id", "field required"),
        ({"id": "7", "items": []}, "id", "expected an integer"),
        ({"id": True, "items": []}, "id", "expected an integer"),
        ({"id": 1, "items": [{"sku": "a", "qty": "two"}]}, "items[0].qty", "expected an integer"),
        ({"id": 1, "items": [{"qty": 1}]}, "items[0].sku", "field required"),
        ({"id": 1, "items": "abc"}, "items", "expected a list"),
        ({"id": 1, "items": [], "speed": "warp"}, "speed", "'slow', 'fast'"),
        ({"id": 1, "items": [], "colour": "red"}, "colour", "unknown field"),
        ({"id": 1, "items": [], "kind": "gift"}, "kind", "expected one of"),
        ({"id": 1, "items": [], "weights": {"a": "x"}}, "weights.a", "expected a number"),
        ({"id": 1, "items": [], "note": 5}, "note", "expected str"),
    ],
)
def test_bad_fields_are_named(value: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(PayloadError) as info:
        payloads.dump(Order, value, WHAT)
    message = str(info.value)
    assert message.startswith(f"{WHAT} does not fit Order")
    assert f"field {field!r}" in message
    assert problem in message
    assert "pass an Order(...) or a dict of its fields" in message


def test_an_instance_with_wrong_field_types_is_refused_too() -> None:
    with pytest.raises(PayloadError, match="field 'id': expected an integer"):
        payloads.dump(Order, Order("seven", []), WHAT)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 7, "text", [1, 2], Item("a")])
def test_a_value_that_is_neither_instance_nor_dict_is_refused(value: Any) -> None:
    with pytest.raises(PayloadError, match="expected an object with the fields of Order"):
        payloads.dump(Order, value, WHAT)


def test_pydantic_models_dump_validate_and_load() -> None:
    invoice = Invoice(number=3, lines=["x"])
    data = payloads.dump(Invoice, invoice, WHAT)
    assert data == {"number": 3, "lines": ["x"], "total": 0.0}
    assert payloads.dump(Invoice, {"number": "4", "lines": []}, WHAT)["number"] == 4  # lax mode
    assert payloads.load(Invoice, data, WHAT) == invoice


def test_pydantic_errors_name_the_field() -> None:
    with pytest.raises(PayloadError) as info:
        payloads.dump(Invoice, {"number": "x", "lines": [1]}, WHAT)
    message = str(info.value)
    assert "does not fit Invoice" in message
    assert "field 'number'" in message
    assert "field 'lines[0]'" in message
    with pytest.raises(
        PayloadError, match=r"got \['not', 'a', 'dict'\]; pass an Invoice\(\.\.\.\)"
    ):
        payloads.dump(Invoice, ["not", "a", "dict"], WHAT)


def test_a_pydantic_model_inside_a_dataclass() -> None:
    @dataclasses.dataclass
    class Batch:
        invoices: list[Invoice]

    data = payloads.dump(Batch, {"invoices": [{"number": 1, "lines": []}]}, WHAT)
    assert data == {"invoices": [{"number": 1, "lines": [], "total": 0.0}]}
    loaded = payloads.load(Batch, data, WHAT)
    assert isinstance(loaded.invoices[0], Invoice)
    with pytest.raises(
        PayloadError, match=r"field 'invoices\[0\]\.number': Input should be a valid integer"
    ):
        payloads.dump(Batch, {"invoices": [{"number": "x", "lines": []}]}, WHAT)


@pytest.mark.parametrize("value", [dict, Order(1, []), "Order", Invoice(number=1, lines=[]), 3])
def test_check_type_takes_only_model_or_dataclass_classes(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="pydantic v2 BaseModel subclass or a dataclass"):
        payloads.check_type("payload_type", value)


def test_check_type_accepts_both_kinds() -> None:
    assert payloads.check_type("payload_type", Order) is Order
    assert payloads.check_type("payload_type", Invoice) is Invoice


def test_unresolvable_hints_fail_at_registration() -> None:
    @dataclasses.dataclass
    class Local:
        x: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(InvalidOptionError, match="cannot be resolved"):
        payloads.check_type("payload_type", Local)
