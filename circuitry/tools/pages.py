"""The dashboard's HTML, made on the server from the read model's plain data.

One rule: every value from the database reaches the page through :func:`e` (HTML-escaped, quotes
included) or :func:`q` (a URL component, then escaped) — names and messages are data, never markup.
A circuit named ``<script>alert(1)</script>`` renders as that text. The page loads one script and one
stylesheet from the package (no CDN); the Content-Security-Policy forbids any other.

(Longer than most modules: one function per part of a page, each short.)
"""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from circuitry.store.records import printable
from circuitry.tools.terminal import retry_text

__all__ = ["Page", "alerts_section", "circuit_live", "e", "layout", "q", "services_live", "webhooks_live"]

STATE_TEXT: Final = {"closed": "closed", "open": "open", "half_open": "half-open", "forced_open": "forced open",
                     "disabled": "forced closed"}
#: What an empty cell shows (an en dash).
NONE: Final = "\u2013"
STATES: Final = ("open", "half_open", "forced_open", "disabled", "closed")


def e(value: Any) -> str:
    """``value`` as HTML text: escaped (``& < > " '``), control characters replaced."""
    return html.escape(printable("" if value is None else str(value)), quote=True)


def q(value: Any) -> str:
    """``value`` as a URL query component, escaped for an attribute."""
    return html.escape(urllib.parse.quote(str(value), safe=""), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return NONE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return NONE
    s = max(0.0, now - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


@dataclass(frozen=True)
class Page:
    """What every page needs to know about the request."""

    base: str  # the app's root path, without a trailing slash ("" at the root)
    now: float
    csrf: str | None  # the form token when actions are allowed, else None
    actions_enabled: bool  # the dashboard has a token at all
    refresh: float

    def url(self, path: str, **params: Any) -> str:
        """An escaped link to ``path`` within the app, with query ``params`` (``None`` left out)."""
        pairs = [(k, v) for k, v in params.items() if v is not None and v != "" and v is not False]
        flat: list[tuple[str, str]] = []
        for k, v in pairs:
            if isinstance(v, list | tuple):
                flat += [(k, str(i)) for i in v]
            else:
                flat.append((k, "1" if v is True else str(v)))
        query = ("?" + urllib.parse.urlencode(flat)) if flat else ""
        return html.escape(f"{self.base}{path}{query}", quote=True)


def state_badge(state: str) -> str:
    return f'<span class="badge state-{e(state)}">{e(STATE_TEXT.get(state, state))}</span>'


def layout(page: Page, title: str, body: str, *, live: str, active: str) -> str:
    nav = "".join(
        f'<a href="{page.url(path)}"{" aria-current=page" if key == active else ""}>{label}</a>'
        for key, path, label in (("services", "/", "Services"), ("alerts", "/alerts", "Alerts"),
                                 ("webhooks", "/webhooks", "Webhooks")))
    if page.csrf is not None:
        auth = (f'<form method="post" action="{page.url("/logout")}" class="inline">'
                f'<input type="hidden" name="csrf" value="{e(page.csrf)}">'
                '<button type="submit" class="link">Lock actions</button></form>')
    elif page.actions_enabled:
        auth = f'<a href="{page.url("/login")}">Unlock actions</a>'
    else:
        auth = '<span class="muted" title="start the dashboard with a token to allow actions">read-only</span>'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title>"
        f'<link rel="stylesheet" href="{page.url("/static/dashboard.css")}">'
        f'<script src="{page.url("/static/dashboard.js")}" defer></script></head>'
        f'<body data-refresh="{page.refresh:g}"><header><strong>circuitry</strong><nav>{nav}</nav>'
        f'<span class="auth">{auth}</span></header><main>{body}'
        f'<div id="live" data-live="1">{live}</div></main></body></html>')


def _stamp(page: Page) -> str:
    return f'<p class="stamp">Updated <time data-updated="{page.now:.3f}">{e(when(page.now))} UTC</time></p>'


def _recommendation(s: Mapping[str, Any]) -> str:
    pat = s.get("pattern")
    if not pat or not pat.get("type"):
        return NONE
    parts = []
    thr, cur_thr = pat.get("suggested_threshold"), s.get("failure_threshold")
    if thr is not None and cur_thr is not None and thr != cur_thr:
        parts.append(f"threshold {cur_thr} → {thr}")
    tmo, cur_tmo = pat.get("suggested_timeout"), s.get("recovery_timeout")
    if tmo is not None and cur_tmo is not None and tmo != cur_tmo:
        parts.append(f"timeout {cur_tmo} → {tmo} s")
    return e(", ".join(parts) if parts else "keep settings")


def _summary(counts: Mapping[str, int], alerts: Mapping[str, int], dead: int) -> str:
    chips = "".join(f'<span class="chip state-{e(s)}">{counts[s]} {e(STATE_TEXT[s])}</span>'
                    for s in STATES if counts.get(s))
    alert_text = ", ".join(f"{n} {e(sev)}" for sev, n in sorted(alerts.items())) or "none"
    dead_text = f' · <span class="chip dead">{dead} dead webhook deliveries</span>' if dead else ""
    return (f'<p class="summary">{chips or "no circuits yet"} · unacknowledged alerts: {alert_text}'
            f"{dead_text}</p>")


def services_live(page: Page, data: Mapping[str, Any], *, counts: Mapping[str, int], alerts: Mapping[str, int],
                  dead: int, params: Mapping[str, Any]) -> str:
    rows = []
    for s in data["rows"]:
        h = s["last_hour"]
        decided = h["successes"] + h["failures"]
        name = s["service_name"]
        rate = f"{100 * h['failure_rate']:.1f}%" if decided else NONE
        last = s.get("last_transition")
        if last:
            frm = str(last["from_state"] or "closed")
            to = str(last["to_state"])
            change = (f"{e(STATE_TEXT.get(frm, frm))} → {e(STATE_TEXT.get(to, to))}<br>"
                      f'<span class="muted">{e(ago(last["ts"], page.now))}</span>')
        else:
            change = NONE
        pat = s.get("pattern")
        pattern = NONE
        if pat and pat.get("type"):
            confidence = f"{pat['confidence']:.2f}"
            pattern = f'{e(pat["type"])} <span class="muted">{e(confidence)}</span>'
        n_alerts = s["unacknowledged_alerts"]
        worst = s.get("worst_alert")
        alerts_cell = (f'<a href="{page.url("/alerts", name=name)}" class="sev-{e(worst)}">{n_alerts}</a>'
                       if n_alerts else "0")
        rows.append(
            f'<tr data-circuit="{e(name)}"><td class="name"><a href="{page.url("/circuit", name=name)}">{e(name)}</a>'
            f'</td><td>{state_badge(s["state"])}</td><td class="num">{rate}</td>'
            f'<td class="num">{h["total_calls"]}</td><td class="num">{h["rejections"]}</td>'
            f"<td>{change}</td><td>{pattern}</td><td>{_recommendation(s)}</td>"
            f'<td class="num">{alerts_cell}</td></tr>')
    total, offset, limit = data["total"], data["offset"], data["limit"]
    shown = f"{offset + 1}\u2013{offset + len(data['rows'])} of {total}" if data["rows"] else f"0 of {total}"
    nav = []
    if offset > 0:
        nav.append(f'<a rel="prev" href="{page.url("/", **{**params, "offset": max(0, offset - limit)})}">'
                   "← previous</a>")
    if offset + limit < total:
        nav.append(f'<a rel="next" href="{page.url("/", **{**params, "offset": offset + limit})}">next →</a>')
    table = ("<table class=services><thead><tr><th>Circuit</th><th>State</th><th>Failure rate (1 h)</th>"
             "<th>Calls (1 h)</th><th>Refused (1 h)</th><th>Last transition</th><th>Pattern</th>"
             "<th>Recommendation</th><th>Alerts</th></tr></thead><tbody>"
             + ("".join(rows) or '<tr><td colspan=9 class=muted>No circuit matches.</td></tr>')
             + "</tbody></table>")
    return (_summary(counts, alerts, dead) + f'<p class="pager"><span class="shown">{shown}</span> '
            + " ".join(nav) + "</p>" + table + _stamp(page))


def services_form(page: Page, params: Mapping[str, Any]) -> str:
    options = "".join(f'<option value="{e(s)}"{" selected" if s in (params.get("state") or ()) else ""}>'
                      f"{e(STATE_TEXT[s])}</option>" for s in STATES)
    sorts = "".join(f'<option value="{k}"{" selected" if params.get("sort") == k else ""}>{label}</option>'
                    for k, label in (("attention", "most urgent first"), ("name", "by name")))
    return (f'<form class="filters" method="get" action="{page.url("/")}">'
            f'<input type="search" name="q" value="{e(params.get("q") or "")}" placeholder="Search circuits" '
            'aria-label="Search circuits">'
            f'<select name="state" aria-label="State"><option value="">any state</option>{options}</select>'
            f'<label><input type="checkbox" name="alerting" value="1"{" checked" if params.get("alerting") else ""}>'
            " with alerts</label>"
            f'<select name="sort" aria-label="Sort">{sorts}</select><button type="submit">Show</button></form>')


def _action_form(page: Page, action: str, label: str, *, name: str | None = None, alert_id: int | None = None,
                 delivery_id: int | None = None, confirm: str | None = None, danger: bool = False) -> str:
    if page.csrf is None:
        return ""
    fields = [("action", action), ("csrf", page.csrf)]
    if name is not None:
        fields.append(("name", name))
    if alert_id is not None:
        fields.append(("id", str(alert_id)))
    if delivery_id is not None:
        fields.append(("id", str(delivery_id)))
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(v)}">' for k, v in fields)
    conf = f' data-confirm="{e(confirm)}"' if confirm else ""
    return (f'<form method="post" action="{page.url("/action")}" class="inline"{conf}>{hidden}'
            f'<button type="submit" class="{"danger" if danger else ""}" data-action="{e(action)}">{e(label)}'
            "</button></form>")


