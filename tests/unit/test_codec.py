"""Payload and result encoding: size and nesting-depth bounds (tideflow.core.codec, issue 10)."""

from __future__ import annotations

from typing import Any

import pytest

from tideflow.core import codec
from tideflow.core.codec import MAX_DEPTH, decode, encode
from tideflow.errors import PayloadError

LIMIT = 1024 * 1024


def nested(depth: int, leaf: Any = None, kind: str = "list") -> Any:
    """``depth`` levels of lists (or dicts) around ``leaf``; depth 0 is the leaf itself."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def test_the_bound_is_a_hundred_levels() -> None:
    assert MAX_DEPTH == 100


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_exactly_the_bound_is_accepted(kind: str) -> None:
    text = encode(nested(MAX_DEPTH, 1, kind), "payload", LIMIT)
    assert decode(text) == nested(MAX_DEPTH, 1, kind)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_one_level_past_the_bound_is_refused(kind: str) -> None:
    with pytest.raises(PayloadError, match=r"payload is nested at least 101 levels deep; at most"):
        encode(nested(MAX_DEPTH + 1, 1, kind), "payload", LIMIT)


def test_twenty_thousand_levels_are_refused_with_a_payload_error() -> None:
    # the JSON encoder itself recurses: this used to escape as a RecursionError
    with pytest.raises(PayloadError, match=f"at most {MAX_DEPTH} levels"):
        encode(nested(20_000), "the payload of 't'", LIMIT)


def test_a_deep_branch_beside_shallow_ones_is_found() -> None:
    value = {"wide": [{"a": i} for i in range(500)], "deep": [nested(MAX_DEPTH)]}
    with pytest.raises(PayloadError, match="levels deep"):
        encode(value, "result", LIMIT)


def test_tuples_count_as_levels() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH + 1):
        value = (value,)
    with pytest.raises(PayloadError, match="levels deep"):
        encode(value, "result", LIMIT)


def test_brackets_inside_strings_are_not_levels() -> None:
    value = {"text": "[" * 5000 + "{" * 5000, "items": list(range(300))}
    assert decode(encode(value, "payload", LIMIT)) == value


def test_wide_shallow_payloads_are_accepted() -> None:
    value = {"rows": [{"id": i, "tags": ["a", "b"], "meta": {"n": i}} for i in range(2000)]}
    assert decode(encode(value, "payload", LIMIT)) == value


def test_small_values_skip_the_depth_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(value: Any) -> int:
        raise AssertionError("walked")

    monkeypatch.setattr(codec, "_depth_over_limit", walk)
    encode({"to": "a@example.com", "n": [1, 2, 3]}, "payload", LIMIT)
    encode(nested(MAX_DEPTH - 1), "payload", LIMIT)  # 198 characters: cannot be too deep
    encode({"s": "x" * 10_000, "few": [[1], [2]]}, "payload", LIMIT)  # long, few brackets
    with pytest.raises(AssertionError, match="walked"):
        encode(nested(MAX_DEPTH + 1), "payload", LIMIT)


def test_size_limit_still_applies() -> None:
    with pytest.raises(PayloadError, match="over max_payload_bytes=10"):
        encode({"s": "x" * 20}, "payload", 10)


def test_scalars_and_none() -> None:
    assert encode(None, "payload", LIMIT) == "null"
    assert encode("x" * 500, "payload", LIMIT) == '"' + "x" * 500 + '"'
    assert decode(None) is None
    assert decode("null") is None


@pytest.mark.parametrize("text", ["{bad", "", "[1,", "NaN-ish", '{"a": 1} trailing'])
def test_undecodable_text_is_a_payload_error(text: str) -> None:
    with pytest.raises(PayloadError, match="stored JSON cannot be decoded"):
        decode(text)


def test_too_deep_stored_json_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="nested too deep"):
        decode("[" * 100_000 + "]" * 100_000)
