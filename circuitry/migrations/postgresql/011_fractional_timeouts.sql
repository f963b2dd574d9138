-- circuitry schema, version 11 (PostgreSQL): open periods and suggested timeouts with a fraction of a
-- second (a breaker's recovery_timeout=0.4, a suggested 2.5 s) are stored as they are, not rounded.
-- Plain SQL, idempotent (altering a column to the type it has changes nothing).

ALTER TABLE circuit_breaker_states ALTER COLUMN recovery_timeout TYPE double precision;
ALTER TABLE circuit_breaker_failure_patterns ALTER COLUMN suggested_timeout TYPE double precision;

INSERT INTO circuitry_schema (version, name) VALUES (11, 'fractional_timeouts') ON CONFLICT DO NOTHING;
