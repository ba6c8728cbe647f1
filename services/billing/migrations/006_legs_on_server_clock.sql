-- ping_legs.start_ms and end_ms are on the server's clock from this migration on: a device's
-- clock may be set back or forward mid-shift, so retention places each batch of pings on the
-- server's clock before measuring (billing.retention), as statements do, and a leg's times
-- follow no single device clock. Legs stored before were on the device clock, which statements
-- moved by one offset per worker: the smallest receipt-minus-recorded of its pings, 0 within
-- 5 s (over the range a statement read; here over all it holds). They are moved by it here,
-- once, so they read as they did. (One shift per worker keeps its legs' ends apart; the key
-- goes while the rows move past each other.)
ALTER TABLE ping_legs DROP CONSTRAINT ping_legs_pkey;

WITH offsets AS (
    SELECT driver_id, min(floor(extract(epoch FROM received_at) * 1000)::bigint - recorded_at_ms)
           AS offset_ms
    FROM (
        SELECT driver_id, recorded_at_ms, received_at FROM ping_marks
        UNION ALL
        SELECT driver_id, recorded_at_ms, received_at FROM pings
    ) p
    GROUP BY driver_id
)
UPDATE ping_legs l
SET start_ms = l.start_ms + o.offset_ms, end_ms = l.end_ms + o.offset_ms
FROM offsets o
WHERE l.driver_id = o.driver_id AND abs(o.offset_ms) > 5000;

ALTER TABLE ping_legs ADD PRIMARY KEY (driver_id, end_ms);
