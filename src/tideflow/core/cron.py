"""Cron expressions and time zones: validation and the next tick, on top of ``croniter``.

Expressions have 5 fields (``minute hour day-of-month month day-of-week``) or 6 with the
seconds FIRST (``second minute hour day-of-month month day-of-week``). Day-of-month and
day-of-week follow cron's rule: when both are restricted, a day matching either one fires;
with ``nL`` or ``n#k`` in day-of-week, day-of-month must be ``*`` or ``?``. An expression that
can never fire (``0 0 30 2 *``) is rejected.

Canonical form (what :func:`validate_cron` returns and :func:`next_tick` reads): always 6
fields, seconds first (a 5-field expression gains a leading ``0``), single spaces, upper case,
e.g. ``"*/5 * * * *"`` -> ``"0 */5 * * * *"`` and ``"0 12 * * fri#2"`` -> ``"0 0 12 * * FRI#2"``.
Translating to croniter's own spelling (seconds last, ``5L`` -> ``L5``) is internal.

Daylight-saving time, with the expression read as wall time in the task's zone:

- Fixed hours (the hour field is not ``*``) fire once per wall-clock time. In a fall-back
  overlap only the first pass fires (a daily 01:30 runs once); a time that a spring-forward gap
  skips fires once, moved forward by whole minutes to the first wall time that exists (02:30 in
  a 02:00->03:00 gap fires at 03:00).
- A ``*`` hour field follows elapsed time: the repeated hour fires in both passes and times in
  a gap are skipped (the next existing match fires as usual).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from tideflow.core.options import latest_time
from tideflow.errors import InvalidCronError, InvalidOptionError

__all__ = ["next_tick", "validate_cron", "validate_tz"]

_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L (last day) or nW (nearest weekday)",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT (0 and 7 are Sunday), nL (last one in the month) "
    "or n#k (k-th one in the month, k 1-5)",
}
_SYNTAX = (
    "expected 5 fields 'minute hour day-of-month month day-of-week' or 6 fields with the "
    "seconds first 'second minute hour day-of-month month day-of-week'; a field is *, a value, "
    "a range a-b, a step */n or a-b/n, or a comma list of those"
)
_CROSS_CHECK_FROM = datetime(2000, 1, 1)  # naive: croniter then reads wall-clock time

_FIELD_CHARS = re.compile(r"[0-9A-Z*?/#,-]+", re.ASCII)
_HASHED = re.compile(r"[HR](/\d+)?", re.ASCII)  # croniter's hashed/random values
_DOW_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_DOW_LAST = re.compile(r"([0-7]|SUN|MON|TUE|WED|THU|FRI|SAT)L", re.ASCII)
_CRONITER_DOW_LAST = re.compile(r"L([0-7])", re.ASCII)
_LOCALTIME = "/etc/localtime"
_TIMEZONE_FILE = "/etc/timezone"


@dataclass(frozen=True, slots=True)
class _Schedule:
    canonical: str
    croniter_expr: str  # croniter's order and spelling: min hour dom mon dow sec
    fixed_hours: bool


def validate_cron(expr: str) -> str:
    """Check ``expr`` and return its canonical 6-field, seconds-first form."""
    if not isinstance(expr, str):
        raise InvalidCronError(
            f"cron expression must be a string, got {type(expr).__name__} {expr!r}; {_SYNTAX}"
        )
    return _parse(expr).canonical


def validate_tz(tz: str | None) -> str:
    """Return the IANA zone name ``tz``, or this process's local zone when ``tz`` is None."""
    if tz is None:
        return _local_zone_name()
    if not isinstance(tz, str) or not _loadable(tz):
        raise InvalidCronError(
            f'tz must be an IANA time zone name like "Europe/Paris" or "UTC", got {tz!r}'
        )
    return tz


def next_tick(expr: str, tz: str, after: float) -> float:
    """Return the POSIX time of ``expr``'s first tick in zone ``tz`` strictly after ``after``."""
    schedule = _parse(expr)
    zone = _zone(tz)
    latest = latest_time()
    if not math.isfinite(after) or after > latest:
        raise InvalidOptionError(
            f"after must be a finite POSIX timestamp at most 100 years from now ({latest:.0f}),"
            f" got {after!r}"
        )
    tick = _next_tick(schedule, zone, expr, after)
    if tick > latest:
        raise InvalidCronError(
            f"cron expression {expr!r}: its next tick after {after!r} ({tick:.0f}) lies beyond"
            f" the scheduling bound of 100 years from now ({latest:.0f})"
        )
    return tick


def _next_tick(schedule: _Schedule, zone: ZoneInfo, expr: str, after: float) -> float:
    start: float = after
    try:
        while True:
            it = croniter(schedule.croniter_expr, datetime.fromtimestamp(start, zone))
            tick: float = it.get_next(float)
            if not schedule.fixed_hours:
                return tick
            local = datetime.fromtimestamp(tick, zone)
            if not _is_second_pass(local):
                return tick
            # croniter fires fixed times again in a fall-back overlap; resume after the overlap.
            start = _overlap_end(local, zone) - 1
    except CroniterBadDateError:
        raise InvalidCronError(
            f"cron expression {expr!r} has no tick after {after!r} within 50 years"
        ) from None


