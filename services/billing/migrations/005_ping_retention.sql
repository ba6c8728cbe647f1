-- Raw pings past retention (POLDER_RAW_PING_RETENTION_H) leave `pings`. What statements need
-- of them stays, without a position finer than an H3 resolution-8 cell:
--   ping_marks: when each ping was recorded and received, and its res-8 cell (signs of life,
--               the device clock estimate, where waiting happened in reports);
--   ping_legs:  the distance the worker drove between its pings (engaged km), measured from the
--               raw positions before they were deleted.
CREATE TABLE ping_marks (
    driver_id      text        NOT NULL,
    recorded_at_ms bigint      NOT NULL,  -- device clock
    received_at    timestamptz NOT NULL,  -- server clock
    accuracy_m     real,
    cell8          bigint      NOT NULL,
    PRIMARY KEY (driver_id, recorded_at_ms)
);
CREATE INDEX ping_marks_driver_received ON ping_marks (driver_id, received_at);

CREATE TABLE ping_legs (
    driver_id   text             NOT NULL,
    start_ms    bigint           NOT NULL,  -- device clock, as the legs were measured
    end_ms      bigint           NOT NULL,
    distance_m  double precision NOT NULL,
    received_at timestamptz      NOT NULL,  -- server time of the ping that ends the leg
    PRIMARY KEY (driver_id, end_ms)
);
CREATE INDEX ping_legs_driver_received ON ping_legs (driver_id, received_at);
CREATE INDEX pings_received ON pings (received_at);
