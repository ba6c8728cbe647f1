-- The worker's positions billing needs: engaged distance, signs of life (silence inference),
-- and where waiting happened. Thinned to one ping per few seconds per driver; the key makes a
-- redelivered ping a no-op.
CREATE TABLE pings (
    driver_id      text             NOT NULL,
    recorded_at_ms bigint           NOT NULL,  -- device clock
    received_at    timestamptz      NOT NULL,  -- server clock: the sign of life
    lat            double precision NOT NULL,
    lng            double precision NOT NULL,
    accuracy_m     real,
    cell8          bigint           NOT NULL,  -- H3 res 8, what reports group by
    PRIMARY KEY (driver_id, recorded_at_ms)
);
CREATE INDEX pings_driver_received ON pings (driver_id, received_at);
