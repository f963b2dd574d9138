"""PostgreSQL connections as the sharing engine sees them: the dialect (``?`` placeholders, plain
numbers and UTC text out), text made storable, credentials masked in every message."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict

from circuitry.exceptions import StoreError
from circuitry.store.sharing import INSERT_EVENT

__all__ = ["NumericLoader", "Secrets", "TimestampLoader", "WouldWaitError", "mask_url", "pg_sql"]


# -- credentials --------------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """``url`` without its password (in the authority or as a ``password=`` parameter)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        auth, _, hosts = netloc.rpartition("@")
        user = auth.split(":", 1)[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{out}?{query}" if query else out


class Secrets:
    """Masks every form of a password the URL carries in a text (an error message, a log line)."""

    def __init__(self, url: str) -> None:
        found: set[str] = set()
        with contextlib.suppress(Exception):
            pw = conninfo_to_dict(url).get("password")
            if pw:
                found.add(str(pw))
        with contextlib.suppress(ValueError):
            raw = urlsplit(url).password
            if raw:
                found.update({raw, unquote(raw), quote(unquote(raw), safe="")})
        for m in re.finditer(r"password=([^&\s]+)", url):
            found.update({m.group(1), unquote(m.group(1))})
        self._words = sorted((w for w in found if w), key=len, reverse=True)

    def mask(self, text: str) -> str:
        for word in self._words:
            text = text.replace(word, "***")
        return text


# -- dialect ------------------------------------------------------------------------------------------


class NumericLoader(Loader):
    """``numeric`` (what ``sum()`` of integers is) as ``int`` when whole, else ``float``."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class TimestampLoader(Loader):
    """``timestamptz`` as the UTC text SQLite keeps (``YYYY-MM-DD HH:MM:SS.fff``): one shape for both."""

    def load(self, data: Any) -> str:
        text = bytes(data).decode()
        if text.endswith("+00"):
            text = text[:-3]
        elif text.endswith("+00:00"):
            text = text[:-6]
        head, _, frac = text.partition(".")
        return f"{head}.{(frac + '000')[:3]}" if len(head) == 19 else text


_PLACEHOLDERS: dict[str, str] = {}
#: Plain multi-row INSERTs the engine sends with executemany(), sent as COPY instead: the same rows, a
#: fifth of the client's CPU per row (the writer shares the interpreter with protected calls).
_COPY: Final = {INSERT_EVENT: "COPY circuit_breaker_events (" + INSERT_EVENT.split("(", 1)[1].split(")", 1)[0]
                + ") FROM STDIN"}


def pg_sql(sql: str) -> str:
    """The engine's SQL with ``%s`` placeholders (``%`` escaped); cached — the engine has few statements."""
    got = _PLACEHOLDERS.get(sql)
    if got is None:
        got = sql.replace("%", "%%").replace("?", "%s")
        if len(_PLACEHOLDERS) < 4096:
            _PLACEHOLDERS[sql] = got
    return got


def _storable(value: str) -> str:
    """``value`` as PostgreSQL's text can hold it: NUL and lone surrogates become U+FFFD / ``?``."""
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _params(row: Sequence[Any]) -> Sequence[Any]:
    """``row`` with every text PostgreSQL could not store made storable (an exception's message may hold
    a NUL or a lone surrogate; SQLite stores the first, psycopg refuses both, which would stop the
    queue). Rows of plain ASCII text — nearly all — are passed on as they are."""
    for v in row:
        if type(v) is str and (not v.isascii() or "\x00" in v):
            return tuple(_storable(x) if type(x) is str else x for x in row)
    return row


class _Conn:
    """A :class:`~circuitry.store.backend.Connection` over psycopg (autocommit; explicit transactions)."""

    __slots__ = ("caught_up", "pg", "read_only", "secrets")

    def __init__(self, raw: psycopg.Connection[tuple[Any, ...]], secrets: Secrets, *, read_only: bool) -> None:
        self.pg = raw  # not ``raw``: the read model takes a connection with ``raw`` for a sqlite3 one
        self.secrets = secrets
        self.read_only = read_only
        self.caught_up = False  # the writer has read every row on this connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.pg.execute(pg_sql(sql), _params(params)) if params else self.pg.execute(sql.encode())
        return cur.fetchall() if cur.description is not None else []

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if not params:
            return
        copy = _COPY.get(sql)
        if copy is not None:
            with self.pg.cursor() as cur, cur.copy(copy) as rows:
                for p in params:
                    rows.write_row(_params(p))
            return
        with self.pg.cursor() as cur:
            cur.executemany(pg_sql(sql), [_params(p) for p in params])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.pg.execute(b"BEGIN")
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.pg.execute(b"ROLLBACK")
            raise
        self.pg.execute(b"COMMIT")

    def now(self) -> float:
        row = self.pg.execute(b"SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One statement for :meth:`ReadModel.query`: in a read-only transaction that is rolled back (so a
        ``SET`` cannot outlive it), always as one prepared statement (never several). ``?`` placeholders,
        or psycopg's ``%s`` when the statement has no ``?``."""
        text = pg_sql(sql) if "?" in sql else sql
        self.pg.execute(b"BEGIN READ ONLY")
        try:
            cur = self.pg.execute(text, params if params else None, prepare=True)
            names = [d.name for d in cur.description or ()]
            rows = cur.fetchall() if cur.description is not None else []
        finally:
            with contextlib.suppress(Exception):
                self.pg.execute(b"ROLLBACK")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def close(self) -> None:
        self.pg.close()


class WouldWaitError(StoreError):
    """A reader was asked for an answer without waiting: a network round trip is waiting."""


# -- the backend --------------------------------------------------------------------------------------
