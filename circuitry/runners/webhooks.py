"""Webhooks for alerts: each new alert POSTed as JSON to your endpoints — signed, retried, durable,
and delivered once across processes and hosts.

.. code-block:: python

    from circuitry.runners import webhooks

    webhooks.install([webhooks.Webhook("https://ops.example.com/hooks/circuitry", secret=SECRET, name="ops")])

How it works:

* **Durable outbox.** An alert the analyst stores is put in the store's outbox
  (``circuitry_webhook_outbox``, :mod:`circuitry.store.outbox`) right after it is committed, one row
  per endpoint; a catch-up sweep enqueues alerts stored in the last ``catch_up`` seconds that nobody
  enqueued (a crash between the two commits, a worker without webhooks). A row waits there across
  restarts until it is delivered.
* **Once across processes and hosts.** A sender claims a due row with a lease (a compare-and-set
  ``UPDATE``), so one process attempts a delivery at a time, and a 2xx answer settles it for good.
  Delivery is *at least once*, as with any webhook (an answer lost on the way back means a retry):
  every attempt carries the same ``X-Circuitry-Delivery`` id for the receiver to deduplicate on.
* **Signed.** ``X-Circuitry-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the
  endpoint's secret; :func:`verify_signature` checks it and refuses a timestamp outside the replay
  window (5 minutes by default).
* **Retries** with exponential backoff and jitter (a ``Retry-After`` answer is honoured); after
  ``max_attempts`` — or at once for an answer retrying cannot fix (a 4xx other than 408, 425 and 429)
  — the delivery is *dead*: kept, listed by ``circuitry webhooks`` and the dashboard, and requeued
  from either.
* **Never on a protected call's thread.** Requests run on the sender's own daemon threads; the
  analyst's thread only inserts outbox rows.

Endpoint URLs are never logged nor stored (they can carry tokens, as Slack's do): the outbox and the
logs name an endpoint by its ``name``.

(Longer than most modules, about 600 lines with its documentation: the signature, the payload shapes,
the endpoint and the sender are one feature a reader follows top to bottom; the SQL is in
:mod:`circuitry.store.outbox`.)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

from circuitry._meta import version
from circuitry.analysis.alerts import SEVERITY_OF
from circuitry.exceptions import ConfigurationError
from circuitry.instrumentation.logging import isoformat, log
from circuitry.store.outbox import Delivery, Outbox
from circuitry.store.sharing import json_text

if TYPE_CHECKING:
    from circuitry._registry import Registry
    from circuitry.events import Event
    from circuitry.store.backend import Backend
    from circuitry.store.engine import SharedStore

__all__ = ["SIGNATURE_HEADER", "Response", "Webhook", "WebhookSender", "install", "json_payload", "pagerduty",
           "sign", "slack_payload", "verify_signature"]

SIGNATURE_HEADER: Final = "X-Circuitry-Signature"
DELIVERY_HEADER: Final = "X-Circuitry-Delivery"
_SEVERITIES: Final = ("info", "warning", "error", "critical")
#: 4xx answers worth retrying: the others mean the request itself is refused.
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})

Formatter = Callable[[Mapping[str, Any], str], Any]


# -- signatures ---------------------------------------------------------------------------------------

def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body`` sent at ``timestamp`` (Unix seconds):
    ``t=<timestamp>,v1=<hex HMAC-SHA256 of b"<timestamp>." + body>``."""
    mac = hmac.new(_key(secret), str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={int(timestamp)},v1={mac}"


def verify_signature(secret: str | bytes, body: bytes, header: str | None, *, tolerance: float = 300.0,
                     now: float | None = None) -> bool:
    """Whether ``header`` (the :data:`SIGNATURE_HEADER` a receiver got) signs ``body`` with ``secret``
    and was made within ``tolerance`` seconds of ``now`` (the replay window). Compares in constant time.

    Receivers should also remember recent ``X-Circuitry-Delivery`` ids: a retry after a lost answer
    sends the same delivery again (with a fresh signature).
    """
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, _, v = item.strip().partition("=")
        parts.setdefault(k, []).append(v)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if not math.isfinite(now) or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, got) for got in parts.get("v1", []))


# -- payloads -----------------------------------------------------------------------------------------

