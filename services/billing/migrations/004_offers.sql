-- The offers dispatch made (polder.dispatch offer_made): the pickup ETA promised with the offer
-- a worker accepted decides whether they were late, which waives a customer's cancellation fee.
CREATE TABLE offers (
    offer_id     text             PRIMARY KEY,
    order_id     uuid             NOT NULL,
    driver_id    text             NOT NULL,
    made_at      timestamptz      NOT NULL,  -- server time of the offer
    pickup_eta_s double precision NOT NULL
);
CREATE INDEX offers_order ON offers (order_id);
