-- Positions past retention (POLDER_RAW_PING_RETENTION_H), kept only as H3 resolution-8 cells:
-- how many of a driver's pings the server received in each cell in each hour (UTC).
CREATE TABLE ping_cells (
    driver_id text        NOT NULL,
    hour      timestamptz NOT NULL,  -- received_at truncated to the hour
    cell8     bigint      NOT NULL,  -- H3 res 8
    pings     integer     NOT NULL,
    PRIMARY KEY (driver_id, hour, cell8)
);
