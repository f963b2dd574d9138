"""Logs and a Prometheus /metrics endpoint for a service whose dependency fails.

Run it: ``python examples/observability/metrics_endpoint.py`` (needs ``pip install 'circuitry-breaker[prometheus]'``).
It serves /metrics on 127.0.0.1 (a free port), trips a circuit, reads the endpoint once as Prometheus
would, prints circuitry's lines, and stops.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app

from circuitry import CircuitOpenError, circuit
from circuitry.instrumentation import prometheus

# circuitry writes nothing until the application configures logging; this application wants INFO.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


@circuit("geocoder", failure_threshold=3, recovery_timeout=30, on=ConnectionError)
def geocode(address: str) -> tuple[float, float]:
    raise ConnectionError("geocoder unreachable")


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no access log on stderr
        pass


def main() -> None:
    prometheus.install()  # the process-wide registry's circuits, read at each scrape
    server = make_server("127.0.0.1", 0, make_wsgi_app(), handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(5):
            try:
                geocode("1 Main St")
            except ConnectionError:
                print("geocode failed")
            except CircuitOpenError as exc:
                print(f"geocode refused: retry after {exc.retry_after:.0f}s")
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        for line in body.splitlines():
            if line.startswith(("circuitry_calls_total", "circuitry_state_code", "circuitry_transitions_total")):
                print(line)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
