-- Supply snapshots (available workers per H3 res-7 cell) from the active matcher, read by every
-- API replica's surge model, so every replica quotes from the same supply. Kept for a surge
-- window or two; the matcher deletes older rows.
CREATE TABLE supply_snapshots (
    at    double precision NOT NULL,  -- epoch seconds of the batch that counted them
    cells jsonb            NOT NULL   -- {"<res-7 cell as int>": workers}
);
CREATE INDEX supply_snapshots_at ON supply_snapshots (at);
