"""Webhooks for alerts: signed JSON POSTs from a durable outbox, retried with backoff, dead-lettered,
delivered once across senders — against a real HTTP receiver on 127.0.0.1 that fails, hangs and
answers 500s. Retries are timed by a fake clock (the outbox reads the database's clock, the backend's)."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from circuitry import Registry
from circuitry.exceptions import ConfigurationError
from circuitry.runners import webhooks
from circuitry.runners.webhooks import Response, Webhook, WebhookSender, sign, verify_signature
from circuitry.store import SQLiteStore, open_reader
from circuitry.store.outbox import Outbox
from circuitry.store.sqlite.backend import SQLiteBackend
from circuitry.testing import FakeClock

from .conftest import eventually
from .receiver import Receiver

SECRET = "s3cret-key"


def alert(i: int = 1, *, severity: str = "error", service: str = "payments") -> dict[str, Any]:
    return {"id": i, "service_name": service, "alert_type": "circuit_opened", "severity": severity,
            "message": f"circuit {service} opened after 5 failures", "details": {"failures": 5},
            "created_at": 1_700_000_000.0 + i, "key": f"{service}:circuit_opened"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> SQLiteBackend:
    b = SQLiteBackend(tmp_path / "app.db", clock=clock)
    b.connect("writer", timeout=5.0).close()  # create the tables
    return b


def sender(backend: SQLiteBackend, clock: FakeClock, *hooks: Webhook, process: str = "host-a:1",
           **options: Any) -> WebhookSender:
    options.setdefault("catch_up", 0.0)
    return WebhookSender(backend, list(hooks), process=process, rng=random.Random(1), clock=clock.time, **options)


def hook(url: str, **options: Any) -> Webhook:
    options.setdefault("secret", SECRET)
    options.setdefault("name", "ops")
    options.setdefault("timeout", 30.0)  # a liveness bound: the local receiver answers, however busy the machine
    return Webhook(url, **options)


def outbox_rows(path: Path) -> list[dict[str, Any]]:
    return open_reader(path).deliveries(limit=1000)


# -- signatures ---------------------------------------------------------------------------------------

def test_signature_verifies_and_refuses_tampering_other_keys_and_replays() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature(SECRET, body, header, now=1_700_000_000 + 299)
    assert not verify_signature(SECRET, body + b" ", header, now=1_700_000_000)
    assert not verify_signature("other", body, header, now=1_700_000_000)
    assert not verify_signature(SECRET, body, header, now=1_700_000_000 + 301)  # replay window
    assert not verify_signature(SECRET, body, header, now=1_700_000_000 - 301)
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "v1=abc")
    assert not verify_signature(SECRET, body, "t=notanumber,v1=abc")
    rotated = header + ",v1=" + "0" * 64  # several signatures (key rotation): one must match
    assert verify_signature(SECRET, body, rotated, now=1_700_000_000)


def test_webhook_configuration_is_validated_and_urls_are_not_in_the_repr() -> None:
    h = Webhook("https://hooks.example.com/services/T0/B0/XYZTOKEN", secret="k")
    assert h.name is not None and h.name.startswith("webhook-") and "XYZTOKEN" not in h.name
    assert "k'" not in repr(h) and "secret" not in repr(h)
    for bad in ({"url": "ftp://x"}, {"url": "https://x", "format": "xml"}, {"url": "https://x", "timeout": 0},
                {"url": "https://x", "max_attempts": 0}, {"url": "https://x", "min_severity": "loud"},
                {"url": "https://x", "secret": ""}):
        with pytest.raises(ConfigurationError):
            Webhook(**bad)  # type: ignore[arg-type]
    # each of these was accepted, and every delivery to it retried until dead (minutes, with the defaults)
    for url in ("http:///hooks", "http:/localhost:8000/h", "http://local host/h", "http://x:99999/h",
                "http://x:0/h"):
        with pytest.raises(ConfigurationError, match="url"):
            Webhook(url)
    # services="svc_a" was the set of its letters, and routed nothing; an empty filter routed nothing either
    for services in ("svc_a", [], [123]):
        with pytest.raises(ConfigurationError, match="services"):
            Webhook("https://x", services=services)  # type: ignore[arg-type]
    assert Webhook("https://x:8443/h", services=["svc_a"]).services == frozenset({"svc_a"})
    with pytest.raises(ConfigurationError, match="headers"):
        Webhook("https://x", headers=["Authorization"])  # type: ignore[arg-type]


# -- delivering ---------------------------------------------------------------------------------------

def test_delivers_a_signed_json_post_with_a_delivery_id(backend: SQLiteBackend, clock: FakeClock,
                                                        tmp_path: Path) -> None:
    with Receiver() as rx:
        s = sender(backend, clock, hook(rx.url))
        s.alerts_stored([alert(7)])
        assert s.run_once()
        assert len(rx.received) == 1
        got = rx.received[0]
        assert got.headers["Content-Type"] == "application/json"
        assert verify_signature(SECRET, got.body, got.headers["X-Circuitry-Signature"], now=clock.time())
        body = json.loads(got.body)
        assert body["type"] == "circuitry.alert" and body["alert"]["id"] == 7
        assert body["alert"]["service_name"] == "payments" and body["alert"]["severity"] == "error"
        assert body["delivery_id"] == got.headers["X-Circuitry-Delivery"]
        assert not s.run_once()  # delivered: nothing left
        (row,) = outbox_rows(tmp_path / "app.db")
        assert row["state"] == "delivered" and row["attempts"] == 1 and row["last_status"] == 200
        s.close()


def test_500s_are_retried_with_growing_jittered_backoff_then_delivered(backend: SQLiteBackend, clock: FakeClock,
                                                                       tmp_path: Path) -> None:
    with Receiver([500, 503, 200]) as rx:
        s = sender(backend, clock, hook(rx.url, backoff=2.0))
        s.alerts_stored([alert()])
        delays = []
        for _ in range(2):
            assert s.run_once()
            (row,) = outbox_rows(tmp_path / "app.db")
            assert row["state"] == "pending" and row["claimed_by"] is None
            delay = row["next_attempt_at"] - clock.time()
            delays.append(delay)
            assert not s.run_once()  # not due yet: nothing is sent early
            clock.advance(delay)
        assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0  # d/2..d, d doubling
        assert s.run_once()
        (row,) = outbox_rows(tmp_path / "app.db")
        assert row["state"] == "delivered" and row["attempts"] == 3
        ids = {r.headers["X-Circuitry-Delivery"] for r in rx.received}
        assert len(rx.received) == 3 and len(ids) == 1  # one delivery, attempted three times
        assert [r.headers["X-Circuitry-Attempt"] for r in rx.received] == ["1", "2", "3"]
        s.close()


def test_a_hanging_receiver_times_out_and_the_delivery_is_retried(backend: SQLiteBackend, clock: FakeClock,
                                                                   tmp_path: Path) -> None:
    def transport(url: str, body: bytes, headers: Any, timeout: float) -> Response:
        # the first attempt waits the hook's 0.3 s and gives up on the hanging receiver; the later ones
        # must get their answers, and a receiver thread on a busy machine may take longer than 0.3 s
        later = headers["X-Circuitry-Attempt"] != "1"
        return webhooks.http_post(url, body, headers, 30.0 if later else timeout)

    with Receiver(["hang", "drop", 200], hang=3.0) as rx:
        s = sender(backend, clock, hook(rx.url, timeout=0.3), transport=transport)
        s.alerts_stored([alert()])
        assert s.run_once()
        (row,) = outbox_rows(tmp_path / "app.db")
        assert row["state"] == "pending" and row["last_status"] is None and "timed out" in row["last_error"]
        clock.advance(3600)
        assert s.run_once()  # the receiver closes the connection without answering
        (row,) = outbox_rows(tmp_path / "app.db")
        assert row["state"] == "pending" and row["last_status"] is None and row["last_error"]
        clock.advance(3600)
        assert s.run_once()
        assert outbox_rows(tmp_path / "app.db")[0]["state"] == "delivered"
        s.close()


def test_nothing_listening_is_retried(backend: SQLiteBackend, clock: FakeClock, tmp_path: Path) -> None:
    rx = Receiver()  # bound, never started: connections are accepted by the kernel, never answered
    rx.server.server_close()  # now nothing listens on the port
    s = sender(backend, clock, hook(rx.url))
    s.alerts_stored([alert()])
    assert s.run_once()
    (row,) = outbox_rows(tmp_path / "app.db")
    assert row["state"] == "pending" and "refused" in row["last_error"].lower()
    s.close()


def test_dead_letter_after_max_attempts_then_requeued(backend: SQLiteBackend, clock: FakeClock,
                                                       tmp_path: Path) -> None:
    with Receiver(default=500) as rx:
        s = sender(backend, clock, hook(rx.url, max_attempts=3))
        s.alerts_stored([alert()])
        for _ in range(3):
            assert s.run_once()
            clock.advance(3600)
        assert not s.run_once()
        (row,) = open_reader(tmp_path / "app.db").deliveries(state="dead")
        assert row["attempts"] == 3 and row["last_status"] == 500
        assert row["last_error"] == "HTTP 500 Internal Server Error"
        assert s.dead == 1 and len(rx.received) == 3
        rx.default = 200
        assert Outbox(backend, "cli").requeue(ids=[row["id"]]) == 1
        assert s.run_once()
        (row,) = outbox_rows(tmp_path / "app.db")
        assert row["state"] == "delivered" and row["attempts"] == 1
        s.close()


def test_a_4xx_is_dead_at_once_but_429_waits_for_retry_after(backend: SQLiteBackend, clock: FakeClock,
                                                               tmp_path: Path) -> None:
    with Receiver([404, 429], retry_after="120") as rx:
        s = sender(backend, clock, hook(rx.url, backoff=1.0))
        s.alerts_stored([alert(1)])
        assert s.run_once()
        assert outbox_rows(tmp_path / "app.db")[0]["state"] == "dead"
        s.alerts_stored([alert(2)])
        assert s.run_once()
        row = next(r for r in outbox_rows(tmp_path / "app.db") if r["alert_id"] == 2)
        assert row["state"] == "pending" and row["last_status"] == 429
        assert row["next_attempt_at"] - clock.time() >= 120.0
        s.close()


def test_claims_are_exclusive_until_the_lease_expires(backend: SQLiteBackend, clock: FakeClock) -> None:
    a, b = Outbox(backend, "host-a:1"), Outbox(backend, "host-b:2")
    a.enqueue([("ops", alert(1)), ("ops", alert(2, service="orders"))])  # two circuits: sent side by side
    assert a.enqueue([("ops", alert(1))]) == 0  # once per alert and endpoint
    got_a = a.claim(["ops"], lease=60.0, limit=1)
    got_b = b.claim(["ops"], lease=600.0, limit=10)
    assert len(got_a) == len(got_b) == 1 and got_a[0].id != got_b[0].id
    assert b.claim(["ops"], lease=60.0, limit=10) == []  # both held
    clock.advance(61)  # a's holder died: its lease expires and b takes over
    (taken,) = b.claim(["ops"], lease=60.0, limit=10)
    assert taken.id == got_a[0].id and taken.attempts == 2
    assert not a.delivered(got_a[0], 200)  # a's late answer changes nothing: b holds it now
    assert b.delivered(taken, 200)
    assert not b.delivered(taken, 200)


def test_one_circuits_deliveries_to_one_endpoint_go_in_order(backend: SQLiteBackend, clock: FakeClock) -> None:
    """A PagerDuty trigger answered 500, and the resolve queued after it went out before the trigger's
    retry: the incident stayed open for a circuit that had closed. A circuit's later delivery to an
    endpoint waits while an earlier one is pending (sent, or due again); other circuits and endpoints
    do not wait."""
    box = Outbox(backend, "host-a:1")
    trigger, resolve = alert(1), {**alert(2), "alert_type": "circuit_closed", "severity": "info"}
    box.enqueue([("pd", trigger), ("pd", resolve), ("pd", alert(3, service="orders")), ("ops", alert(2))])
    first = box.claim(["pd", "ops"], lease=60.0, limit=10)
    assert sorted((d.endpoint, d.alert["id"]) for d in first) == [("ops", 2), ("pd", 1), ("pd", 3)]
    (trig,) = [d for d in first if d.endpoint == "pd" and d.alert["id"] == 1]
    assert box.failed(trig, status=500, error="HTTP 500", retry_in=5.0)
    assert box.claim(["pd"], lease=60.0, limit=10) == []  # the resolve waits for its trigger's retry
    clock.advance(5)
    (again,) = box.claim(["pd"], lease=60.0, limit=10)
    assert again.alert["id"] == 1 and again.attempts == 2
    assert box.delivered(again, 202)
    (then,) = box.claim(["pd"], lease=60.0, limit=10)  # now the resolve
    assert then.alert["alert_type"] == "circuit_closed"


def test_a_restarted_sender_delivers_what_was_queued_and_catches_up_alerts_never_queued(
        tmp_path: Path, clock: FakeClock, backend: SQLiteBackend) -> None:
    down = Receiver()
    down.server.server_close()
    first = sender(backend, clock, hook(down.url))
    first.alerts_stored([alert(1000)])
    assert first.run_once()  # refused: stays queued
    first.close()
    store = SQLiteStore(tmp_path / "app.db", clock=clock, poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store, clock=clock)
    b = reg.get("inventory", failure_threshold=1)
    b.record_failure(b.admit(), TimeoutError())  # stored as an alert by the analyst; no webhook runs here
    assert eventually(lambda: bool(store.alerts("inventory")))
    store.close()
    with Receiver() as rx:
        clock.advance(3600)
        second = sender(backend, clock, hook(rx.url), process="host-b:2", catch_up=7200.0)
        while second.run_once():
            pass
        names = sorted(json.loads(body)["alert"]["service_name"] for body in rx.bodies())
        assert names == ["inventory", "payments"]
        assert {r["state"] for r in outbox_rows(tmp_path / "app.db")} == {"delivered"}
        second.close()


def test_severity_and_service_filters(backend: SQLiteBackend, clock: FakeClock, tmp_path: Path) -> None:
    with Receiver() as rx:
        s = sender(backend, clock, hook(rx.url, min_severity="error", services={"payments"}))
        s.alerts_stored([alert(1, severity="info"), alert(2, severity="critical"), alert(3, service="search")])
        while s.run_once():
            pass
        assert [json.loads(b)["alert"]["id"] for b in rx.bodies()] == [2]
        s.close()


def test_a_pagerduty_webhook_resolves_the_incidents_it_triggers_whatever_its_severity_filter(
        backend: SQLiteBackend, clock: FakeClock, tmp_path: Path) -> None:
    opened, other = alert(1), dict(alert(3), alert_type="threshold_recommendation", severity="info")
    closed = dict(alert(2), alert_type="circuit_closed", severity="info")
    with Receiver() as rx:
        pd = webhooks.pagerduty("ROUTINGKEY")
        s = sender(backend, clock, hook(rx.url, format=pd, min_severity="error"),
                   hook(rx.url, format=pd, min_severity="critical", name="critical-only"))
        s.alerts_stored([opened, closed, other])
        while s.run_once():
            pass
        sent = [(json.loads(b)["event_action"], json.loads(b)["dedup_key"]) for b in rx.bodies()]
        assert sorted(sent) == [("resolve", "circuitry:payments:circuit_opened"),
                                ("trigger", "circuitry:payments:circuit_opened")]  # critical-only: neither
        s.close()
    # the catch-up sweep enqueues a resolve the analyst's thread did not
    with sqlite3.connect(tmp_path / "app.db") as conn:
        conn.execute("INSERT INTO circuit_breaker_alerts (service_name, alert_type, severity, message, acknowledged, "
                     "ts) VALUES ('search', 'circuit_closed', 'info', 'closed', FALSE, ?)", (clock.time(),))
    s = sender(backend, clock, hook("https://pd.example/v2/enqueue", format=webhooks.pagerduty("K"), name="pd",
                                    min_severity="error"), catch_up=600.0)
    assert s.sweep(clock.time()) == 1
    assert [r["service_name"] for r in outbox_rows(tmp_path / "app.db") if r["endpoint"] == "pd"] == ["search"]
    s.close()


def test_urls_and_secrets_are_never_logged_nor_stored(backend: SQLiteBackend, clock: FakeClock, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "structlog", raising=False)  # through stdlib logging, whatever ran before
    with Receiver(default=500) as rx:
        url = rx.url + "/T000/B000/SECRETPATHTOKEN"
        s = sender(backend, clock, hook(url, max_attempts=1, headers={"Authorization": "Bearer HEADERTOKEN"}))
        with caplog.at_level(logging.DEBUG, logger="circuitry"):
            s.alerts_stored([alert()])
            s.run_once()
        assert "circuitry.webhook_dead" in caplog.text
        assert rx.received[0].headers["Authorization"] == "Bearer HEADERTOKEN"
        dumped = json.dumps(outbox_rows(tmp_path / "app.db"), default=str)
        for secret in ("SECRETPATHTOKEN", "HEADERTOKEN", SECRET):
            assert secret not in caplog.text and secret not in dumped
        s.close()


# -- payload helpers ------------------------------------------------------------------------------------

def test_slack_and_pagerduty_payloads() -> None:
    a = alert()
    a["service_name"] = "<script>alert(1)</script>"
    slack = webhooks.slack_payload(a, "d1")
    assert "<script>" not in json.dumps(slack) and "&lt;script&gt;" in slack["text"]
    fmt = webhooks.pagerduty("ROUTINGKEY")
    trigger = fmt(alert(), "d1")
    assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "ROUTINGKEY"
    assert trigger["payload"]["severity"] == "error" and trigger["payload"]["component"] == "payments"
    closed = dict(alert(), alert_type="circuit_closed", severity="info")
    resolve = fmt(closed, "d2")
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == trigger["dedup_key"]
    with pytest.raises(ConfigurationError):
        webhooks.pagerduty("")


def test_a_formatter_that_raises_is_a_failed_attempt_not_a_crash(backend: SQLiteBackend, clock: FakeClock,
                                                                  tmp_path: Path) -> None:
    def broken(alert: Any, delivery_id: str) -> Any:
        raise RuntimeError("bad template")

    s = sender(backend, clock, hook("http://127.0.0.1:9/", format=broken, max_attempts=2))
    s.alerts_stored([alert()])
    assert s.run_once()
    (row,) = outbox_rows(tmp_path / "app.db")
    assert row["state"] == "pending" and "bad template" in row["last_error"]
    s.close()


def test_a_transport_of_ones_own(backend: SQLiteBackend, clock: FakeClock) -> None:
    calls: list[tuple[str, bytes]] = []

    def transport(url: str, body: bytes, headers: Any, timeout: float) -> Response:
        calls.append((url, body))
        return Response(204)

    s = sender(backend, clock, hook("https://example.invalid/x"), transport=transport)
    s.alerts_stored([alert()])
    assert s.run_once() and len(calls) == 1 and s.delivered == 1
    s.close()


# -- with a store: alerts the analyst stores go out, off the caller's thread ------------------------------

def test_alerts_the_analyst_stores_are_posted_from_the_senders_thread(tmp_path: Path) -> None:
    threads: list[str] = []

    def transport(url: str, body: bytes, headers: Any, timeout: float) -> Response:
        threads.append(threading.current_thread().name)
        return webhooks.http_post(url, body, headers, timeout)

    with Receiver() as rx:
        store = SQLiteStore(tmp_path / "live.db", poll_interval=0.01, analysis_interval=3600)
        reg = Registry(hooks=[], store=store)
        sender_ = webhooks.install([hook(rx.url)], store=store, poll_interval=0.05, transport=transport)
        b = reg.get("payments", failure_threshold=2)
        for _ in range(2):
            b.record_failure(b.admit(), ConnectionError("refused"))
        assert eventually(lambda: len(rx.received) >= 1)
        body = json.loads(rx.received[0].body)
        assert body["alert"]["alert_type"] == "circuit_opened" and body["alert"]["service_name"] == "payments"
        assert threads and all(name.startswith("circuitry-webhook") for name in threads)
        assert threading.current_thread().name not in threads
        store.close()
        assert sender_._thread is not None and not sender_._thread.is_alive()  # stopped with the store


def test_a_process_that_only_sends_delivers_what_others_stored(tmp_path: Path, backend: SQLiteBackend) -> None:
    """A sender process with no breaker of its own: its sender started with the store's writer, which a
    store starts for its first breaker, so it sent nothing (one pending row stayed pending)."""
    Outbox(backend, "host-a:1").enqueue([("ops", alert(1))])
    with Receiver() as rx:
        store = SQLiteStore(backend.path, poll_interval=0.01, analysis_interval=3600)
        try:
            webhooks.install([hook(rx.url)], store=store, poll_interval=0.05, catch_up=0.0)
            assert eventually(lambda: len(rx.received) == 1)
        finally:
            store.close()


def test_install_needs_a_store() -> None:
    with pytest.raises(ConfigurationError, match="need a store"):
        webhooks.install([hook("https://example.invalid/")], registry=Registry(hooks=[]))


# -- once across processes ------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    from circuitry.runners.webhooks import Webhook, WebhookSender
    db, url, name = sys.argv[1], sys.argv[2], sys.argv[3]
    s = WebhookSender(db, [Webhook(url, secret="k", name="ops", timeout=5.0)], process=name, catch_up=0,
                      concurrency=2)
    deadline = time.monotonic() + 60
    idle = 0
    while time.monotonic() < deadline and idle < 20:
        idle = 0 if s.run_once() else idle + 1
        time.sleep(0.01)
    print(s.delivered)
""")


def test_each_delivery_is_posted_once_by_one_of_several_processes(tmp_path: Path, backend: SQLiteBackend) -> None:
    Outbox(backend, "setup").enqueue([("ops", alert(i)) for i in range(1, 61)])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with Receiver() as rx:
        procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "app.db"), rx.url, f"host-{i}:{i}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "CIRCUITRY_DB": ":memory:"}) for i in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        per_id = Counter(json.loads(b)["alert"]["id"] for b in rx.bodies())
    assert sorted(per_id) == list(range(1, 61)) and set(per_id.values()) == {1}
    assert sum(int(out.strip()) for out, _ in outs) == 60
    assert {r["state"] for r in outbox_rows(tmp_path / "app.db")} == {"delivered"}
