-- circuitry schema, version 8: the circuit breaker tables (SQLite).
--
-- Plain SQL, idempotent: `sqlite3 pipeline.db < migrations/008_add_circuit_breaker_tracking.sql`
-- adds the tables to an existing application database (and does nothing the second time). The
-- number continues the migration series of the application this schema first served, so its
-- documented command works as is. The library and `circuitry migrate --db PATH` apply pending
-- migrations the same way.
--
-- A database whose circuit_breaker_* tables were created by an earlier, shorter schema (without
-- circuitry's columns) is not changed by this file, and version 8 is not recorded for it: the
-- library, or `circuitry migrate --db PATH`, adds the missing columns first (sqlite3 alone cannot
-- add a column only where it is missing).

PRAGMA journal_mode = WAL;

CREATE TABLE IF NOT EXISTS circuitry_schema (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- One row per circuit: the state every process of the host shares.
CREATE TABLE IF NOT EXISTS circuit_breaker_states (
    service_name        TEXT PRIMARY KEY,
    current_state       TEXT NOT NULL DEFAULT 'closed'
                        CHECK (current_state IN ('closed', 'open', 'half_open', 'forced_open', 'disabled')),
    failure_count       INTEGER NOT NULL DEFAULT 0,
    failure_threshold   INTEGER NOT NULL DEFAULT 5,
    recovery_timeout    INTEGER NOT NULL DEFAULT 60,
    last_failure_time   TIMESTAMP,
    state_changed_at    TIMESTAMP,
    -- circuitry's additions
    version             INTEGER NOT NULL DEFAULT 0,     -- bumped by every compare-and-set write
    opened_at           REAL,                           -- epoch seconds
    open_until          REAL,                           -- epoch seconds
    open_for            REAL,                           -- seconds
    reopen_count        INTEGER NOT NULL DEFAULT 0,
    updated_by          TEXT,                           -- host:pid of the last writer
    updated_at          REAL,
    change_seq          INTEGER NOT NULL DEFAULT 0      -- order of state changes: pollers read what is new
);
CREATE INDEX IF NOT EXISTS circuit_breaker_states_change_seq ON circuit_breaker_states (change_seq);

-- History: every transition, and every failure (successes and rejections are counted per second and
-- per minute; past a rate per circuit, failures are kept as one row carrying how many: occurrences).
CREATE TABLE IF NOT EXISTS circuit_breaker_events (
    id              INTEGER PRIMARY KEY,
    service_name    TEXT NOT NULL,
    event_type      TEXT NOT NULL,          -- state_change, failure, store_fault, dropped, adjustment
    from_state      TEXT,
    to_state        TEXT,
    error_type      TEXT,
    error_message   TEXT,
    additional_data TEXT,                   -- JSON
    created_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts              REAL NOT NULL,          -- epoch seconds (created_at as a number)
    process         TEXT,
    occurrences     INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS circuit_breaker_events_service_ts ON circuit_breaker_events (service_name, ts);
CREATE INDEX IF NOT EXISTS circuit_breaker_events_service_type_ts
    ON circuit_breaker_events (service_name, event_type, ts);

CREATE TABLE IF NOT EXISTS circuit_breaker_failure_patterns (
    id                  INTEGER PRIMARY KEY,
    service_name        TEXT NOT NULL,
    pattern_type        TEXT,               -- burst, steady, intermittent, escalating; NULL: abstained
    time_window_seconds INTEGER NOT NULL,
    failure_count       INTEGER NOT NULL,
    error_rate          REAL NOT NULL,      -- failures per second
    suggested_threshold INTEGER,
    suggested_timeout   INTEGER,
    confidence_score    REAL NOT NULL,
    evidence            TEXT,               -- JSON
    created_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts                  REAL NOT NULL,
    process             TEXT                -- host:pid of the analyst that ran it
);
CREATE INDEX IF NOT EXISTS circuit_breaker_failure_patterns_service_ts
    ON circuit_breaker_failure_patterns (service_name, ts);

-- Per-minute rollups, one row per circuit and minute; every process adds its counts.
CREATE TABLE IF NOT EXISTS circuit_breaker_metrics (
    service_name    TEXT NOT NULL,
    minute          INTEGER NOT NULL,       -- epoch seconds // 60
    bucket_start    TIMESTAMP NOT NULL,
    calls           INTEGER NOT NULL DEFAULT 0,
    successes       INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    ignored         INTEGER NOT NULL DEFAULT 0,
    rejections      INTEGER NOT NULL DEFAULT 0,
    cancelled       INTEGER NOT NULL DEFAULT 0,
    latency_count   INTEGER NOT NULL DEFAULT 0,
    latency_sum_ms  REAL NOT NULL DEFAULT 0,
    latency_max_ms  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (service_name, minute)
);
CREATE INDEX IF NOT EXISTS circuit_breaker_metrics_minute ON circuit_breaker_metrics (minute);

CREATE TABLE IF NOT EXISTS circuit_breaker_alerts (
    id              INTEGER PRIMARY KEY,
    service_name    TEXT NOT NULL,
    alert_type      TEXT NOT NULL,
    severity        TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    message         TEXT NOT NULL,
    details         TEXT,                   -- JSON
    acknowledged    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    acknowledged_at TIMESTAMP,
    occurrences     INTEGER NOT NULL DEFAULT 1,  -- repeats aggregated into this alert
    last_seen_at    TIMESTAMP,
    alert_key       TEXT,                   -- deduplication key: service, type (and advice)
    ts              REAL                    -- created_at as epoch seconds
);
CREATE INDEX IF NOT EXISTS circuit_breaker_alerts_service
    ON circuit_breaker_alerts (service_name, acknowledged, created_at);
CREATE INDEX IF NOT EXISTS circuit_breaker_alerts_key ON circuit_breaker_alerts (alert_key, acknowledged);

-- Half-open probe permits shared by every process: a 'held' row is a lease, taken atomically; a
-- 'wanted' row says another process has a caller waiting for one.
CREATE TABLE IF NOT EXISTS circuit_breaker_probe_leases (
    lease_id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale release cannot free a new lease
    service_name    TEXT NOT NULL,
    holder          TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'held' CHECK (kind IN ('held', 'wanted')),
    granted_at      REAL,
    expires_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS circuit_breaker_probe_leases_service
    ON circuit_breaker_probe_leases (service_name, expires_at);

INSERT OR IGNORE INTO circuitry_schema (version, name)
SELECT 8, 'add_circuit_breaker_tracking'
WHERE (SELECT count(*) FROM pragma_table_info('circuit_breaker_events')
       WHERE name IN ('ts', 'process', 'occurrences')) = 3
  AND (SELECT count(*) FROM pragma_table_info('circuit_breaker_states')
       WHERE name IN ('version', 'open_until', 'change_seq')) = 3
  AND (SELECT count(*) FROM pragma_table_info('circuit_breaker_alerts')
       WHERE name IN ('alert_key', 'ts', 'occurrences')) = 3
  AND (SELECT count(*) FROM pragma_table_info('circuit_breaker_probe_leases')
       WHERE name IN ('kind', 'granted_at')) = 2;
