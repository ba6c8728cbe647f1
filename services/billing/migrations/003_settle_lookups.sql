-- Settling a batch looks trip ends up by the orders that just arrived (the order and the trip's
-- end travel on different topics: either may come first). Without this index that lookup read
-- every stored driver event once per batch.
CREATE INDEX driver_events_order ON driver_events ((data ->> 'order_id'))
    WHERE data ->> 'order_id' IS NOT NULL;
CREATE INDEX order_changes_no_show ON order_changes (order_id)
    WHERE data ->> 'reason' = 'no_show';
