-- Dispatch owns workers' availability, orders, offers, trips, matching decisions and its outbox.

CREATE TABLE workers (
    driver_id     text        PRIMARY KEY,
    status        text        NOT NULL DEFAULT 'offline',
    status_since  timestamptz NOT NULL,
    -- start of the current unpaid wait (entered idle); fairness prefers the longest
    waiting_since timestamptz,
    offer_id      uuid,
    trip_id       uuid,
    -- per-driver sequence of state events, so billing can see gaps and order
    seq           bigint      NOT NULL DEFAULT 0
);
CREATE INDEX workers_idle ON workers (status) WHERE status = 'idle';

CREATE TABLE orders (
    order_id        uuid        PRIMARY KEY,
    customer_id     text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('ride', 'delivery')),
    city            text        NOT NULL,
    pickup_lat      double precision NOT NULL,
    pickup_lng      double precision NOT NULL,
    dropoff_lat     double precision NOT NULL,
    dropoff_lng     double precision NOT NULL,
    ready_at        timestamptz,
    scheduled_for   timestamptz,
    status          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    search_deadline timestamptz NOT NULL,
    quote           jsonb       NOT NULL,
    excluded        text[]      NOT NULL DEFAULT '{}',
    driver_id       text,
    trip_id         uuid,
    offer_id        uuid,
    pickup_eta_s    double precision,
    assigned_at     timestamptz,
    first_offer_at  timestamptz
);
CREATE INDEX orders_open ON orders (status, created_at) WHERE status IN ('searching', 'offered');
CREATE INDEX orders_customer ON orders (customer_id, created_at);

CREATE TABLE offers (
    offer_id          uuid        PRIMARY KEY,
    order_id          uuid        NOT NULL REFERENCES orders,
    driver_id         text        NOT NULL,
    status            text        NOT NULL,  -- pending, accepted, declined, expired, withdrawn
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    answered_at       timestamptz,
    pickup_eta_s      double precision NOT NULL,
    pickup_distance_m double precision NOT NULL,
    estimated_pay     jsonb       NOT NULL
);
CREATE INDEX offers_pending ON offers (expires_at) WHERE status = 'pending';
CREATE INDEX offers_driver ON offers (driver_id, status);

CREATE TABLE trips (
    trip_id            uuid        PRIMARY KEY,
    order_id           uuid        NOT NULL UNIQUE REFERENCES orders,
    driver_id          text        NOT NULL,
    status             text        NOT NULL,  -- the driver's trip state, or completed/cancelled
    accepted_at        timestamptz NOT NULL,
    promised_eta_s     double precision NOT NULL,
    arrived_pickup_at  timestamptz,
    picked_up_at       timestamptz,
    arrived_dropoff_at timestamptz,
    ended_at           timestamptz,
    end_reason         text
);

-- Every matching round that considered an order: candidates, costs, the choice and why.
CREATE TABLE decisions (
    id         bigserial   PRIMARY KEY,
    order_id   uuid        NOT NULL REFERENCES orders,
    batch_id   uuid        NOT NULL,
    decided_at timestamptz NOT NULL,
    decision   jsonb       NOT NULL
);
CREATE INDEX decisions_order ON decisions (order_id, id);

-- Stripe-style idempotency: the first response to a key is stored and replayed.
CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status_code  int         NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

-- Transactional outbox: events are written with the state change, then relayed to Kafka.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    event      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
