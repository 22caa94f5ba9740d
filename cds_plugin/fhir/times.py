"""FHIR date, dateTime and instant values as timezone-aware UTC datetimes.

Everything is compared in UTC. A value without a time (`2020`, `2020-03`, `2020-03-04`) stands for the
start of that period, so a fact dated on the day of an `as_of` cut counts as known that day; a cut given
as a `date` means the end of that day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

_DATE_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


class BadTime(ValueError):
    """The text is not a FHIR date/dateTime."""


@lru_cache(maxsize=65536)
def parse_datetime(text: str) -> datetime:
    """FHIR date, dateTime or instant -> aware UTC datetime (start of the period for partial dates).

    A time without an offset (not allowed by FHIR, but seen) is read as UTC. Raises BadTime.
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise BadTime("not a FHIR dateTime")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        sec = int(second) if second else 0
        value = datetime(
            int(year),
            int(month) if month else 1,
            int(day) if day else 1,
            int(hour) if hour else 0,
            int(minute) if minute else 0,
            min(sec, 59),  # leap second 60
            int(fraction[:6].ljust(6, "0")) if fraction else 0,
            tzinfo=UTC,
        )
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 14 or minutes > 59:
                raise BadTime("not a FHIR dateTime (time zone offset)")
            value -= sign * timedelta(hours=hours, minutes=minutes)
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, BadTime):
            raise
        raise BadTime("not a valid date or time") from exc
    return value


@lru_cache(maxsize=16384)
def parse_date(text: str) -> date:
    """FHIR date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) -> date (first day of a partial date). Raises BadTime."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise BadTime("not a FHIR date")
    year, month, day = match.groups()
    try:
        return date(int(year), int(month) if month else 1, int(day) if day else 1)
    except ValueError as exc:
        raise BadTime("not a valid date") from exc


def to_cut(value: datetime | date) -> datetime:
    """An as_of value as an aware UTC datetime: a date means the end of that day; naive means UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.max, tzinfo=UTC)
    raise TypeError("as_of: expected a datetime or a date")


def utc_now() -> datetime:
    return datetime.now(UTC)
