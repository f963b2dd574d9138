"""The PostgreSQL backend (``pip install 'circuitry-breaker[postgres]'``): several hosts share their circuits
through one server. Importing this package imports psycopg."""

from circuitry.store.postgres.backend import PostgresBackend, PostgresStore, mask_url

__all__ = ["PostgresBackend", "PostgresStore", "mask_url"]
