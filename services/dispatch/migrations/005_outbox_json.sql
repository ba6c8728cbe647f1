-- Outbox events as json, not jsonb: they are stored as the text they are published as and
-- read back as text by the relay, so jsonb's parse on the way in and its re-serialisation on
-- the way out were Postgres CPU for nothing (~16 % of the outbox's cost per event, measured
-- on an embedded server: insert, relay read and mark sent). Queries such as
-- event -> 'data' ->> 'to' work on json as well.
ALTER TABLE outbox ALTER COLUMN event TYPE json USING event::json;
