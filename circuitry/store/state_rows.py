"""A circuit's shared row of ``circuit_breaker_states`` as the engine reads it: its columns, the next
change number, and every row read checked -- SQLite keeps whatever an ``UPDATE`` by hand gives it, and
a text ``open_until`` raised in a protected call that adopted it -- and, where it cannot be used as it
is, repaired (:func:`repair_row`). The rules of sharing it are in :mod:`circuitry.store.sharing`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from circuitry.instrumentation.logging import log
from circuitry.store.backend import Connection

__all__ = ["NEXT_SEQ", "STATE_COLUMNS", "clean_row", "repair_row"]

STATE_COLUMNS: Final = ("service_name, current_state, version, opened_at, open_until, open_for, reopen_count, "
                        "change_seq, failure_count")
#: The next ``change_seq``. (The bound leaves out a text value SQLite may hold after an UPDATE by hand: it
#: orders text above every number, so max() was the text, "+ 1" made 1 of it, and every later write got
#: a number below what the other processes had seen: they stopped seeing changes.)
NEXT_SEQ: Final = ("(SELECT coalesce(max(change_seq), 0) + 1 FROM circuit_breaker_states "
                   "WHERE change_seq < 9000000000000000000)")

#: How far above the table's ``change_seq`` a repaired row's goes (see :func:`repair_row`).
_REPAIR_JUMP: Final = 1_000_000
#: The numbers of a state row (``STATE_COLUMNS`` positions): times and lengths, then counts.
_TIMES: Final = ((3, "opened_at"), (4, "open_until"), (5, "open_for"))
_COUNTS: Final = ((6, "reopen_count"), (7, "change_seq"), (8, "failure_count"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def clean_row(row: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """A state row (``STATE_COLUMNS``) as the engine can use it, and the columns that held no usable
    value. SQLite keeps whatever it is given, so a row written by hand may hold text where a number
    belongs (``open_until = 'x'``); used as it is, it raised in a protected call that adopted it and in
    every writer cycle after. A time that is not a finite number reads as unknown (``None``), a count
    as 0, a version as -1 (older than any a process holds, so never adopted over what it has)."""
    out = list(row)
    bad: list[str] = []
    if not isinstance(out[2], int) or isinstance(out[2], bool):
        if _number(out[2]) and float(out[2]).is_integer():
            out[2] = int(out[2])
        else:
            out[2] = -1
            bad.append("version")
    for i, column in _TIMES:
        if out[i] is not None and not _number(out[i]):
            out[i] = None
            bad.append(column)
        elif out[i] is not None:
            out[i] = float(out[i])
    for i, column in _COUNTS:
        if out[i] is not None and not (_number(out[i]) and float(out[i]).is_integer()):
            out[i] = 0
            bad.append(column)
        elif out[i] is not None:
            out[i] = int(out[i])
    if not isinstance(out[1], str):
        out[1] = str(out[1])  # an unknown state: the breaker is left as it is (see Sharing.adopt)
        bad.append("current_state")
    return tuple(out), tuple(bad)


def repair_row(conn: Connection, row: tuple[Any, ...], bad: Sequence[str]) -> tuple[Any, ...]:
    """Write the unusable values of a circuit's row (see :func:`clean_row`) as what they were read as,
    and a ``change_seq`` (and, if it was damaged, a version) far above the table's: every process must
    see the repaired row, and the damaged values may have been the newest (``change_seq`` is counted
    over every write to the table, so it exceeds every version; the jump covers the numbers the
    damage hid). Said once per repair: the row was written by something other than circuitry."""
    values = {"opened_at": row[3], "open_until": row[4], "open_for": row[5], "reopen_count": row[6],
              "failure_count": row[8]}
    sets = [f"{column} = ?" for column in bad if column in values]
    params = [values[column] for column in bad if column in values]
    ahead = f"{NEXT_SEQ} + {_REPAIR_JUMP}"
    if "version" in bad:
        sets.append(f"version = {ahead}")
    if "current_state" in bad:
        sets.append("current_state = 'closed'")
    sets.append(f"change_seq = {ahead}")
    got = conn.execute(f"UPDATE circuit_breaker_states SET {', '.join(sets)} "
                       f"WHERE service_name = ? RETURNING {STATE_COLUMNS}", (*params, row[0]))
    log("warning", "circuitry.store_row_repaired", circuit=row[0], columns=list(bad),
        note="the circuit's stored state held values circuitry cannot use (written by hand or by another "
             "tool); they were reset, and every process adopts the repaired row")
    return clean_row(got[0])[0] if got else row
