-- The trace is kept as the batches were published, one row per batch instead of one per ping:
-- ~50 times fewer rows and index entries. Measured (loadtests/README.md, 6 Dec 2026): per-ping
-- rows cost Postgres ~4.5 µs of CPU per ping (7.8 with the unique (driver, time) index and
-- INSERT ... ON CONFLICT), batches ~1 µs; the writer's own CPU drops from ~2.2 to ~0.4 µs.
-- At 50 000 pings/s that is about a third of a core of the two a small box has.
CREATE TABLE trace_batches (
    event_id          text        PRIMARY KEY,  -- a replayed event is stored once
    driver_id         text        NOT NULL,
    received_at       timestamptz NOT NULL,  -- server time
    first_recorded_at timestamptz NOT NULL,  -- device time of the batch's oldest ping
    last_recorded_at  timestamptz NOT NULL,  -- ... and of its newest
    -- [{"lat", "lng", "recorded_at_ms", "accuracy_m"?, "speed_mps"?, "heading_deg"?}, ...]
    -- as published (json, not jsonb: stored as the text it is, nothing to parse on the way in)
    pings             json        NOT NULL
);
CREATE INDEX trace_batches_driver ON trace_batches (driver_id, last_recorded_at);
CREATE INDEX trace_batches_received ON trace_batches (received_at);

INSERT INTO trace_batches
SELECT event_id, driver_id, min(received_at), min(recorded_at), max(recorded_at),
       json_agg(json_strip_nulls(json_build_object(
           'lat', lat, 'lng', lng,
           'recorded_at_ms', floor(extract(epoch FROM recorded_at) * 1000)::bigint,
           'accuracy_m', accuracy_m, 'speed_mps', speed_mps, 'heading_deg', heading_deg))
           ORDER BY recorded_at)
  FROM pings
 GROUP BY event_id, driver_id;
DROP TABLE pings;

-- One row per ping, each (driver_id, recorded_at) once: a ping sent again in another request
-- (a retry after a lost answer, a phone's buffer flushed twice) is stored with its batch and
-- shown as first received. What exports, tests and people read.
CREATE VIEW pings AS
SELECT DISTINCT ON (b.driver_id, p.recorded_at)
       b.driver_id, p.recorded_at, b.received_at, p.lat, p.lng,
       p.accuracy_m, p.speed_mps, p.heading_deg, b.event_id
  FROM trace_batches b
 CROSS JOIN LATERAL (
       SELECT timestamptz 'epoch' + x.recorded_at_ms * interval '1 millisecond' AS recorded_at,
              x.lat, x.lng, x.accuracy_m, x.speed_mps, x.heading_deg
         FROM json_to_recordset(b.pings) AS x(
              lat double precision, lng double precision, recorded_at_ms bigint,
              accuracy_m real, speed_mps real, heading_deg real)
       ) p
 ORDER BY b.driver_id, p.recorded_at, b.received_at, b.event_id;

-- The trace writer was its only user: the batches' primary key dedupes replays now.
DROP TABLE processed_events;
