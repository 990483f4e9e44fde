"""Points in time as a user types them: ISO 8601, or a span back from now (``24h``, ``7d``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from qward.errors import InputError

__all__ = ["parse_since", "parse_span"]

_SPAN = re.compile(r"^(\d{1,9})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _span(text: str) -> timedelta | None:
    match = _SPAN.match(text.strip())
    if match is None:
        return None
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_span(value: str, *, what: str) -> float:
    """``30m``, ``12h``, ``90d``, ``8w`` as seconds; anything else is an ``InputError``."""
    span = _span(value)
    if span is None or span.total_seconds() <= 0:
        raise InputError(f"{what} {value!r} is not a span of time: give 30m, 12h, 90d or 8w")
    return span.total_seconds()


def parse_since(value: str, *, now: datetime) -> datetime:
    """``value`` as an aware UTC datetime: ``30m``, ``24h``, ``7d``, ``2w`` back from ``now``, or
    an ISO 8601 date or date-time (a time without a zone is UTC). Anything else is an
    ``InputError`` naming the value."""
    text = value.strip()
    if (span := _span(text)) is not None:
        return now - span
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"--since {value!r} is not a time: give ISO 8601 (2026-11-24, "
            "2026-11-24T08:00:00Z) or a span back from now (30m, 24h, 7d, 2w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
