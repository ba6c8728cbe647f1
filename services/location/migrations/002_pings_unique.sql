-- The same ping re-sent in another request (a retry after a lost answer, a phone's offline
-- buffer flushed twice) carries a new event id: (driver_id, recorded_at) is what makes a ping
-- the same ping. Duplicates stored before this migration are dropped, keeping the first.
DELETE FROM pings a USING pings b
 WHERE a.driver_id = b.driver_id AND a.recorded_at = b.recorded_at AND a.ctid > b.ctid;
DROP INDEX pings_driver_time;
CREATE UNIQUE INDEX pings_driver_time ON pings (driver_id, recorded_at);
