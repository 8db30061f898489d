"""Cron expressions, zones and next ticks (tideflow.core.cron)."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tideflow.core import cron
from tideflow.core.cron import next_tick, validate_cron, validate_tz
from tideflow.errors import InvalidCronError, InvalidOptionError

NY = "America/New_York"
PARIS = "Europe/Paris"


def ts(iso: str, tz: str = "UTC", fold: int = 0) -> float:
    """POSIX time of the wall time ``iso`` in ``tz``."""
    return datetime.fromisoformat(iso).replace(tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def local(t: float, tz: str = "UTC") -> str:
    """``t`` as an ISO wall time with its UTC offset in ``tz``."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


def ticks(expr: str, tz: str, start: float, count: int) -> list[str]:
    out, t = [], start
    for _ in range(count):
        t = next_tick(expr, tz, t)
        out.append(local(t, tz))
    return out


def ticks_until(expr: str, tz: str, start: float, end: float) -> list[str]:
    out, t = [], next_tick(expr, tz, start)
    while t < end:
        out.append(local(t, tz))
        t = next_tick(expr, tz, t)
    return out


# --- validate_cron ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "canonical"),
    [
        ("*/5 * * * *", "0 */5 * * * *"),
        ("*/15 * * * * *", "*/15 * * * * *"),
        ("30 0 9 * * *", "30 0 9 * * *"),
        ("  0   9 *  *\t* ", "0 0 9 * * *"),
        ("0 9 ? jan-mar mon-fri", "0 0 9 ? JAN-MAR MON-FRI"),
        ("0,30 8-18/2 1,15 * *", "0 0,30 8-18/2 1,15 * *"),
        ("0 0 l * *", "0 0 0 L * *"),
        ("0 12 * * 5l", "0 0 12 * * 5L"),
        ("0 12 * * fril", "0 0 12 * * FRIL"),
        ("0 12 * * L5", "0 0 12 * * 5L"),
        ("0 12 * * fri#2", "0 0 12 * * FRI#2"),
        ("0 12 * * 1#1,5#3", "0 0 12 * * 1#1,5#3"),
        ("0 0 15w * *", "0 0 0 15W * *"),
        ("0 0 * * 7", "0 0 0 * * 7"),
        ("0 0 29 2 *", "0 0 0 29 2 *"),
    ],
)
def test_validate_cron_returns_canonical_six_field_form(expr: str, canonical: str) -> None:
    assert validate_cron(expr) == canonical
    assert validate_cron(canonical) == canonical


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("61 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("1.5 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("60 * * * * *", "second"),
        ("0 24 * * *", "hour"),
        ("0 0 0 * *", "day-of-month"),
        ("0 0 32 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * FOO *", "month"),
        ("0 0 * * 8", "day-of-week"),
        ("0 0 * * L", "day-of-week"),
        ("0 0 * * 5#6", "day-of-week"),
        ("0 0 * * 1#1,5", "day-of-week"),
        ("0 0 1 1 * 2030", "day-of-week"),  # a year is not a field; seconds come first
        ("0 * * * ? *", "month"),
        ("H * * * *", "minute"),
        ("R * * * *", "minute"),
        ("é * * * *", "minute"),
        ("abc def ghi jkl mno", "minute"),
    ],
)
def test_validate_cron_names_the_bad_field(expr: str, field: str) -> None:
    with pytest.raises(InvalidCronError) as info:
        validate_cron(expr)
    message = str(info.value)
    assert repr(expr) in message
    assert f"{field} field" in message
    assert "it takes" in message


@pytest.mark.parametrize(
    "expr",
    ["", "   ", "* * * *", "* * * * * * *", "0 0 1 1 * 2030 x", "@daily", "every minute"],
)
def test_validate_cron_rejects_wrong_field_counts(expr: str) -> None:
    with pytest.raises(InvalidCronError, match="expected 5 fields") as info:
        validate_cron(expr)
    assert repr(expr) in str(info.value)


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_validate_cron_rejects_dates_that_never_occur(expr: str) -> None:
    with pytest.raises(InvalidCronError, match=r"can never occur") as info:
        validate_cron(expr)
    assert repr(expr) in str(info.value)


@pytest.mark.parametrize("expr", ["0 12 15 * 5L", "0 12 13 * 5#2", "0 12 1-7 * MON#1,FRIL"])
def test_validate_cron_rejects_day_of_month_with_nth_weekday(expr: str) -> None:
    with pytest.raises(InvalidCronError, match=r"day-of-month must be \* or \?") as info:
        validate_cron(expr)
    assert repr(expr) in str(info.value)