def alerts_section(page: Page, rows: Sequence[Mapping[str, Any]], *, circuit: str | None = None) -> str:
    """Alerts as a table with acknowledge buttons; on a circuit's page (``circuit``) without the circuit
    column, and acknowledging returns there."""
    show_service = circuit is None
    if not rows:
        return '<p class="muted">No alerts.</p>'
    out = []
    for a in rows:
        ack = ('<span class="muted">acknowledged</span>' if a["acknowledged"]
               else _action_form(page, "ack", "Acknowledge", alert_id=a["id"], name=circuit))
        svc = (f'<td class="name"><a href="{page.url("/circuit", name=a["service_name"])}">{e(a["service_name"])}</a>'
               "</td>" if show_service else "")
        out.append(f'<tr data-alert="{e(a["id"])}"><td>{e(a["created_at"])}</td>'
                   f'<td><span class="sev sev-{e(a["severity"])}">{e(a["severity"])}</span></td>{svc}'
                   f'<td>{e(a["alert_type"])}</td><td class="message">{e(a["message"])}</td>'
                   f'<td class="num">{e(a["occurrences"])}</td><td>{ack}</td></tr>')
    head = "<th>Circuit</th>" if show_service else ""
    return (f"<table class=alerts><thead><tr><th>Created (UTC)</th><th>Severity</th>{head}<th>Type</th>"
            "<th>Message</th><th>Times</th><th></th></tr></thead><tbody>" + "".join(out) + "</tbody></table>")