@lru_cache(maxsize=1024)
def _parse(expr: str) -> _Schedule:
    fields = expr.upper().split()
    if not fields:
        raise InvalidCronError(f"cron expression {expr!r} is empty; {_SYNTAX}")
    if len(fields) not in (5, 6):
        raise InvalidCronError(f"cron expression {expr!r} has {len(fields)} field(s); {_SYNTAX}")
    if len(fields) == 5:
        fields.insert(0, "0")
    for name, field in zip(_FIELDS, fields, strict=True):
        if not _FIELD_CHARS.fullmatch(field) or any(
            _HASHED.fullmatch(item) for item in field.split(",")
        ):
            raise _field_error(expr, name, field)
    fields[5] = ",".join(
        _CRONITER_DOW_LAST.sub(r"\1L", item) if _CRONITER_DOW_LAST.fullmatch(item) else item
        for item in fields[5].split(",")
    )
    if fields[3] not in ("*", "?") and any(
        "#" in i or i.endswith("L") for i in fields[5].split(",")
    ):
        raise InvalidCronError(
            f"cron expression {expr!r}: day-of-month must be * or ? when day-of-week uses "
            "nL or n#k (croniter would not OR the two fields)"
        )
    croniter_expr = _to_croniter(fields)
    try:
        expanded, _ = croniter.expand(croniter_expr, strict=True)
        croniter(croniter_expr, _CROSS_CHECK_FROM).get_next(float)
    except CroniterBadDateError:
        raise InvalidCronError(
            f"cron expression {expr!r} never fires: its day, month and weekday fields "
            "never coincide"
        ) from None
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise _diagnose(expr, fields, exc) from None
    return _Schedule(" ".join(fields), croniter_expr, expanded[1] != ["*"])


def _to_croniter(fields: list[str]) -> str:
    second, minute, hour, dom, month, dow = fields
    dow = ",".join(_translate_dow_last(item) for item in dow.split(","))
    return " ".join((minute, hour, dom, month, dow, second)).lower()


def _translate_dow_last(item: str) -> str:
    match = _DOW_LAST.fullmatch(item)
    if match is None:
        return item
    day = match.group(1)
    return f"L{_DOW_NAMES.index(day) if day in _DOW_NAMES else day}"


def _diagnose(expr: str, fields: list[str], exc: Exception) -> InvalidCronError:
    """Name the first field that is invalid on its own, else report croniter's reason."""
    for index, name in enumerate(_FIELDS):
        probe = ["*"] * 6
        probe[index] = fields[index]
        try:
            croniter.expand(_to_croniter(probe))
        except (CroniterError, ValueError, TypeError, KeyError, IndexError):
            return _field_error(expr, name, fields[index])
    reason = re.sub(r"^\[[^\]]*\]\s*(is not acceptable\W*)?", "", str(exc)).strip(" .")
    return InvalidCronError(f"cron expression {expr!r} is not valid ({reason}); {_SYNTAX}")


def _field_error(expr: str, name: str, field: str) -> InvalidCronError:
    return InvalidCronError(
        f"cron expression {expr!r}: {name} field {field!r} is not valid; it takes "
        f"{_ALLOWED[name]}, as *, a value, a range a-b, a step */n or a-b/n, or a comma list"
    )


def _is_second_pass(local: datetime) -> bool:
    """True for the second occurrence of a wall time repeated by a fall-back transition."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _overlap_end(local: datetime, zone: ZoneInfo) -> int:
    """Return the first POSIX second after the repeated span that ``local`` lies in."""
    hi = math.ceil(local.timestamp())
    shift = hi - math.ceil(local.replace(fold=0).timestamp())
    # The transition lies in (lo, hi]: lo is the same wall time's first pass.
    lo, after_offset = hi - shift, local.utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi + shift


@lru_cache(maxsize=256)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(validate_tz(tz))


def _loadable(name: str) -> bool:
    if not name or name == "localtime":  # "localtime" is this machine's zone, not a name
        return False
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def _local_zone_name() -> str:
    """Best effort: TZ, then the /etc/localtime link, then /etc/timezone, else "UTC"."""
    candidates = []
    env = os.environ.get("TZ", "").removeprefix(":")
    if env:
        candidates.append(env.split("/zoneinfo/", 1)[-1])
    try:
        target = os.path.realpath(_LOCALTIME)
    except OSError:
        target = ""
    if "/zoneinfo/" in target:
        candidates.append(target.split("/zoneinfo/", 1)[1].removeprefix("posix/"))
    try:
        with open(_TIMEZONE_FILE, encoding="utf-8") as fh:
            candidates.append(fh.read().strip())
    except OSError:
        pass
    return next((name for name in candidates if _loadable(name)), "UTC")
