-- Accepted pings, kept as a trace per driver (disputes, engaged distance checks, export).
CREATE TABLE pings (
    driver_id   text             NOT NULL,
    recorded_at timestamptz      NOT NULL,  -- device time: ordering and plausibility only
    received_at timestamptz      NOT NULL,  -- server time
    lat         double precision NOT NULL,
    lng         double precision NOT NULL,
    cell        bigint           NOT NULL,  -- H3 cell at the index resolution
    accuracy_m  real,
    speed_mps   real,
    heading_deg real,
    event_id    text             NOT NULL
);
CREATE INDEX pings_driver_time ON pings (driver_id, recorded_at);
CREATE INDEX pings_received ON pings (received_at);

-- Idempotent consumers: the effect and this row are written in one transaction.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
