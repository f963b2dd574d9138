-- circuitry schema, version 9 (PostgreSQL): per-second counts for the pattern engine, and one analysis
-- per circuit per period across every process of every host. Plain SQL, idempotent.

-- Per-second counts, one row per circuit and second with calls (every process adds its counts). The
-- pattern engine classifies these: exact counts at a one-second resolution. Kept for a few hours.
CREATE TABLE IF NOT EXISTS circuit_breaker_seconds (
    service_name    text NOT NULL,
    second          bigint NOT NULL,        -- epoch seconds, floored
    calls           bigint NOT NULL DEFAULT 0,      -- successes + counted failures
    failures        bigint NOT NULL DEFAULT 0,
    rejections      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (service_name, second)
);

-- Ten-minute rollups (the per-minute counts summed by ten minutes): what a status of thousands of circuits
-- reads for "the last hour" — seven rows a circuit instead of sixty.
CREATE TABLE IF NOT EXISTS circuit_breaker_metrics_10m (
    service_name    text NOT NULL,
    bucket          bigint NOT NULL,        -- epoch seconds // 600
    calls           bigint NOT NULL DEFAULT 0,
    successes       bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    ignored         bigint NOT NULL DEFAULT 0,
    rejections      bigint NOT NULL DEFAULT 0,
    cancelled       bigint NOT NULL DEFAULT 0,
    latency_count   bigint NOT NULL DEFAULT 0,
    latency_sum_ms  double precision NOT NULL DEFAULT 0,
    latency_max_ms  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (service_name, bucket)
);
CREATE INDEX IF NOT EXISTS circuit_breaker_metrics_10m_bucket ON circuit_breaker_metrics_10m (bucket);

-- Who analyses a circuit in which period: the first process to claim a period runs the analysis.
CREATE TABLE IF NOT EXISTS circuitry_analysis_leases (
    service_name    text NOT NULL,
    kind            text NOT NULL,          -- 'periodic', or 'opened' (an analysis triggered by an opening)
    period          bigint NOT NULL,        -- epoch seconds // the kind's interval
    holder          text NOT NULL,
    taken_at        double precision NOT NULL,
    PRIMARY KEY (service_name, kind)
);

-- Transitions alone, by time: what status pages read for "the last hour".
CREATE INDEX IF NOT EXISTS circuit_breaker_events_transitions
    ON circuit_breaker_events (ts) WHERE event_type = 'state_change';

-- A database upgraded from version 8 holds per-minute counts and no ten-minute ones yet: add them up, so that
-- the status of every circuit shows the last hour at once, not an hour later. Only buckets not there yet
-- (this file may run again on a database whose table was dropped: nothing is counted twice).
INSERT INTO circuit_breaker_metrics_10m (service_name, bucket, calls, successes, failures, ignored, rejections,
                                         cancelled, latency_count, latency_sum_ms, latency_max_ms)
SELECT service_name, minute / 10, sum(calls), sum(successes), sum(failures), sum(ignored), sum(rejections),
       sum(cancelled), sum(latency_count), sum(latency_sum_ms), max(latency_max_ms)
FROM circuit_breaker_metrics GROUP BY service_name, minute / 10
ON CONFLICT (service_name, bucket) DO NOTHING;

INSERT INTO circuitry_schema (version, name) VALUES (9, 'second_rollups_and_analysis_leases') ON CONFLICT DO NOTHING;
