"""A Starlette application with circuitry's operator tools: a flaky dependency behind a circuit,
``/metrics`` for Prometheus (every worker's numbers), the dashboard at ``/circuitry/``, and a webhook
receiver at ``/hooks/circuitry`` that checks each alert's signature.

Run it (needs ``pip install 'circuitry-breaker[dashboard,prometheus]'``)::

    python examples/webapp/app.py                      # http://127.0.0.1:8000
    curl 'http://127.0.0.1:8000/quote?fail=1'          # three times: the circuit opens, an alert is POSTed
    open http://127.0.0.1:8000/circuitry/              # the dashboard

or with several workers, which share the database, the metrics and the webhook outbox::

    cd examples/webapp && uvicorn app:app --workers 4 --port 8000

Settings come from the environment: ``PORT``, ``CIRCUITRY_DB`` (default ``webapp.db``),
``WEBHOOK_SECRET``, ``CIRCUITRY_DASHBOARD_TOKEN`` (unlocks the dashboard's actions; without it the
dashboard is read-only).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import circuitry
from circuitry import CircuitOpenError, circuit
from circuitry.instrumentation import prometheus
from circuitry.runners import webhooks
from circuitry.tools.dashboard import create_app

PORT = int(os.environ.get("PORT", "8000"))
DB = os.environ.get("CIRCUITRY_DB") or "webapp.db"
SECRET = os.environ.get("WEBHOOK_SECRET") or secrets.token_hex(16)
registry = circuitry.configure(db=DB)
store: Any = registry.store  # the SQLite store every worker shares


@circuit("quotes_api", failure_threshold=3, recovery_timeout=30, on=ConnectionError)
def fetch_quote(fail: bool) -> str:
    if fail:
        raise ConnectionError("quotes API unreachable")
    return "The best way out is always through."


async def quote(request: Request) -> Response:
    try:
        text = await run_in_threadpool(fetch_quote, request.query_params.get("fail") == "1")
    except ConnectionError as exc:
        return JSONResponse({"error": str(exc)}, status_code=502)
    except CircuitOpenError as exc:
        wait = 1 if exc.retry_after is None else max(1, round(exc.retry_after))
        return JSONResponse({"error": f"quotes are unavailable, try again in {wait} s"}, status_code=503,
                            headers={"Retry-After": str(wait)})
    return JSONResponse({"quote": text})


def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


# The webhook receiver: in real life another service (Slack, PagerDuty, your own). It accepts only
# signed, fresh deliveries, and each delivery once (a retry after a lost answer repeats it).
received: list[dict[str, Any]] = []
seen: OrderedDict[str, None] = OrderedDict()


async def receive_alert(request: Request) -> Response:
    body = await request.body()
    if not webhooks.verify_signature(SECRET, body, request.headers.get(webhooks.SIGNATURE_HEADER)):
        return Response("bad signature", status_code=401)
    delivery = request.headers.get("X-Circuitry-Delivery", "")
    if delivery not in seen:
        seen[delivery] = None
        while len(seen) > 10_000:
            seen.popitem(last=False)
        received.append(json.loads(body))
    return Response(status_code=204)


def received_alerts(request: Request) -> Response:
    return JSONResponse(received)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # In each worker (after the fork): metrics from the shared store, alerts to the webhook.
    collector = prometheus.install(shared=True)
    hook = webhooks.Webhook(f"http://127.0.0.1:{PORT}/hooks/circuitry", secret=SECRET, name="example-receiver")
    webhooks.install([hook])
    yield
    REGISTRY.unregister(collector)


app = Starlette(lifespan=lifespan, routes=[
    Route("/quote", quote),
    Route("/metrics", metrics),
    Route("/hooks/circuitry", receive_alert, methods=["POST"]),
    Route("/hooks/received", received_alerts),
    Mount("/circuitry", app=create_app(store, token=os.environ.get("CIRCUITRY_DASHBOARD_TOKEN"), refresh=2.0)),
])


if __name__ == "__main__":
    import uvicorn

    print(f"serving on http://127.0.0.1:{PORT}/ (dashboard: /circuitry/, metrics: /metrics)", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
