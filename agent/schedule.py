"""Named time windows (business hours, holidays), compiled once, evaluated with an injected now.

Windows are wall-clock times in the policy's IANA time zone, so DST changes move them with
the local clock. A window whose end is not after its start runs overnight and belongs to the
day it starts on (Fri 22:00-06:00 is active early on Saturday, not early on Friday).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_weekday(text: str) -> int:
    """A weekday: mon, tue, wed, thu, fri, sat, sun (full names too); Monday is 0."""
    low = text.strip().lower()
    for index, name in enumerate(_FULL_DAYS):
        if low in (name, name[:3]):
            return index
    raise ValueError(f"expected a weekday: {', '.join(WEEKDAYS)}")


def parse_clock(text: str) -> int:
    """A time of day HH:MM (24-hour); returns minutes after midnight; 24:00 is allowed as an end."""
    hh, sep, mm = text.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2:
        raise ValueError("expected a time of day as HH:MM, e.g. 08:00")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) > 59 or minutes > 24 * 60:
        raise ValueError("expected a time of day between 00:00 and 24:00")
    return minutes


def parse_date(text: str) -> dt.date:
    """A calendar date YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError("expected a date as YYYY-MM-DD") from None


def parse_zone(text: str) -> ZoneInfo:
    """An IANA time zone name such as America/New_York."""
    try:
        return ZoneInfo(text.strip())
    except (ValueError, KeyError, OSError):
        raise ValueError(
            "unknown time zone: expected an IANA name such as America/New_York"
        ) from None


@dataclass(slots=True)
class Schedule:
    """A compiled window: `is_active(now)` for a POSIX timestamp `now`."""

    name: str
    zone: ZoneInfo
    days: frozenset[int]
    start: int
    end: int
    holidays: frozenset[dt.date] = frozenset()
    _memo: tuple[int, bool] = field(default=(-1, False), repr=False)

    def is_active(self, now: float) -> bool:
        """True when `now` falls inside the window (memoised per minute: windows are HH:MM)."""
        minute = int(now // 60)
        if self._memo[0] == minute:
            return self._memo[1]
        active = self._evaluate(dt.datetime.fromtimestamp(now, self.zone))
        self._memo = (minute, active)
        return active

    def _evaluate(self, local: dt.datetime) -> bool:
        clock = local.hour * 60 + local.minute
        day = local.date()
        if self.start < self.end:
            return self._day_counts(day) and self.start <= clock < self.end
        if clock >= self.start:
            return self._day_counts(day)
        return clock < self.end and self._day_counts(day - dt.timedelta(days=1))

    def _day_counts(self, day: dt.date) -> bool:
        return day.weekday() in self.days and day not in self.holidays

    def describe(self) -> str:
        """`Mon-Fri 08:00-17:00 America/New_York, not on 11 holidays`."""
        days = ",".join(WEEKDAYS[d].capitalize() for d in sorted(self.days))
        text = f"{days} {_clock(self.start)}-{_clock(self.end)} {self.zone.key}"
        return text + (f", not on {len(self.holidays)} holidays" if self.holidays else "")


def local_time(text: str, zone: ZoneInfo) -> float:
    """Parse ISO-8601 `text` to a timestamp; a time without an offset is in `zone`."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            "expected an ISO-8601 time such as 2026-11-23T10:30 or 2026-11-23T10:30-05:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