def circuit_live(page: Page, s: Mapping[str, Any], *, svg: str, window: str, windows: Sequence[str],
                 transitions: Sequence[Mapping[str, Any]], patterns: Sequence[Mapping[str, Any]],
                 alerts: Sequence[Mapping[str, Any]], words: Sequence[str]) -> str:
    name = s["service_name"]
    h = s["last_hour"]
    decided = h["successes"] + h["failures"]
    facts = [("State", state_badge(s["state"])),
             ("Failure rate (1 h)", e(f"{100 * h['failure_rate']:.1f}%" if decided else NONE)),
             ("Calls (1 h)", e(h["total_calls"])), ("Refused (1 h)", e(h["rejections"])),
             ("Open (1 h)", e(f"{h['circuit_open_duration']} s")),
             ("Retry in", e(retry_text(s.get("retry_after"), " s") or NONE)),
             ("Threshold / timeout", e(f"{s.get('failure_threshold')} failures / {s.get('recovery_timeout')} s")),
             ("Recommendation", _recommendation(s)),
             ("Last written by", e(s.get("updated_by") or NONE))]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    tabs = " ".join(
        f'<a href="{page.url("/circuit", name=name, window=w)}"{" aria-current=page" if w == window else ""}>{w}</a>'
        for w in windows)
    trs = "".join(
        f"<tr><td>{e(when(t['ts']))}</td><td>{state_badge(str(t['from_state'] or 'closed'))} → "
        f"{state_badge(str(t['to_state']))}</td><td>{e(t.get('reason') or NONE)}</td>"
        f"<td class=message>{e(t.get('error_type') or '')}{': ' if t.get('error_message') else ''}"
        f"{e(t.get('error_message') or '')}</td><td>{e(t.get('process') or '')}</td></tr>"
        for t in reversed(transitions))
    pats = "".join(
        f"<tr><td>{e(when(p['ts']))}</td><td>{e(p['pattern_type'] or 'abstained')}</td>"
        f"<td class=num>{e(round(float(p['confidence_score']), 2))}</td><td class=num>{e(p['failure_count'])}</td>"
        f"<td class=num>{e(p['suggested_threshold'] if p['suggested_threshold'] is not None else NONE)}</td>"
        f"<td class=num>{e(p['suggested_timeout'] if p['suggested_timeout'] is not None else NONE)}</td></tr>"
        for p in patterns)
    return (f'<dl class="facts">{dl}</dl><p class="windows">Window: {tabs}</p>'
            f'<figure class="timeline">{svg}<figcaption>{e(" · ".join(words))}</figcaption></figure>'
            "<h2>Transitions</h2>"
            + (f"<table class=transitions><thead><tr><th>When (UTC)</th><th>Change</th><th>Reason</th><th>Error</th>"
               f"<th>By</th></tr></thead><tbody>{trs}</tbody></table>" if trs
               else '<p class="muted">No transition in this window.</p>')
            + "<h2>Alerts</h2>" + alerts_section(page, alerts, circuit=name)
            + "<h2>Patterns</h2>"
            + (f"<table class=patterns><thead><tr><th>When (UTC)</th><th>Pattern</th><th>Confidence</th>"
               f"<th>Failures</th><th>Threshold</th><th>Timeout</th></tr></thead><tbody>{pats}</tbody></table>"
               if pats else '<p class="muted">No pattern detected yet.</p>')
            + _stamp(page))


