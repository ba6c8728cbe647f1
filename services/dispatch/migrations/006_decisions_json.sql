-- Matching decisions as json, not jsonb: they are written once per order and batch, read back
-- whole by GET /v1/orders/{id}/decisions, and never queried inside. A decision with its
-- candidates is ~2.3 KB; jsonb's parse (and pglz over the larger binary form) made the batch's
-- insert of 220 decisions 11.5 ms, json 6.2 ms (embedded PostgreSQL 18, median of 20 rounds
-- with commit), and that insert sits between a batch's solve and its offers reaching the broker.
ALTER TABLE decisions ALTER COLUMN decision TYPE json USING decision::json;
