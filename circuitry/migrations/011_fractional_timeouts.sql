-- circuitry schema, version 11: open periods and suggested timeouts with a fraction of a second (a
-- breaker's recovery_timeout=0.4, a suggested 2.5 s) are stored as they are, not rounded.
--
-- Nothing to change in SQLite: a column declared INTEGER keeps a value with a fraction as REAL (type
-- affinity converts only what converts without loss). Only the version is recorded; the PostgreSQL
-- migration of the same number changes those columns' type.

INSERT OR IGNORE INTO circuitry_schema (version, name) VALUES (11, 'fractional_timeouts');