def circuit_actions(page: Page, name: str) -> str:
    if page.csrf is None:
        return ""
    return ('<p class="actions">'
            + _action_form(page, "reset", "Reset", name=name, confirm=f"Reset {name}? It closes and counts afresh.")
            + _action_form(page, "open", "Force open", name=name, danger=True,
                           confirm=f"Force {name} open? Every call is refused until it is reset.")
            + _action_form(page, "close", "Force closed", name=name, danger=True,
                           confirm=f"Force {name} closed? Every call goes through, it never trips, until reset.")
            + _action_form(page, "ack_service", "Acknowledge all its alerts", name=name)
            + "</p>")


def webhooks_live(page: Page, counts: Mapping[str, Mapping[str, int]], rows: Sequence[Mapping[str, Any]]) -> str:
    summary = "".join(
        f"<li><strong>{e(endpoint)}</strong>: " + ", ".join(f"{n} {e(s)}" for s, n in sorted(by.items())) + "</li>"
        for endpoint, by in counts.items()) or '<li class="muted">No webhook delivery yet.</li>'
    out = []
    for r in rows:
        raw = r.get("payload")
        payload: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
        retry = (_action_form(page, "retry", "Send again", delivery_id=int(r["id"])) if r["state"] == "dead" else "")
        out.append(f'<tr data-delivery="{e(r["id"])}"><td>{e(r["id"])}</td><td>{e(r["endpoint"])}</td>'
                   f'<td>{e(r.get("service_name") or NONE)}</td><td>{e(payload.get("alert_type") or NONE)}</td>'
                   f'<td><span class="badge dl-{e(r["state"])}">{e(r["state"])}</span></td>'
                   f'<td class=num>{e(r["attempts"])}</td>'
                   f'<td>{e(when(r["next_attempt_at"]) if r["state"] == "pending" else NONE)}</td>'
                   f'<td class=num>{e(r["last_status"] if r["last_status"] is not None else NONE)}</td>'
                   f'<td class=message>{e(r["last_error"] or "")}</td><td>{retry}</td></tr>')
    any_dead = any(by.get("dead") for by in counts.values())
    retry_all = _action_form(page, "retry_dead", "Send every dead delivery again") if any_dead else ""
    table = ("<table class=deliveries><thead><tr><th>ID</th><th>Endpoint</th><th>Circuit</th><th>Alert</th>"
             "<th>State</th><th>Attempts</th><th>Next try (UTC)</th><th>HTTP</th><th>Last error</th><th></th></tr>"
             "</thead><tbody>" + "".join(out) + "</tbody></table>") if out else '<p class="muted">Nothing here.</p>'
    return f'<ul class="endpoints">{summary}</ul><p>{retry_all}</p>{table}{_stamp(page)}'
