from datetime import UTC, datetime

import orjson
import pytest

from polder.common.envelope import DecodeError, Event, encode, format_time, parse_time
from polder.common.schemas import SchemaError, SchemaRegistry

REG = SchemaRegistry.load()


def pings_event(**data_over: object) -> Event:
    data: dict[str, object] = {
        "driver_id": "d1",
        "received_at": "2026-11-29T12:00:00.000Z",
        "pings": [
            {
                "lat": 52.37,
                "lng": 4.89,
                "recorded_at_ms": 1_795_996_799_000,
            }
        ],
    }
    data.update(data_over)
    return Event(
        type="polder.location.pings_recorded.v1",
        source="test",
        subject="d1",
        data=data,
        time=datetime(2026, 11, 29, 12, tzinfo=UTC),
    )


def test_round_trip_keeps_every_field() -> None:
    event = pings_event()
    back = REG.decode(REG.encode(event))
    assert back == event
    doc = orjson.loads(encode(event))
    assert doc["specversion"] == "1.0" and doc["datacontenttype"] == "application/json"
    assert doc["time"] == "2026-11-29T12:00:00.000Z"


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [pings_event().id for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids == sorted(ids)  # UUIDv7


def test_undecodable_bytes_raise_decode_error() -> None:
    for raw in (b"", b"{not json", b"[1,2]", b'"text"'):
        with pytest.raises(DecodeError):
            REG.decode(raw)


def test_envelope_and_data_are_validated() -> None:
    doc = orjson.loads(encode(pings_event()))
    for broken, needle in [
        ({**doc, "specversion": "0.3"}, "specversion"),
        ({k: v for k, v in doc.items() if k != "id"}, "id"),
        ({**doc, "type": "polder.unknown.thing.v1"}, "unknown event type"),
        ({**doc, "extra": 1}, "extra"),
        ({**doc, "data": {**doc["data"], "pings": []}}, "pings"),
        ({**doc, "data": {**doc["data"], "driver_id": 7}}, "driver_id"),
    ]:
        with pytest.raises(SchemaError, match=needle):
            REG.decode(orjson.dumps(broken))


def test_producers_cannot_encode_an_invalid_event() -> None:
    with pytest.raises(SchemaError):
        REG.encode(pings_event(pings=[{"lat": 100, "lng": 0, "recorded_at_ms": "x"}]))


def test_time_format_is_rfc3339_utc_millis() -> None:
    t = parse_time("2026-11-29T13:00:00.123456+01:00")
    assert format_time(t) == "2026-11-29T12:00:00.123Z"
    with pytest.raises(ValueError):
        parse_time("2026-11-29T12:00:00")
