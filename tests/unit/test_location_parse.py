"""The ingest fast path (msgspec) against the pydantic models it stands in for: whatever the fast
path accepts, the models accept with the same values; what it refuses goes to the models."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from polder.location.models import BATCH, ONE_PING, PING_LIST, parse_batch, parse_frame

_times = st.one_of(
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001 (hypothesis wants naive bounds)
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
        ),
    ).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2026-12-07T01:02:03Z",
            "2026-12-07T01:02:03z",
            "2026-12-07 01:02:03Z",
            "2026-12-07T01:02:03.5+01:00",
            "2026-12-07T01:02:03,5Z",  # decimal comma: pydantic only
            "2026-12-07T01:02Z",  # no seconds: pydantic only
            "2026-12-07T01:02:03",  # naive: neither
            "2026-12-07",
            "2026-12-07T25:00:00Z",
            "",
        ]
    ),
    st.integers(),
    st.none(),
)
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@st.composite
def _pings(draw: st.DrawFn) -> dict[str, Any]:
    ping: dict[str, Any] = {}
    for name in ("lat", "lng", "recorded_at"):
        if draw(st.integers(0, 19)):  # now and then a required field is missing
            ping[name] = draw(_times if name == "recorded_at" else _numbers)
    for name in ("accuracy_m", "speed_mps", "heading_deg"):
        if draw(st.booleans()):
            ping[name] = draw(_numbers)
    if not draw(st.integers(0, 19)):
        ping["extra"] = 1
    return ping


def _values(pings: list[Any]) -> list[tuple[Any, ...]]:
    return [(p.lat, p.lng, p.recorded_at, p.accuracy_m, p.speed_mps, p.heading_deg) for p in pings]


def _model(raw: str, adapter: Any) -> list[Any] | None:
    try:
        got = adapter.validate_json(raw)
    except ValidationError:
        return None
    return list(got.pings) if adapter is BATCH else got if isinstance(got, list) else [got]


@settings(max_examples=400, deadline=None)
@given(st.lists(_pings(), min_size=0, max_size=4), st.sampled_from(["frame", "one", "batch"]))
def test_fast_path_accepts_only_what_the_models_accept_with_the_same_values(
    pings: list[dict[str, Any]], shape: str
) -> None:
    if shape == "one":
        raw, adapter = json.dumps(pings[0] if pings else {}), ONE_PING
    elif shape == "frame":
        raw, adapter = json.dumps(pings), PING_LIST
    else:
        raw, adapter = json.dumps({"pings": pings}), BATCH
    expected = _model(raw, adapter)
    parse = parse_batch if shape == "batch" else parse_frame
    if expected is None:
        with pytest.raises(ValidationError):
            parse(raw)
    else:
        assert _values(parse(raw)) == _values(expected)


@pytest.mark.parametrize(
    "raw",
    [
        '[{"lat": NaN, "lng": 4.9, "recorded_at": "2026-12-07T01:02:03Z"}]',
        '[{"lat": 1e400, "lng": 4.9, "recorded_at": "2026-12-07T01:02:03Z"}]',
        '[{"lat": 52.1, "lng": 4.9, "recorded_at": "2026-12-07T01:02Z"}]',
    ],
)
def test_what_only_the_models_accept_still_gets_through(raw: str) -> None:
    """Non-finite numbers and short times: the fast path refuses them, the models take them
    (the ping screen then rejects non-finite positions with their reason)."""
    (ping,) = parse_frame(raw)
    (expected,) = PING_LIST.validate_json(raw)
    assert (ping.lat, ping.recorded_at) == (expected.lat, expected.recorded_at) or (
        math.isnan(ping.lat) and math.isnan(expected.lat)
    )


def test_errors_are_the_models_errors() -> None:
    with pytest.raises(ValidationError) as err:
        parse_batch(
            b'{"pings": [{"lat": "52", "lng": 4.9, "recorded_at": "2026-12-07T01:02:03Z"}]}'
        )
    assert [e["loc"] for e in err.value.errors()] == [("pings", 0, "lat")]
    with pytest.raises(ValidationError) as err:
        parse_batch(b'{"pings": []}')
    assert err.value.errors()[0]["type"] == "too_short"
    with pytest.raises(ValidationError) as err:
        parse_frame("{not json")
    assert err.value.errors()[0]["type"] == "json_invalid"