@pytest.mark.parametrize("expr", [None, 5, ["*"] * 5, b"* * * * *"])
def test_validate_cron_rejects_non_strings(expr: object) -> None:
    with pytest.raises(InvalidCronError, match="must be a string"):
        validate_cron(expr)  # type: ignore[arg-type]


# --- validate_tz --------------------------------------------------------------------------


@pytest.mark.parametrize("tz", [PARIS, NY, "UTC", "Etc/GMT+5", "Asia/Kolkata"])
def test_validate_tz_accepts_iana_names(tz: str) -> None:
    assert validate_tz(tz) == tz


@pytest.mark.parametrize(
    "tz",
    ["", "Nowhere/Land", "Europe", "utc", " Europe/Paris", "../etc/passwd", "/etc/localtime",
     "localtime", 3],
)  # fmt: skip
def test_validate_tz_rejects_other_values(tz: object) -> None:
    with pytest.raises(InvalidCronError, match=r'IANA time zone name like "Europe/Paris"'):
        validate_tz(tz)  # type: ignore[arg-type]


def test_validate_tz_none_reads_tz_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", PARIS)
    assert validate_tz(None) == PARIS
    monkeypatch.setenv("TZ", f":{NY}")
    assert validate_tz(None) == NY
    monkeypatch.setenv("TZ", f":/usr/share/zoneinfo/{PARIS}")
    assert validate_tz(None) == PARIS


def test_validate_tz_none_follows_localtime_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    zoneinfo_dir = tmp_path / "usr" / "share" / "zoneinfo" / "Asia"
    zoneinfo_dir.mkdir(parents=True)
    (zoneinfo_dir / "Tokyo").write_bytes(b"TZif")
    link = tmp_path / "localtime"
    link.symlink_to(zoneinfo_dir / "Tokyo")
    monkeypatch.setenv("TZ", "Not/AZone")
    monkeypatch.setattr(cron, "_LOCALTIME", str(link))
    monkeypatch.setattr(cron, "_TIMEZONE_FILE", str(tmp_path / "missing"))
    assert validate_tz(None) == "Asia/Tokyo"


def test_validate_tz_none_reads_timezone_file_then_falls_back_to_utc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TZ", raising=False)
    monkeypatch.setattr(cron, "_LOCALTIME", str(tmp_path / "missing"))
    timezone_file = tmp_path / "timezone"
    timezone_file.write_text("Europe/Berlin\n")
    monkeypatch.setattr(cron, "_TIMEZONE_FILE", str(timezone_file))
    assert validate_tz(None) == "Europe/Berlin"
    timezone_file.write_text("garbage\n")
    assert validate_tz(None) == "UTC"


# --- next_tick: syntax --------------------------------------------------------------------


def test_five_field_expression_fires_on_the_minute() -> None:
    assert ticks("*/5 * * * *", "UTC", ts("2024-01-01T10:02:30"), 3) == [
        "2024-01-01T10:05:00+00:00",
        "2024-01-01T10:10:00+00:00",
        "2024-01-01T10:15:00+00:00",
    ]


def test_seconds_field_comes_first_and_steps() -> None:
    assert ticks("*/15 * * * * *", "UTC", ts("2024-01-01T10:00:00"), 5) == [
        "2024-01-01T10:00:15+00:00",
        "2024-01-01T10:00:30+00:00",
        "2024-01-01T10:00:45+00:00",
        "2024-01-01T10:01:00+00:00",
        "2024-01-01T10:01:15+00:00",
    ]
    assert ticks("30 0 9 * * *", "UTC", ts("2024-01-01T12:00:00"), 1) == [
        "2024-01-02T09:00:30+00:00"
    ]


def test_tick_is_strictly_after() -> None:
    tick = ts("2024-01-01T10:05:00")
    assert next_tick("*/5 * * * *", "UTC", tick) == ts("2024-01-01T10:10:00")
    assert next_tick("*/5 * * * *", "UTC", tick - 0.001) == tick
    assert next_tick("*/5 * * * *", "UTC", tick - 300.5) == tick - 300
    assert next_tick("* * * * * *", "UTC", tick) == tick + 1
    assert next_tick("* * * * * *", "UTC", tick + 0.5) == tick + 1


