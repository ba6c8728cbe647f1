"""A ``from``/``to`` query range, checked: RFC 3339 with an offset, ordered, bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from polder.common.errors import ApiError


def parse_range(
    start: str | None, end: str | None, now: datetime, max_span: timedelta
) -> tuple[datetime, datetime]:
    """By default the current UTC day; ``to`` defaults to a day after ``from``, capped."""
    try:
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        a = datetime.fromisoformat(start) if start else day
        b = datetime.fromisoformat(end) if end else a + min(timedelta(days=1), max_span)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"from/to must be RFC 3339: {exc}") from exc
    if a.tzinfo is None or b.tzinfo is None:
        raise ApiError(422, "invalid_request", "from/to need a UTC offset")
    if b <= a:
        raise ApiError(422, "invalid_request", "to must be after from")
    if b - a > max_span:
        raise ApiError(
            422, "range_too_long", f"a range covers at most {max_span.days} days; ask in parts"
        )
    return a, b
