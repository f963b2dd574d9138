"""A local HTTP receiver for webhook tests (127.0.0.1 only): answers each request as its script says
— ``200``, a status code, ``"hang"`` (sleep longer than the client waits), ``"drop"`` (close the
connection without an answer) — and records what it got."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self, script: Iterable[Any] = (), *, default: Any = 200, hang: float = 3.0,
                 retry_after: str | None = None) -> None:
        self.script: deque[Any] = deque(script)
        self.default = default
        self.hang = hang
        self.retry_after = retry_after
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body,
                                                      time.time()))
                    action = receiver.script.popleft() if receiver.script else receiver.default
                if action == "hang":
                    time.sleep(receiver.hang)
                    return
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(int(action))
                if receiver.retry_after is not None and int(action) in (429, 503):
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/alerts"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.received]