def test_names_ranges_steps_and_lists() -> None:
    # 2024-01-31 is a Wednesday; February is not listed; 2024-03-01 is a Friday.
    assert ticks("0 9 * JAN,MAR MON-FRI", "UTC", ts("2024-01-31T10:00:00"), 2) == [
        "2024-03-01T09:00:00+00:00",
        "2024-03-04T09:00:00+00:00",
    ]
    assert ticks("0 9-11 * * *", "UTC", ts("2024-01-01T10:30:00"), 3) == [
        "2024-01-01T11:00:00+00:00",
        "2024-01-02T09:00:00+00:00",
        "2024-01-02T10:00:00+00:00",
    ]
    assert ticks("10-50/20 * * * *", "UTC", ts("2024-01-01T10:00:00"), 4) == [
        "2024-01-01T10:10:00+00:00",
        "2024-01-01T10:30:00+00:00",
        "2024-01-01T10:50:00+00:00",
        "2024-01-01T11:10:00+00:00",
    ]
    assert ticks("0,30 8,20 * * *", "UTC", ts("2024-01-01T08:15:00"), 3) == [
        "2024-01-01T08:30:00+00:00",
        "2024-01-01T20:00:00+00:00",
        "2024-01-01T20:30:00+00:00",
    ]


def test_day_of_month_and_day_of_week_are_ored() -> None:
    # The 13th, or any Friday (2024-09-06 and 2024-09-13 are Fridays).
    assert ticks("0 0 13 * FRI", "UTC", ts("2024-09-01T00:00:00"), 3) == [
        "2024-09-06T00:00:00+00:00",
        "2024-09-13T00:00:00+00:00",
        "2024-09-20T00:00:00+00:00",
    ]


def test_last_day_of_month() -> None:
    assert ticks("0 0 L * *", "UTC", ts("2024-02-10T00:00:00"), 3) == [
        "2024-02-29T00:00:00+00:00",
        "2024-03-31T00:00:00+00:00",
        "2024-04-30T00:00:00+00:00",
    ]


@pytest.mark.parametrize("expr", ["0 12 * * 5L", "0 12 * * FRIL", "0 0 12 * * 5l"])
def test_last_weekday_of_month(expr: str) -> None:
    assert ticks(expr, "UTC", ts("2024-01-01T00:00:00"), 3) == [
        "2024-01-26T12:00:00+00:00",
        "2024-02-23T12:00:00+00:00",
        "2024-03-29T12:00:00+00:00",
    ]


def test_nth_weekday_of_month() -> None:
    assert ticks("0 12 * * 5#2", "UTC", ts("2024-01-01T00:00:00"), 3) == [
        "2024-01-12T12:00:00+00:00",
        "2024-02-09T12:00:00+00:00",
        "2024-03-08T12:00:00+00:00",
    ]


def test_year_rollover() -> None:
    assert next_tick("0 0 1 1 *", "UTC", ts("2024-12-31T23:59:59")) == ts("2025-01-01T00:00:00")
    assert next_tick("59 23 31 12 *", "UTC", ts("2024-12-31T23:59:00")) == ts("2025-12-31T23:59:00")
    assert next_tick("* * * * * *", PARIS, ts("2024-12-31T23:59:59", PARIS)) == ts(
        "2025-01-01T00:00:00", PARIS
    )


def test_leap_day_waits_for_a_leap_year() -> None:
    assert next_tick("0 0 29 2 *", "UTC", ts("2024-03-01T00:00:00")) == ts("2028-02-29T00:00:00")


def test_raw_and_canonical_forms_tick_alike() -> None:
    after = ts("2024-05-05T05:05:05")
    raw = "15 */3 * * mon-fri"
    assert next_tick(raw, PARIS, after) == next_tick(validate_cron(raw), PARIS, after)


def test_parsed_expressions_are_cached() -> None:
    before = cron._parse.cache_info().hits
    next_tick("7 7 * * *", "UTC", 0.0)
    next_tick("7 7 * * *", "UTC", 100_000.0)
    assert cron._parse.cache_info().hits > before


def test_next_tick_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidCronError):
        next_tick("61 * * * *", "UTC", 0.0)
    with pytest.raises(InvalidOptionError, match="IANA"):
        next_tick("* * * * *", "Mars/Olympus_Mons", 0.0)
    with pytest.raises(InvalidOptionError, match="finite"):
        next_tick("* * * * *", "UTC", math.nan)


# --- next_tick: zones ---------------------------------------------------------------------


