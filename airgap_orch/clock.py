"""The one time source. Every timestamp the orchestrator writes comes from `now()`.

Times are naive UTC datetimes (DuckDB TIMESTAMP); `iso()` renders them for humans and JSON.
Tests move time with `set_clock()` instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

_source: Callable[[], datetime] | None = None


def now() -> datetime:
    if _source is not None:
        return _source()
    return datetime.now(UTC).replace(tzinfo=None)


def set_clock(source: Callable[[], datetime] | None) -> None:
    """Replace the time source (None restores the system clock)."""
    global _source
    _source = source


class ManualClock:
    """A clock that only moves when told to; handy for lease-expiry tests."""

    def __init__(self, start: datetime | None = None):
        self.current = start or datetime.now(UTC).replace(tzinfo=None)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.current = self.current + timedelta(seconds=seconds)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601; a value without offset is taken as UTC. Returns naive UTC. ValueError for text that is no
    such time, or one whose UTC instant falls outside years 1 to 9999 (e.g. 0001-01-01T00:00:00+01:00)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{text!r} is outside years 1 to 9999 in UTC") from None
    return value
