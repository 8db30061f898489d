"""JSON encoding of payloads and results, with the size limit (no pickle anywhere)."""

from __future__ import annotations

import json
from typing import Any

from tideflow.errors import PayloadError

__all__ = ["decode", "encode"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(value: Any, what: str, limit: int) -> str:
    """Encode ``value`` as compact JSON, or raise :class:`PayloadError` (not JSON, too big)."""
    if value is None:
        return "null"
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"{what} must be JSON-serialisable (dict, list, str, int, float, bool, None): {exc}"
        ) from None
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    if size > limit:
        raise PayloadError(
            f"{what} is {size} bytes as JSON, over max_payload_bytes={limit};"
            " store large data elsewhere and pass a reference"
        )
    return text


def decode(text: str | None) -> Any:
    """Decode stored JSON (None stays None)."""
    return None if text is None or text == "null" else json.loads(text)