def test_expression_is_read_in_the_zone() -> None:
    assert next_tick("0 9 * * *", PARIS, ts("2024-01-15T00:00:00")) == ts("2024-01-15T08:00:00")
    assert next_tick("0 9 * * *", PARIS, ts("2024-07-15T00:00:00")) == ts("2024-07-15T07:00:00")
    assert next_tick("30 8 * * *", NY, ts("2024-01-15T00:00:00")) == ts("2024-01-15T13:30:00")
    assert next_tick("30 8 * * *", NY, ts("2024-07-15T00:00:00")) == ts("2024-07-15T12:30:00")
    # Midnight in Paris is still the previous day in New York.
    assert local(next_tick("0 0 * * *", PARIS, ts("2024-07-15T12:00:00")), NY) == (
        "2024-07-15T18:00:00-04:00"
    )


# --- next_tick: daylight-saving time ------------------------------------------------------
# New York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
# Paris:    2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET.


def test_spring_forward_fixed_time_fires_once_at_end_of_gap() -> None:
    start, end = ts("2024-03-09T12:00:00", NY), ts("2024-03-12T00:00:00", NY)
    assert ticks_until("30 2 * * *", NY, start, end) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
    ]
    assert ticks_until("0,30 2 * * *", NY, start, end) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
    ]
    paris = ts("2024-03-30T12:00:00", PARIS), ts("2024-04-02T00:00:00", PARIS)
    assert ticks_until("30 2 * * *", PARIS, *paris) == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]


def test_spring_forward_gap_shift_is_in_whole_minutes() -> None:
    start = ts("2024-03-30T12:00:00", PARIS)
    assert ticks("30 30 2 * * *", PARIS, start, 1) == ["2024-03-31T03:00:30+02:00"]


def test_spring_forward_wildcard_hour_skips_the_gap() -> None:
    start, end = ts("2024-03-10T00:00:00", NY), ts("2024-03-10T05:00:00", NY)
    assert ticks_until("30 * * * *", NY, start, end) == [
        "2024-03-10T00:30:00-05:00",
        "2024-03-10T01:30:00-05:00",
        "2024-03-10T03:30:00-04:00",
        "2024-03-10T04:30:00-04:00",
    ]


def test_fall_back_fixed_time_fires_once() -> None:
    start, end = ts("2024-11-02T12:00:00", NY), ts("2024-11-05T00:00:00", NY)
    assert ticks_until("30 1 * * *", NY, start, end) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    assert ticks_until("0,30 1 * * *", NY, start, end) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:00:00-05:00",
        "2024-11-04T01:30:00-05:00",
    ]
    assert ticks_until("30 1,2 * * *", NY, start, end) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T02:30:00-05:00",
        "2024-11-04T01:30:00-05:00",
        "2024-11-04T02:30:00-05:00",
    ]
    paris = ts("2024-10-26T12:00:00", PARIS), ts("2024-10-29T00:00:00", PARIS)
    assert ticks_until("30 2 * * *", PARIS, *paris) == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_fall_back_from_inside_the_repeated_hour() -> None:
    second_pass = ts("2024-11-03T01:10:00", NY, fold=1)
    assert local(next_tick("30 1 * * *", NY, second_pass), NY) == "2024-11-04T01:30:00-05:00"
    assert local(next_tick("*/10 1,2 * * *", NY, second_pass), NY) == "2024-11-03T02:00:00-05:00"
    first_pass = ts("2024-11-03T01:59:58", NY)
    assert ticks("* * 1 * * *", NY, first_pass, 3) == [
        "2024-11-03T01:59:59-04:00",
        "2024-11-04T01:00:00-05:00",
        "2024-11-04T01:00:01-05:00",
    ]


def test_fall_back_wildcard_hour_follows_elapsed_time() -> None:
    start, end = ts("2024-11-03T00:30:00", NY), ts("2024-11-03T02:10:00", NY)
    got = ticks_until("*/20 * * * *", NY, start, end)
    assert got == [
        "2024-11-03T00:40:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:20:00-04:00",
        "2024-11-03T01:40:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T01:20:00-05:00",
        "2024-11-03T01:40:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]


@pytest.mark.parametrize(
    ("tz", "start", "end"),
    [
        (PARIS, "2024-03-30T00:00:00", "2024-04-01T00:00:00"),
        (PARIS, "2024-10-26T00:00:00", "2024-10-28T00:00:00"),
        (NY, "2024-03-09T00:00:00", "2024-03-11T00:00:00"),
        (NY, "2024-11-02T00:00:00", "2024-11-04T00:00:00"),
    ],
)
def test_hourly_ticks_stay_an_hour_apart_across_transitions(tz: str, start: str, end: str) -> None:
    t, last = ts(start, tz), ts(end, tz)
    while t < last:
        following = next_tick("0 * * * *", tz, t)
        assert following - t == 3600
        t = following