def json_payload(alert: Mapping[str, Any], delivery_id: str) -> dict[str, Any]:
    """The default body: ``{"type": "circuitry.alert", "delivery_id", "alert": {...}}``, the alert with
    ``id``, ``service_name``, ``alert_type``, ``severity``, ``message``, ``details``, ``created_at``
    (ISO 8601) and ``created_at_epoch``."""
    created = alert.get("created_at")
    epoch = created if isinstance(created, int | float) else alert.get("ts")
    body = {k: alert.get(k) for k in ("id", "service_name", "alert_type", "severity", "message", "details")}
    body["created_at"] = isoformat(float(epoch)) if isinstance(epoch, int | float) else created
    body["created_at_epoch"] = epoch
    return {"type": "circuitry.alert", "delivery_id": delivery_id, "alert": body}


_SLACK_ICON: Final = {"critical": ":red_circle:", "error": ":large_orange_circle:", "warning": ":warning:",
                      "info": ":information_source:"}


def _slack_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Mapping[str, Any], delivery_id: str) -> dict[str, Any]:
    """A Slack incoming-webhook body: a one-line ``text`` (what notifications show) and a section
    block; names and messages escaped for Slack's markup."""
    severity = str(alert.get("severity", "info"))
    name = _slack_text(str(alert.get("service_name", "")))
    message = _slack_text(str(alert.get("message", "")))
    text = f"{_SLACK_ICON.get(severity, '')} [{severity}] {name}: {message}".strip()
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{severity.upper()}* `{name}` — {message}"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{alert.get('alert_type', '')} · "
                                          f"circuitry delivery {delivery_id}"}]},
    ]}


_PD_SEVERITY: Final = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def pagerduty(routing_key: str, *, source: str = "circuitry") -> Formatter:
    """A formatter for PagerDuty's Events API v2 (``https://events.pagerduty.com/v2/enqueue``):
    ``trigger`` events deduplicated by the alert's key; a ``circuit_closed`` alert *resolves* the
    circuit's open incident. The routing key is put in the body when it is sent, never stored.

    An endpoint with this format sends the resolve of every incident it can have triggered: a
    ``circuit_closed`` alert (severity ``info``) passes its ``min_severity`` whenever the
    ``circuit_opened`` alert (``error``) would, so ``min_severity="error"`` still closes the incidents
    it opens (see :meth:`Webhook.wants`)."""
    if not isinstance(routing_key, str) or not routing_key:
        raise ConfigurationError("routing_key must be a non-empty string")

    def fmt(alert: Mapping[str, Any], delivery_id: str) -> dict[str, Any]:
        name = str(alert.get("service_name", ""))
        closed = alert.get("alert_type") == "circuit_closed"
        dedup = f"circuitry:{name}:circuit_opened" if alert.get("alert_type") in ("circuit_opened", "circuit_closed") \
            else str(alert.get("alert_key") or f"circuitry:{name}:{alert.get('alert_type')}")
        body: dict[str, Any] = {"routing_key": routing_key, "event_action": "resolve" if closed else "trigger",
                                "dedup_key": dedup}
        if not closed:
            created = alert.get("created_at")
            body["payload"] = {
                "summary": f"{name}: {alert.get('message', '')}"[:1024], "source": source,
                "severity": _PD_SEVERITY.get(str(alert.get("severity")), "warning"), "component": name,
                "class": alert.get("alert_type"), "custom_details": alert.get("details") or {},
                **({"timestamp": isoformat(float(created))} if isinstance(created, int | float) else {}),
            }
        return body

    fmt.__name__ = "pagerduty"
    fmt.resolves = _PD_RESOLVES  # type: ignore[attr-defined]
    return fmt


#: PagerDuty: the alert types that resolve an incident, and the alert type that triggered it.
_PD_RESOLVES: Final[Mapping[str, str]] = {"circuit_closed": "circuit_opened"}


def _resolves(fmt: str | Formatter) -> Mapping[str, str]:
    """What a format's alerts resolve (``{resolving alert type: triggering alert type}``): PagerDuty's."""
    found = getattr(fmt, "resolves", None)
    return found if isinstance(found, Mapping) else {}


_FORMATS: Final[Mapping[str, Formatter]] = {"json": json_payload, "slack": slack_payload}


