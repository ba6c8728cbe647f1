-- Billing keeps its own copy of the facts it accounts for, then derives timelines from them.

-- Every worker state change (polder.driver.events), stored once by event id.
CREATE TABLE driver_events (
    event_id  text        PRIMARY KEY,
    driver_id text        NOT NULL,
    seq       bigint      NOT NULL,
    at        timestamptz NOT NULL,  -- server time of the change
    data      jsonb       NOT NULL
);
CREATE INDEX driver_events_driver_time ON driver_events (driver_id, at);
CREATE INDEX driver_events_trip ON driver_events ((data ->> 'trip_id')) WHERE data ->> 'trip_id' IS NOT NULL;

-- Orders as placed (the quote locks the surge), and their status changes.
CREATE TABLE orders (
    order_id    uuid        PRIMARY KEY,
    customer_id text        NOT NULL,
    kind        text        NOT NULL,
    city        text        NOT NULL,
    ready_at    timestamptz,
    quote       jsonb       NOT NULL,
    placed_at   timestamptz NOT NULL
);
CREATE TABLE order_changes (
    event_id text        PRIMARY KEY,
    order_id uuid        NOT NULL,
    at       timestamptz NOT NULL,
    data     jsonb       NOT NULL
);
CREATE INDEX order_changes_order ON order_changes (order_id, at);

-- Double-entry, append-only ledger. Entry and transaction ids are derived from the events that
-- caused them (uuid5), so processing an event twice cannot post twice.
CREATE TABLE ledger_transactions (
    tx_id       uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    driver_id   text,
    trip_id     uuid,
    occurred_at timestamptz NOT NULL,
    caused_by   text        NOT NULL,
    reverses    uuid        REFERENCES ledger_transactions,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_transactions_driver ON ledger_transactions (driver_id, occurred_at);

CREATE TABLE ledger_entries (
    entry_id     uuid   PRIMARY KEY,
    tx_id        uuid   NOT NULL REFERENCES ledger_transactions,
    account      text   NOT NULL,
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor <> 0)  -- positive = debit
);
CREATE INDEX ledger_entries_tx ON ledger_entries (tx_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account);

-- A transaction's entries sum to zero per currency, checked when the transaction commits.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, sum(amount_minor) AS total INTO unbalanced
    FROM ledger_entries WHERE tx_id = NEW.tx_id
    GROUP BY currency HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance in %: %',
            NEW.tx_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- Corrections are reversing transactions: nothing in the ledger is ever changed or removed.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    event      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE INDEX ledger_transactions_caused_by ON ledger_transactions (caused_by);
