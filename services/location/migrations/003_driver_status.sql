-- The newest state of every worker, from polder.driver.events (dispatch's state changes): what
-- every replica loads at start to refuse pings from workers who are offline. Written by one
-- consumer group; a row is replaced only by a change with a higher per-driver seq.
CREATE TABLE driver_status (
    driver_id  text        PRIMARY KEY,
    seq        bigint      NOT NULL,
    status     text        NOT NULL,
    changed_at timestamptz NOT NULL  -- the event's server time
);

-- Where driver_status is complete to, per partition, written in the same transaction as the
-- rows: a replica loads both in one snapshot and follows the topic from exactly there.
CREATE TABLE driver_status_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);
