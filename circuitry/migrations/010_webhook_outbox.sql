-- circuitry schema, version 10 (SQLite): the webhook outbox. Plain SQL, idempotent.
--
-- One row per alert and webhook endpoint, written right after the alert (by the process that stored
-- it, or by any process's catch-up sweep). A sender takes a row with a lease (claimed_by,
-- claimed_until: a compare-and-set UPDATE), so one process of one host attempts a delivery at a time,
-- and a row survives restarts until it is delivered or, after the endpoint's last attempt, dead.

CREATE TABLE IF NOT EXISTS circuitry_webhook_outbox (
    id              INTEGER PRIMARY KEY,
    delivery_id     TEXT NOT NULL UNIQUE,   -- random, sent as X-Circuitry-Delivery: receivers dedupe on it
    endpoint        TEXT NOT NULL,          -- the endpoint's name (never its URL: URLs can carry secrets)
    alert_id        INTEGER,                -- circuit_breaker_alerts.id (NULL for a test delivery)
    service_name    TEXT,
    payload         TEXT NOT NULL,          -- JSON: the alert as stored (the body is made from it when sent)
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,          -- epoch seconds, on the database's clock
    claimed_by      TEXT,                   -- host:pid of the sender holding the lease
    claimed_until   REAL,                   -- the lease's expiry (epoch seconds)
    last_status     INTEGER,                -- the last HTTP status (NULL: no response)
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL,
    UNIQUE (alert_id, endpoint)
);
CREATE INDEX IF NOT EXISTS circuitry_webhook_outbox_due
    ON circuitry_webhook_outbox (state, next_attempt_at);

INSERT OR IGNORE INTO circuitry_schema (version, name) VALUES (10, 'webhook_outbox');
