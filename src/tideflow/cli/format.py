"""Plain-text output helpers: tables, times, durations and short values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

__all__ = ["duration", "one_line", "print_table", "short_json", "when"]


def when(value: datetime | None) -> str:
    """A UTC time as ``YYYY-MM-DD HH:MM:SS.mmm`` (``-`` for None)."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def duration(seconds: float | None) -> str:
    """``0.012s``, ``3.40s``, ``2m05s`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def one_line(text: str | None, width: int = 60) -> str:
    """The first line of ``text``, cut to ``width`` characters (``-`` for None or empty)."""
    if not text:
        return "-"
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def short_json(value: Any, width: int = 60) -> str:
    """Compact JSON of ``value``, cut to ``width`` characters."""
    return one_line(json.dumps(value, ensure_ascii=False, default=str), width)


def print_table(
    out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = ""
) -> None:
    """Left-aligned columns separated by two spaces; numbers are right-aligned."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], (int, float)) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        out.write(indent + "  ".join(parts).rstrip() + "\n")
