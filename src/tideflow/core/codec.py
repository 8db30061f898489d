"""JSON encoding of payloads and results, with the size and depth limits (no pickle anywhere)."""

from __future__ import annotations

import json
from typing import Any, Final

from tideflow.errors import PayloadError

__all__ = ["MAX_DEPTH", "decode", "encode"]

#: The deepest nesting of lists and dicts a payload or result may have (a top-level dict of
#: plain values is depth 1). Deeper values are refused by :func:`encode` with
#: :class:`PayloadError`: JSON that deep may not decode again (Python's parser recurses).
MAX_DEPTH: Final = 100

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_CONTAINERS = (dict, list, tuple)
#: JSON text shorter than this cannot nest deeper than MAX_DEPTH (each level costs at least
#: two characters, its brackets), so the depth walk is skipped: the hot path's small results
#: pay one length check for it. Longer text is walked only when it has more opening brackets
#: than MAX_DEPTH (a count in C; brackets inside strings only make it an over-estimate).
_WALK_FROM: Final = 2 * MAX_DEPTH


def encode(value: Any, what: str, limit: int) -> str:
    """Encode ``value`` as compact JSON, or raise :class:`PayloadError` (not JSON, too big,
    nested deeper than :data:`MAX_DEPTH`)."""
    if value is None:
        return "null"
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"{what} must be JSON-serialisable (dict, list, str, int, float, bool, None): {exc}"
        ) from None
    except RecursionError:
        raise _too_deep(what, None) from None
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    if size > limit:
        raise PayloadError(
            f"{what} is {size} bytes as JSON, over max_payload_bytes={limit};"
            " store large data elsewhere and pass a reference"
        )
    if len(text) >= _WALK_FROM and text.count("[") + text.count("{") > MAX_DEPTH:
        depth = _depth_over_limit(value)
        if depth:
            raise _too_deep(what, depth)
    return text


def _depth_over_limit(value: Any) -> int:
    """The first nesting depth past :data:`MAX_DEPTH` found in ``value``, else 0.

    Iterative (no recursion limit): one list per level, holding only that level's containers.
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            return depth
        below = []
        for node in level:
            for item in node.values() if isinstance(node, dict) else node:
                if isinstance(item, _CONTAINERS):
                    below.append(item)
        level = below
        depth += 1
    return 0


def _too_deep(what: str, depth: int | None) -> PayloadError:
    found = "deeper than Python can encode" if depth is None else f"at least {depth} levels deep"
    return PayloadError(
        f"{what} is nested {found}; at most {MAX_DEPTH} levels of lists and dicts are allowed"
    )


def decode(text: str | None) -> Any:
    """Decode stored JSON (None stays None); :class:`PayloadError` if it cannot be read."""
    if text is None or text == "null":
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise PayloadError(f"stored JSON cannot be decoded: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"nested too deep (at most {MAX_DEPTH} levels are written)"
    return str(exc) or type(exc).__name__