# -- endpoints ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Webhook:
    """One endpoint alerts are POSTed to.

    Args:
        url: ``http://`` or ``https://`` URL (never logged nor stored).
        secret: The HMAC-SHA256 key for :data:`SIGNATURE_HEADER` (``None``: unsigned, for receivers
            that cannot verify, such as Slack's incoming webhooks — their URL is the secret).
        name: How the outbox, logs, CLI and dashboard name it (default: ``"webhook-"`` and a hash of the
            URL). Processes sharing a store must give one endpoint the same name.
        format: ``"json"`` (:func:`json_payload`), ``"slack"`` (:func:`slack_payload`) or a callable
            ``(alert, delivery_id) -> JSON-able body`` such as :func:`pagerduty`.
        min_severity: The least severe alert sent (``"info"``: all of them). An alert that resolves an
            incident (a ``circuit_closed`` alert, with :func:`pagerduty`) is sent whenever the alert
            that triggers the incident would be, whatever its own severity.
        services: Only alerts of these circuits (default: all).
        timeout: Seconds an attempt may take to connect, and to wait for each read.
        max_attempts: Attempts before the delivery is dead.
        backoff: Seconds before the first retry; doubled each attempt (jittered: a delay is drawn in
            ``[d/2, d]``), up to ``max_backoff``.
        headers: Extra request headers (e.g. ``Authorization``; not logged).

    .. versionadded:: 0.1.0
    """

    url: str
    secret: str | bytes | None = field(default=None, repr=False)
    name: str | None = None
    format: str | Formatter = "json"
    min_severity: str = "info"
    services: Collection[str] | None = None
    timeout: float = 5.0
    max_attempts: int = 8
    backoff: float = 2.0
    max_backoff: float = 600.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from circuitry._checks import check_int, check_number

        parts = urllib.parse.urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https"):
            raise ConfigurationError("url must be an http:// or https:// URL")
        try:  # a URL that cannot reach a host fails now, not as a dead delivery minutes later
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"url has a bad port: {exc} ({self.url!r})") from None
        host = parts.hostname or ""
        if not host or any(c.isspace() for c in host) or port == 0:
            raise ConfigurationError(f"url must name a host (and a port in 1-65535), got {self.url!r}")
        if self.secret is not None and not (isinstance(self.secret, str | bytes) and self.secret):
            raise ConfigurationError("secret must be a non-empty str or bytes, or None")
        if self.name is None:
            object.__setattr__(self, "name", "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:10])
        elif not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise ConfigurationError(f"name must be a non-empty string of at most 200 characters, got {self.name!r}")
        if isinstance(self.format, str) and self.format not in _FORMATS:
            raise ConfigurationError(f"format must be 'json', 'slack' or a callable, got {self.format!r}")
        if not isinstance(self.format, str) and not callable(self.format):
            raise ConfigurationError(f"format must be 'json', 'slack' or a callable, got {self.format!r}")
        if self.min_severity not in _SEVERITIES:
            raise ConfigurationError(f"min_severity must be one of {', '.join(_SEVERITIES)}, got {self.min_severity!r}")
        if self.services is not None:
            if isinstance(self.services, str | bytes):  # "svc_a" would be a set of its letters
                raise ConfigurationError(f"services must be a collection of circuit names, e.g. "
                                         f"[{self.services!r}], got the string {self.services!r}")
            names = frozenset(self.services)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ConfigurationError(f"services must be non-empty circuit names (None: every circuit), "
                                         f"got {self.services!r}")
            object.__setattr__(self, "services", names)
        if not isinstance(self.headers, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.headers.items()):
            raise ConfigurationError("headers must be a mapping of header names to str values")
        check_number("timeout", self.timeout, lo=0.0, hi=3600.0)
        check_int("max_attempts", self.max_attempts, 1, 1000)
        check_number("backoff", self.backoff, lo=0.0, hi=86400.0)
        check_number("max_backoff", self.max_backoff, lo=0.0, hi=7 * 86400.0)

    @property
    def key(self) -> str:
        assert self.name is not None
        return self.name

    @property
    def severities(self) -> tuple[str, ...]:
        return _SEVERITIES[_SEVERITIES.index(self.min_severity):]

    def wants(self, alert: Mapping[str, Any]) -> bool:
        """Whether ``alert`` is sent here: its circuit is one of ``services``, and its severity is at least
        ``min_severity`` — or it resolves an incident whose trigger would be sent here (PagerDuty's
        ``circuit_closed``: a triggered incident is resolved whatever the filter)."""
        if self.services is not None and alert.get("service_name") not in self.services:
            return False
        if alert.get("severity") in self.severities:
            return True
        trigger = _resolves(self.format).get(str(alert.get("alert_type")))
        return trigger is not None and SEVERITY_OF.get(trigger) in self.severities  # type: ignore[call-overload]

    def body(self, alert: Mapping[str, Any], delivery_id: str) -> bytes:
        fmt = _FORMATS[self.format] if isinstance(self.format, str) else self.format
        made = fmt(alert, delivery_id)
        if isinstance(made, bytes):
            return made
        return json_text(made, separators=(",", ":"), ensure_ascii=False).encode()

    def retry_in(self, attempts: int, rng: random.Random, hint: float | None = None) -> float:
        """Seconds before the next attempt after ``attempts`` attempts: exponential, jittered, capped;
        at least a ``Retry-After`` hint (capped too)."""
        delay = min(self.max_backoff, self.backoff * 2.0 ** max(0, attempts - 1))
        delay = rng.uniform(delay / 2.0, delay)
        if hint is not None and math.isfinite(hint):
            delay = max(delay, min(hint, self.max_backoff))
        return delay


# -- sending ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Response:
    """What an attempt got: an HTTP ``status`` (``None``: no answer), the ``Retry-After`` seconds if
    given, and an ``error`` text when it failed."""

    status: int | None
    retry_after: float | None = None
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer, not a new place to send signed alerts to.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirect)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response:
    """POST ``body`` to ``url`` with ``urllib`` (no redirects followed); never raises for HTTP or network
    errors. Error texts never contain the URL."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(65536)
            return Response(answer.status)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.read(65536)
        return Response(exc.code, _retry_after(exc.headers.get("Retry-After") if exc.headers else None),
                        f"HTTP {exc.code} {exc.reason}")
    except urllib.error.URLError as exc:
        return Response(None, None, f"{type(exc.reason).__name__}: {exc.reason}".replace(url, "<url>"))
    except (TimeoutError, OSError, ValueError) as exc:
        return Response(None, None, f"{type(exc).__name__}: {exc}".replace(url, "<url>"))


Transport = Callable[[str, bytes, Mapping[str, str], float], Response]


class WebhookSender:
    """Takes new alerts into the outbox and delivers them (see the module docstring).

    Args:
        target: Where the outbox is: a store (a :class:`~circuitry.store.engine.SharedStore` — alerts it
            stores are enqueued as they are stored, and the sender stops with it), a backend, or a
            database path (a standalone sender: it delivers what any process enqueued).
        webhooks: The endpoints.
        poll_interval: Seconds between looks at the outbox (new alerts wake the sender at once).
        concurrency: Requests in flight at once.
        catch_up: Seconds back the sweep looks for alerts nobody enqueued (0: no sweep).
        sweep_interval: Seconds between sweeps.
        process: This sender's name in claims (default: the store's ``host:pid``).
        transport: ``(url, body, headers, timeout) -> Response`` (default: :func:`http_post`).
        rng: Random source of the jitter.
        clock: Wall clock for signatures (default: ``time.time``; leases and retries use the
            database's clock).

    .. versionadded:: 0.1.0
    """

    def __init__(self, target: SharedStore | Backend | str, webhooks: Sequence[Webhook], *,
                 poll_interval: float = 1.0, concurrency: int = 4, catch_up: float = 600.0,
                 sweep_interval: float = 10.0, process: str | None = None, transport: Transport | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] | None = None) -> None:
        from circuitry._checks import check_int, check_number
        from circuitry.store.engine import SharedStore, _process_name

        hooks = list(webhooks)
        if not hooks or not all(isinstance(h, Webhook) for h in hooks):
            raise ConfigurationError("webhooks must be a non-empty sequence of Webhook")
        names = [h.key for h in hooks]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"webhook names must be distinct, got {names}")
        self.webhooks = {h.key: h for h in hooks}
        self.poll_interval = check_number("poll_interval", poll_interval, lo=0.001, hi=3600.0)
        self.concurrency = check_int("concurrency", concurrency, 1, 64)
        self.catch_up = check_number("catch_up", catch_up, lo=0.0, hi=30 * 86400.0, lo_open=False)
        self.sweep_interval = check_number("sweep_interval", sweep_interval, lo=0.001, hi=86400.0)
        self.store: SharedStore | None = target if isinstance(target, SharedStore) else None
        if isinstance(target, SharedStore):
            backend: Backend = target.backend
            process = process or target.process
        elif isinstance(target, str):
            from circuitry.store import open_reader

            backend = open_reader(target).backend
        else:
            backend = target
        self.process = process or _process_name()
        self.outbox = Outbox(backend, self.process, timeout=5.0)
        self._transport = transport or http_post
        self._rng = rng or random.Random()
        self._time = clock or time.time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_sweep = -math.inf
        self._last_prune = -math.inf
        self._failing = False
        self.delivered = self.failed = self.dead = 0

    def __repr__(self) -> str:
        return f"<WebhookSender {sorted(self.webhooks)}>"

    # -- enqueueing (the analyst's thread) -------------------------------------------------------------

    def alerts_stored(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Put newly stored alerts (dicts with their ``id``) in the outbox for each endpoint that wants
        them, and wake the sender. Called by the analyst right after it commits them; never raises (what
        fails to go in is found by the catch-up sweep)."""
        items = [(hook.key, _stored(a)) for a in alerts for hook in self.webhooks.values() if hook.wants(a)]
        if not items:
            return
        try:
            self.outbox.enqueue(items)
        except Exception as exc:
            log("warning", "circuitry.webhook_enqueue_failed", alerts=len(alerts), error_type=type(exc).__qualname__,
                error_message=str(exc)[:300], note="the catch-up sweep enqueues them later")
        self._wake.set()

    # -- Runner (beside a store) ----------------------------------------------------------------------

    def transitioned(self, event: Event) -> None:
        pass  # alerts, not transitions, are sent

    def start(self) -> None:
        """Start the sender's thread (idempotent)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="circuitry-webhooks", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop sending (requests in flight finish on their own threads; their rows are settled by
        whoever takes them after the lease)."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.outbox.close()

    def hold(self) -> None:
        self.outbox.hold()

    def release(self) -> None:
        self.outbox.release()

    def drop_idle(self) -> None:
        self.outbox.drop_idle()

    def after_fork(self) -> None:
        self.outbox.inherited()
        self._thread = None
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            try:
                busy = self.run_once()
                if self._failing:
                    self._failing = False
                    log("info", "circuitry.webhooks_recovered")
            except Exception as exc:  # the store is advisory: report once, retry later
                busy = False
                if not self._failing:
                    self._failing = True
                    log("warning", "circuitry.webhooks_failed", error_type=type(exc).__qualname__,
                        error_message=str(exc)[:300])
                self.outbox.close()
            if not busy:
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def run_once(self) -> bool:
        """One round: sweep (when due), claim due deliveries, attempt them, record the results. Returns
        whether it attempted any (then the next round comes at once)."""
        now = self.outbox.now()
        if self.catch_up and now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            self.sweep(now)
        if now - self._last_prune >= 3600.0:
            self._last_prune = now
            self.outbox.prune(delivered_for=7 * 86400.0, dead_for=30 * 86400.0)
        lease = 30.0 + 3 * max(h.timeout for h in self.webhooks.values())
        claimed = self.outbox.claim(list(self.webhooks), lease=lease, limit=self.concurrency)
        if not claimed:
            return False
        results = self._attempt_all(claimed)
        for delivery, response in zip(claimed, results, strict=True):
            self._settle(delivery, response)
        return True

    def sweep(self, now: float) -> int:
        """Enqueue alerts of the last ``catch_up`` seconds that have no row for an endpoint."""
        added = 0
        for hook in self.webhooks.values():
            services = None if hook.services is None else sorted(hook.services)
            missing = self.outbox.missing(hook.key, since=now - self.catch_up, severities=hook.severities,
                                          services=services)
            below = [s for s in _SEVERITIES if s not in hook.severities]
            if below and _resolves(hook.format):  # resolves of lower severity than the filter (see wants())
                missing += [a for a in self.outbox.missing(hook.key, since=now - self.catch_up, severities=below,
                                                           services=services) if hook.wants(a)]
            if missing:
                added += self.outbox.enqueue([(hook.key, a) for a in missing])
        if added:
            log("info", "circuitry.webhooks_caught_up", enqueued=added)
        return added

    def _attempt_all(self, claimed: Sequence[Delivery]) -> list[Response]:
        results: list[Response] = [Response(None, None, "not attempted")] * len(claimed)

        def attempt(i: int, delivery: Delivery) -> None:
            results[i] = self.attempt(delivery)

        if len(claimed) == 1:
            attempt(0, claimed[0])
            return results
        threads = [threading.Thread(target=attempt, args=(i, d), name="circuitry-webhook-send", daemon=True)
                   for i, d in enumerate(claimed)]
        for t in threads:
            t.start()
        for t, d in zip(threads, claimed, strict=True):
            t.join(self.webhooks[d.endpoint].timeout * 3 + 5.0)
        return results

    def attempt(self, delivery: Delivery) -> Response:
        """POST one delivery (signed now) and return what came back; never raises."""
        hook = self.webhooks[delivery.endpoint]
        try:
            body = hook.body(delivery.alert, delivery.delivery_id)
        except Exception as exc:
            return Response(None, None, f"the payload could not be made: {type(exc).__name__}: {exc}")
        headers = {"Content-Type": "application/json", "User-Agent": f"circuitry/{version()}",
                   DELIVERY_HEADER: delivery.delivery_id, "X-Circuitry-Attempt": str(delivery.attempts),
                   **hook.headers}
        if hook.secret is not None:
            headers[SIGNATURE_HEADER] = sign(hook.secret, body, int(self._time()))
        try:
            return self._transport(hook.url, body, headers, hook.timeout)
        except Exception as exc:  # a transport of the application's that raised
            return Response(None, None, f"{type(exc).__name__}: {exc}".replace(hook.url, "<url>"))

    def _settle(self, delivery: Delivery, response: Response) -> None:
        hook = self.webhooks[delivery.endpoint]
        status = response.status
        fields: dict[str, Any] = {"endpoint": hook.key, "delivery_id": delivery.delivery_id,
                                  "service_name": delivery.alert.get("service_name"),
                                  "alert_type": delivery.alert.get("alert_type"), "attempt": delivery.attempts,
                                  "status": status}
        if status is not None and 200 <= status < 300:
            if self.outbox.delivered(delivery, status):
                self.delivered += 1
                log("debug", "circuitry.webhook_delivered", **fields)
            return
        error = response.error or f"HTTP {status}"
        hopeless = status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX
        if hopeless or delivery.attempts >= hook.max_attempts:
            if self.outbox.failed(delivery, status=status, error=error, retry_in=None):
                self.dead += 1
                log("error", "circuitry.webhook_dead", error_message=error, **fields,
                    note="kept in the outbox: `circuitry webhooks --dead` lists it, `circuitry webhooks retry` "
                         "sends it again")
            return
        retry_in = hook.retry_in(delivery.attempts, self._rng, response.retry_after)
        if self.outbox.failed(delivery, status=status, error=error, retry_in=retry_in):
            self.failed += 1
            log("warning", "circuitry.webhook_failed", error_message=error, retry_in=round(retry_in, 3), **fields)


def _stored(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh alert dict as the outbox keeps it."""
    keep = ("id", "service_name", "alert_type", "severity", "message", "details", "created_at", "alert_key")
    out = {k: alert.get(k) for k in keep}
    if out["alert_key"] is None and alert.get("key"):
        out["alert_key"] = alert.get("key")
    return out



def install(webhooks: Sequence[Webhook], *, registry: Registry | None = None, store: SharedStore | None = None,
            **options: Any) -> WebhookSender:
    """Send the alerts of ``store`` (default: the store of ``registry``, default the process-wide
    registry) to ``webhooks``; returns the sender (``options``: :class:`WebhookSender`'s).

    The sender runs beside the store as its analyst does: it starts now, stops with
    :meth:`~circuitry.store.engine.SharedStore.close`, and is restarted in a forked child. (It started
    with the store's writer, so a process that only sends -- no breaker of its own -- sent nothing.)

    Raises:
        ConfigurationError: There is no store (a registry kept in memory has no alerts to send).

    .. versionadded:: 0.1.0
    """
    from circuitry.store.engine import SharedStore

    if store is None:
        from circuitry._registry import default_registry

        found = (default_registry() if registry is None else registry).store
        if not isinstance(found, SharedStore):
            raise ConfigurationError("webhooks need a store: configure a database (circuitry.configure(db=...))")
        store = found
    sender = WebhookSender(store, webhooks, **options)
    store.add_runner(sender)
    sender.start()  # (idempotent: the store's writer starts its runners too)
    return sender
