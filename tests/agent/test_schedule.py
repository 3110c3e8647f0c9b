"""Schedules: weekly windows in an IANA zone, holidays, overnight windows, DST edges."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.schedule import Schedule, local_time, parse_clock, parse_weekday, parse_zone

NY = ZoneInfo("America/New_York")
WEEKDAYS = frozenset(range(5))


def ts(text: str, zone: ZoneInfo = NY) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def business(holidays: frozenset[dt.date] = frozenset()) -> Schedule:
    return Schedule("business-hours", NY, WEEKDAYS, 8 * 60, 17 * 60, holidays)


@pytest.mark.parametrize(
    ("when", "active"),
    [
        pytest.param("2026-11-23T07:59", False, id="monday-before-start"),
        pytest.param("2026-11-23T08:00", True, id="monday-at-start"),
        pytest.param("2026-11-23T16:59", True, id="monday-last-minute"),
        pytest.param("2026-11-23T17:00", False, id="monday-at-end-exclusive"),
        pytest.param("2026-11-28T10:00", False, id="saturday"),
        pytest.param("2026-11-26T10:00", False, id="thanksgiving-holiday"),
        pytest.param("2026-03-09T08:30", True, id="first-monday-of-dst"),
        pytest.param("2026-11-02T07:30", False, id="first-monday-after-dst-ends"),
    ],
)
def test_business_hours(when: str, active: bool) -> None:
    """Business hours follow the local wall clock on weekdays that are not holidays."""
    sched = business(frozenset({dt.date(2026, 11, 26)}))
    assert sched.is_active(ts(when)) is active


def test_dst_uses_local_clock_not_fixed_offset() -> None:
    """08:30 EDT on the first Monday of DST is 12:30 UTC, and it is inside business hours."""
    sched = business()
    assert sched.is_active(dt.datetime(2026, 3, 9, 12, 30, tzinfo=dt.UTC).timestamp())
    assert not sched.is_active(dt.datetime(2026, 3, 9, 11, 30, tzinfo=dt.UTC).timestamp())


@given(
    start=st.integers(0, 24 * 60 - 1),
    end=st.integers(0, 24 * 60 - 1),
    moment=st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 12, 31)),  # noqa: DTZ001  (naive local wall-clock times)
)
def test_window_matches_reference_definition(start: int, end: int, moment: dt.datetime) -> None:
    """For any window and any instant, is_active agrees with the plain-words definition."""
    sched = Schedule("w", NY, frozenset({4}), start, end)  # Fridays only
    local = moment.replace(tzinfo=NY)
    # round-trip through the timestamp: ambiguous/non-existent local times resolve as zoneinfo does
    local = dt.datetime.fromtimestamp(local.timestamp(), NY)
    clock = local.hour * 60 + local.minute
    if start < end:
        expected = local.weekday() == 4 and start <= clock < end
    else:
        started_today = local.weekday() == 4 and clock >= start
        started_yesterday = (local - dt.timedelta(days=1)).weekday() == 4 and clock < end
        expected = started_today or started_yesterday
    assert sched.is_active(local.timestamp()) is expected


@pytest.mark.parametrize(
    ("func", "text", "message"),
    [
        pytest.param(parse_clock, "8am", "HH:MM", id="clock-words"),
        pytest.param(parse_clock, "25:00", "between 00:00 and 24:00", id="clock-range"),
        pytest.param(parse_clock, "08:60", "between 00:00 and 24:00", id="clock-minutes"),
        pytest.param(parse_weekday, "funday", "expected a weekday", id="weekday"),
        pytest.param(parse_zone, "Mars/Base", "unknown time zone", id="zone"),
        pytest.param(parse_zone, "../../etc/passwd", "unknown time zone", id="zone-path"),
    ],
)
def test_parsers_reject_bad_values(func: object, text: str, message: str) -> None:
    """Config values that are not times, weekdays or zones raise ValueError saying what is expected."""
    with pytest.raises(ValueError, match=message):
        func(text)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "2026-11-23T10:00", "2026-11-23T15:00:00+00:00", id="no-offset-is-policy-zone"
        ),
        pytest.param("2026-11-23T10:00+00:00", "2026-11-23T10:00:00+00:00", id="explicit-offset"),
        pytest.param("2026-07-01T10:00", "2026-07-01T14:00:00+00:00", id="summer-time"),
    ],
)
def test_local_time(text: str, expected: str) -> None:
    """`--at` without an offset is read in the policy's time zone."""
    assert dt.datetime.fromtimestamp(local_time(text, NY), dt.UTC).isoformat() == expected
