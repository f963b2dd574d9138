"""History as the analysis reads it from a store: the per-second counts, the per-minute rollups and the
breaker's transitions of one circuit, and :func:`analyse_stored`, the one path from them to
:func:`circuitry.analysis.analyse` (the analyst, ``get_recommendations()`` and ``circuitry recommend``).
"""

from __future__ import annotations

from circuitry.analysis.engine import Analysis, analyse
from circuitry.analysis.history import MinuteRollup
from circuitry.analysis.predict import DEFAULT_HORIZON
from circuitry.analysis.replay import Settings, Transition
from circuitry.analysis.series import Series
from circuitry.store.readmodel import ReadModel, json_object

__all__ = ["ROLLUP_SPAN", "analyse_stored", "rollups_of", "transitions_of"]

#: Seconds of per-minute rollups read for a service's failure rate between incidents.
ROLLUP_SPAN = 86_400.0


def rollups_of(read: ReadModel, name: str, since: float, until: float) -> list[MinuteRollup]:
    """The per-minute rollups as the analysis reads them. The table's ``calls`` is every call (refused,
    ignored and cancelled ones too); a rollup's ``calls`` is the decided ones: successes and failures."""
    out = []
    for m in read.metrics(name, since, until):
        successes, failures = int(m["successes"] or 0), int(m["failures"] or 0)
        out.append(MinuteRollup(int(m["minute"]), successes + failures, successes, failures,
                                int(m["rejections"] or 0), int(m["ignored"] or 0), int(m["cancelled"] or 0)))
    return out


def transitions_of(read: ReadModel, name: str, since: float, until: float) -> list[Transition]:
    """The breaker's state changes as the analysis reads them."""
    return [Transition(float(r["ts"]), r["from_state"] or "closed", r["to_state"] or "closed",
                       str(json_object(r["additional_data"]).get("reason") or ""))
            for r in read.transitions(name, since, until)]


def analyse_stored(read: ReadModel, name: str, *, now: float, window: float, settings: Settings,
                   replay: float = 3600.0, horizon: float | None = DEFAULT_HORIZON) -> Analysis:
    """Analyse circuit ``name`` from what the store holds: the per-second counts of the last ``replay``
    seconds (the label reads the last ``window`` of them -- fewer if the first stored call is more recent:
    seconds before a circuit's first call are no history of it; the recommendation replays all), the breaker's
    transitions over them, and a day of per-minute rollups; ``settings`` are the ones in force.

    This is the one path from stored history to :func:`circuitry.analysis.analyse` -- the analyst, the
    explicit ``get_recommendations()`` and ``circuitry recommend`` all take it.
    """
    since = now - max(window, replay)
    rows = read.series(name, since, now)
    if rows:  # a circuit younger than the window: its history starts at its first call, not before (the
        # label needs a minute of it, MIN_SPAN; the replay priced 20 minutes "per hour" over 60)
        since = max(since, float(rows[0][0]))
        window = max(1.0, min(window, now - since))
    series = Series.from_rows(rows, start=since, end=now)
    transitions = transitions_of(read, name, since - 3600.0, now)
    history = rollups_of(read, name, now - ROLLUP_SPAN, now)
    return analyse(series, now=now, current_threshold=settings.threshold, current_timeout=settings.timeout,
                   current_backoff=settings.backoff, current_max_timeout=settings.max_timeout, window=window,
                   transitions=transitions, history=history, horizon=horizon)
