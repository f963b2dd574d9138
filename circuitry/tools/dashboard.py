"""The dashboard: a page to look at (``pip install 'circuitry-breaker[dashboard]'``).

.. code-block:: python

    from circuitry.tools.dashboard import create_app

    app.mount("/circuitry", create_app("app.db"))       # in a Starlette or FastAPI application

or ``circuitry dashboard --db app.db`` (http://127.0.0.1:8050, this machine only).

* **Services**: every circuit's state, failure rate, calls and refusals in the last hour, last
  transition, detected pattern with its confidence, recommendation and unacknowledged alerts; most
  urgent first, searchable, a page at a time (ten thousand circuits stay quick), updated live.
* **A circuit**: its timeline — calls and failure rate over time, state bands, transitions marked — as
  an SVG made on the server; its transitions, alerts and patterns.
* **Alerts** and **webhook deliveries** (dead letters included).

**Security.** Read-only unless the app is given a ``token``: then the token unlocks actions
(acknowledge, reset, force open, force closed, send a dead webhook again) — in a browser through a
login that sets an HttpOnly, SameSite=Strict cookie, with a per-session form token against cross-site
requests; from scripts with ``Authorization: Bearer <token>``. Every name and message is escaped; the
Content-Security-Policy allows only the package's own script and stylesheet; query strings select
among fixed options and are only ever bound as SQL parameters by the read model. ``circuitry
dashboard`` binds 127.0.0.1 and refuses requests for other host names (DNS rebinding).

Data come from the read model (:class:`~circuitry.store.readmodel.ReadModel`), read on Starlette's
worker threads. Works on any database the read model reads. (The routes, the sessions and ``serve``
are here, a little over 500 lines; the HTML is in :mod:`circuitry.tools.pages`, the SVG in
:mod:`circuitry.tools.timeline`.)

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from circuitry.exceptions import ConfigurationError, StoreError
from circuitry.tools import pages, timeline

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from circuitry.store.engine import SharedStore
    from circuitry.store.readmodel import ReadModel

__all__ = ["TOKEN_ENV", "create_app", "serve"]

#: The environment variable ``circuitry dashboard`` reads the actions token from.
TOKEN_ENV: Final = "CIRCUITRY_DASHBOARD_TOKEN"
STATIC: Final = Path(__file__).resolve().parent / "static"
_COOKIE: Final = "circuitry_session"
_SESSION_SECONDS: Final = 12 * 3600
_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS: Final = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "same-origin", "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
_ACTIONS: Final = ("ack", "ack_service", "reset", "open", "close", "retry", "retry_dead")
_MAX_ID: Final = 2**63 - 1  # the largest id a database column holds


def _require() -> None:
    try:
        import starlette  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("circuitry's dashboard needs Starlette: pip install 'circuitry-breaker[dashboard]'") from exc


class _Auth:
    """The actions token, sessions signed with it, and a brake on guessing."""

    def __init__(self, token: str | None) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ConfigurationError("token must be a string of at least 16 characters (secrets.token_urlsafe())")
        self._key = None if token is None else hashlib.sha256(b"circuitry-dashboard:" + token.encode()).digest()
        self._token = token
        self._failures: list[float] = []
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def _mac(self, text: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        """Constant-time comparison; after 5 wrong tokens in a minute, every try fails for that minute."""
        if self._token is None:
            return False
        now = time.monotonic()
        with self._lock:
            self._failures = [t for t in self._failures if now - t < 60.0]
            if len(self._failures) >= 5:
                return False
        ok = hmac.compare_digest(given.encode(), self._token.encode())
        if not ok:
            with self._lock:
                self._failures.append(now)
        return ok

    def new_session(self) -> str:
        sid = f"{int(time.time()) + _SESSION_SECONDS}.{secrets.token_urlsafe(16)}"
        return f"{sid}.{self._mac('session:' + sid)}"

    def session(self, cookie: str | None) -> str | None:
        """The session id of a valid, unexpired cookie, else ``None``."""
        if self._key is None or not cookie:
            return None
        sid, _, mac = cookie.rpartition(".")
        if not sid or not hmac.compare_digest(mac, self._mac("session:" + sid)):
            return None
        try:
            if int(sid.split(".", 1)[0]) < time.time():
                return None
        except ValueError:
            return None
        return sid

    def csrf(self, sid: str) -> str:
        return self._mac("csrf:" + sid)[:32]

    def bearer(self, header: str | None) -> bool:
        if self._token is None or not header or not header.startswith("Bearer "):
            return False
        return self.check_token(header[len("Bearer "):].strip())


def create_app(source: str | os.PathLike[str] | ReadModel | SharedStore, *, token: str | None = None,
               refresh: float = 2.0, page_size: int = 50, allowed_hosts: Sequence[str] | None = None,
               title: str = "circuitry") -> Starlette:
    """The dashboard as an ASGI application (Starlette), to run or to mount.

    Args:
        source: The database (a path or URL), a read model, or a running store (its read model).
        token: Unlocks actions (at least 16 characters); ``None`` keeps the dashboard read-only.
        refresh: Seconds between live updates of the page (0: none).
        page_size: Circuits per page.
        allowed_hosts: Host names the app answers to (others get 400): ``circuitry dashboard`` passes
            the loopback names. ``None``: any (mounted in an application that decides).
        title: What each page's title ends with (``"payments · circuitry"``).

    .. versionadded:: 0.1.0
    """
    _require()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    reader = _reader_of(source)
    auth = _Auth(token)
    if not (isinstance(refresh, int | float) and 0 <= refresh <= 3600):
        raise ConfigurationError(f"refresh must be seconds in [0, 3600], got {refresh!r}")
    if not (isinstance(page_size, int) and 1 <= page_size <= 1000):
        raise ConfigurationError(f"page_size must be an int in [1, 1000], got {page_size!r}")
    views = _Views(reader, auth, float(refresh), page_size, title)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    return Starlette(routes=[
        Route("/", views.services, methods=["GET"]),
        Route("/circuit", views.circuit, methods=["GET"]),
        Route("/alerts", views.alerts, methods=["GET"]),
        Route("/webhooks", views.webhooks, methods=["GET"]),
        Route("/api/services", views.api_services, methods=["GET"]),
        Route("/api/circuit", views.api_circuit, methods=["GET"]),
        Route("/login", views.login, methods=["GET", "POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/action", views.action, methods=["POST"]),
        Route("/healthz", views.health, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ], middleware=middleware)


def _reader_of(source: Any) -> ReadModel:
    from circuitry.store.engine import SharedStore
    from circuitry.store.readmodel import ReadModel

    if isinstance(source, ReadModel):
        return source
    if isinstance(source, SharedStore):
        return source.read
    if isinstance(source, str | os.PathLike):
        from circuitry.store import open_reader

        return open_reader(source)
    raise ConfigurationError(f"source must be a database path or URL, a ReadModel or a store, got {source!r}")


def _one(value: str | None, choices: Sequence[str], default: str) -> str:
    return value if value is not None and value in choices else default


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(value or default)))
    except ValueError:
        return default


class _Views:
    def __init__(self, reader: ReadModel, auth: _Auth, refresh: float, page_size: int, title: str) -> None:
        self.reader = reader
        self.auth = auth
        self.refresh = refresh
        self.page_size = page_size
        self.title = title

    # -- helpers --------------------------------------------------------------------------------------

    def _page(self, request: Request) -> pages.Page:
        sid = self.auth.session(request.cookies.get(_COOKIE))
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return pages.Page(base, time.time(), None if sid is None else self.auth.csrf(sid), self.auth.enabled,
                          self.refresh)

    @staticmethod
    def _html(text: str, status: int = 200) -> Response:
        from starlette.responses import HTMLResponse

        return HTMLResponse(text, status_code=status, headers=_HEADERS)

    @staticmethod
    def _json(data: Any, status: int = 200) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(data, status_code=status, headers=_HEADERS)

    @staticmethod
    def _partial(request: Request) -> bool:
        return request.headers.get("x-circuitry-partial") == "1" or request.query_params.get("partial") == "1"

    def _respond(self, request: Request, page: pages.Page, title: str, head: str, live: str, active: str) -> Response:
        if self._partial(request):
            return self._html(live)
        return self._html(pages.layout(page, f"{title} · {self.title}" if title else self.title, head, live=live,
                                       active=active))

    def _failed(self, request: Request, exc: StoreError) -> Response:
        text = f"The database could not be read: {exc}"
        if self._partial(request):
            return self._html(f'<p class="error">{pages.e(text)}</p>', 503)
        return self._html(pages.layout(self._page(request), self.title, f'<p class="error">{pages.e(text)}</p>',
                                       live="", active=""), 503)

    # -- pages ----------------------------------------------------------------------------------------

    def _services_params(self, request: Request) -> dict[str, Any]:
        qp = request.query_params
        states = [s for s in qp.getlist("state") if s in pages.STATES]
        return {"q": (qp.get("q") or "").strip()[:200] or None, "state": states or None,
                "alerting": qp.get("alerting") == "1", "sort": _one(qp.get("sort"), ("attention", "name"), "attention"),
                "offset": _int(qp.get("offset"), 0, 0, 10**9)}

    def _services_data(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.reader.page(search=params["q"], states=params["state"], alerting=params["alerting"],
                                sort=params["sort"], offset=params["offset"], limit=self.page_size)

    def services(self, request: Request) -> Response:
        page = self._page(request)
        params = self._services_params(request)
        try:
            data = self._services_data(params)
            counts = self.reader.state_counts()
            alerts = self.reader.alert_counts()
            dead = sum(by.get("dead", 0) for by in self.reader.delivery_counts().values())
        except StoreError as exc:
            return self._failed(request, exc)
        link = {k: v for k, v in params.items() if k != "offset"}
        live = pages.services_live(page, data, counts=counts, alerts=alerts, dead=dead, params=link)
        head = "<h1>Services</h1>" + pages.services_form(page, params)
        return self._respond(request, page, "Services", head, live, "services")

    def circuit(self, request: Request) -> Response:
        page = self._page(request)
        name = request.query_params.get("name") or ""
        window = _one(request.query_params.get("window"), tuple(timeline.WINDOWS), "1h")
        try:
            status = self.reader.circuit(name, now=page.now) if name else None
            if status is None:
                body = f'<h1>No circuit named “{pages.e(name)}”</h1><p><a href="{page.url("/")}">All services</a></p>'
                return self._html(pages.layout(page, self.title, body, live="", active="services"), 404)
            tl = timeline.load(self.reader, name, window, now=page.now, current_state=status["state"])
            transitions = list(tl.transitions)  # with their reasons
            alerts = self.reader.alerts(name, include_acknowledged=True, limit=50)
            patterns_ = self.reader.patterns(name, limit=10)
        except StoreError as exc:
            return self._failed(request, exc)
        live = pages.circuit_live(page, status, svg=timeline.render(tl), window=window, windows=tuple(timeline.WINDOWS),
                                  transitions=transitions[-200:], patterns=patterns_, alerts=alerts,
                                  words=timeline.summary(tl))
        head = (f'<p><a href="{page.url("/")}">← All services</a></p><h1>{pages.e(name)}</h1>'
                + pages.circuit_actions(page, name))
        return self._respond(request, page, name, head, live, "services")

    def alerts(self, request: Request) -> Response:
        page = self._page(request)
        qp = request.query_params
        include = qp.get("all") == "1"
        name = qp.get("name") or None
        try:
            rows = self.reader.alerts(name, include_acknowledged=include, limit=_int(qp.get("limit"), 200, 1, 1000))
        except StoreError as exc:
            return self._failed(request, exc)
        which = (f'<a href="{page.url("/alerts", name=name)}">unacknowledged</a> · all' if include else
                 f'unacknowledged · <a href="{page.url("/alerts", name=name, all="1")}">all</a>')
        scope = f" of {pages.e(name)}" if name else ""
        live = pages.alerts_section(page, rows) + pages._stamp(page)
        head = f"<h1>Alerts{scope}</h1><p>{which}</p>"
        return self._respond(request, page, "Alerts", head, live, "alerts")

    def webhooks(self, request: Request) -> Response:
        page = self._page(request)
        state = request.query_params.get("state")
        state = state if state in ("pending", "delivered", "dead") else None
        try:
            counts = self.reader.delivery_counts()
            rows = self.reader.deliveries(state=state, limit=200)
        except StoreError as exc:
            return self._failed(request, exc)
        tabs = " · ".join(
            (f"<strong>{label}</strong>" if s == state else f'<a href="{page.url("/webhooks", state=s)}">{label}</a>')
            for s, label in ((None, "all"), ("pending", "pending"), ("dead", "dead"), ("delivered", "delivered")))
        live = pages.webhooks_live(page, counts, rows)
        return self._respond(request, page, "Webhooks", f"<h1>Webhook deliveries</h1><p>{tabs}</p>", live,
                             "webhooks")

    def api_services(self, request: Request) -> Response:
        params = self._services_params(request)
        try:
            data = self._services_data(params)
            data["states"] = self.reader.state_counts()
        except StoreError as exc:
            return self._json({"error": str(exc)}, 503)
        return self._json(data)

    def api_circuit(self, request: Request) -> Response:
        name = request.query_params.get("name") or ""
        try:
            status = self.reader.circuit(name) if name else None
        except StoreError as exc:
            return self._json({"error": str(exc)}, 503)
        if status is None:
            return self._json({"error": "no such circuit"}, 404)
        return self._json(status)

    def health(self, request: Request) -> Response:
        from starlette.responses import PlainTextResponse

        try:
            ready = self.reader.ready()
        except StoreError as exc:
            return PlainTextResponse(f"the database could not be read: {exc}", status_code=503, headers=_HEADERS)
        return PlainTextResponse("ok" if ready else "no circuit tables", headers=_HEADERS)

    # -- actions ---------------------------------------------------------------------------------------

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    async def login(self, request: Request) -> Response:
        from starlette.responses import RedirectResponse

        page = self._page(request)
        error = ""
        if request.method == "POST":
            if not self._same_origin(request):
                return self._html("<p>Cross-site request refused.</p>", 403)
            form = await _form(request)
            given = form.get("token")
            if isinstance(given, str) and self.auth.check_token(given):
                response = RedirectResponse(f"{page.base}/", status_code=303, headers=_HEADERS)
                response.set_cookie(_COOKIE, self.auth.new_session(), max_age=_SESSION_SECONDS, httponly=True,
                                    samesite="strict", secure=request.url.scheme == "https", path=page.base or "/")
                return response
            error = '<p class="error">That is not the token (or too many tries: wait a minute).</p>'
        if not self.auth.enabled:
            body = ('<h1>Actions are off</h1><p>This dashboard is read-only: start it with a token '
                    "(<code>circuitry dashboard --actions</code>) to acknowledge alerts and reset circuits.</p>")
            return self._html(pages.layout(page, self.title, body, live="", active=""), 403 if error else 200)
        body = (f'<h1>Unlock actions</h1>{error}<form class="login" method="post" action="{page.url("/login")}">'
                '<p><label>Token <input type="password" name="token" autocomplete="current-password" required>'
                '</label></p><p><button type="submit">Unlock</button></p></form>')
        return self._html(pages.layout(page, self.title, body, live="", active=""), 401 if error else 200)

    async def logout(self, request: Request) -> Response:
        from starlette.responses import RedirectResponse

        page = self._page(request)
        response = RedirectResponse(f"{page.base}/", status_code=303, headers=_HEADERS)
        response.delete_cookie(_COOKIE, path=page.base or "/")
        return response

    async def action(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import RedirectResponse

        page = self._page(request)
        if not self.auth.enabled:
            return self._json({"error": "actions are off: this dashboard has no token"}, 403)
        form = await _form(request)
        bearer = self.auth.bearer(request.headers.get("authorization"))
        if not bearer:
            sid = self.auth.session(request.cookies.get(_COOKIE))
            given = form.get("csrf")
            if (sid is None or not isinstance(given, str) or not self._same_origin(request)
                    or not hmac.compare_digest(given, self.auth.csrf(sid))):
                return self._json({"error": "not allowed: unlock actions first (or send the token as a Bearer "
                                            "header)"}, 403)
        action = form.get("action")
        name = form.get("name")
        raw_id = form.get("id")
        if action not in _ACTIONS:
            return self._json({"error": "unknown action"}, 400)
        try:
            ident = int(raw_id) if isinstance(raw_id, str) and raw_id else None
        except ValueError:
            return self._json({"error": "id must be a number"}, 400)
        if ident is not None and not 1 <= ident <= _MAX_ID:
            return self._json({"error": f"id must be a number from 1 to {_MAX_ID}"}, 400)
        name = name if isinstance(name, str) and name else None
        try:
            result = await run_in_threadpool(self._do, str(action), name, ident)
        except (StoreError, ConfigurationError) as exc:
            return self._json({"error": str(exc)}, 400)
        if bearer:
            return self._json(result)
        back = "/" if name is None else f"/circuit?name={_quote(name)}"
        if action == "ack" and name is None:
            back = "/alerts"
        if action in ("retry", "retry_dead"):
            back = "/webhooks"
        return RedirectResponse(f"{page.base}{back}", status_code=303, headers=_HEADERS)

    def _do(self, action: str, name: str | None, ident: int | None) -> dict[str, Any]:
        from circuitry.store.control import actor, set_state

        by = actor("circuitry-dashboard")
        if action == "ack":
            if ident is None:
                raise ConfigurationError("ack needs an alert id")
            return {"acknowledged": len(self.reader.acknowledge(alert_id=ident))}
        if action == "ack_service":
            if name is None:
                raise ConfigurationError("ack_service needs a circuit name")
            return {"acknowledged": len(self.reader.acknowledge(service=name))}
        if action in ("retry", "retry_dead"):
            from circuitry.store.outbox import Outbox

            if action == "retry" and ident is None:
                raise ConfigurationError("retry needs a delivery id")
            outbox = Outbox(self.reader.backend, by)
            try:
                return {"requeued": outbox.requeue(ids=None if action == "retry_dead" else [int(ident or 0)])}
            finally:
                outbox.close()
        if name is None:
            raise ConfigurationError(f"{action} needs a circuit name")
        return set_state(self.reader.backend, name, action, by=by)


async def _form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body as a dict (first value of each field); the
    dashboard's forms need no multipart parser."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > 16384:
            return {}
    import urllib.parse

    parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v}


def _quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")


def serve(db: str, *, host: str = "127.0.0.1", port: int = 8050, token_file: str | None = None,
          actions: bool = False, refresh: float = 2.0, out: TextIO | None = None) -> int:
    """Run the dashboard with uvicorn until interrupted (``circuitry dashboard``). Returns an exit code
    (2: it could not start — the port is taken, say — with the reason on stderr).

    Read-only unless ``actions``: only then is a token read (``token_file``, else ``$CIRCUITRY_DASHBOARD_TOKEN``,
    else one is made up and printed once). Its address is printed once it listens.
    """
    import socket
    import sys

    from circuitry.store import open_reader

    out = sys.stdout if out is None else out
    try:
        import uvicorn
    except ImportError:
        sys.stderr.write("circuitry dashboard: needs uvicorn and Starlette: "
                         "pip install 'circuitry-breaker[dashboard]'\n")
        return 2
    token = None
    made_up = False
    if actions:  # a token in the environment alone unlocks nothing: actions are asked for, or off
        if token_file:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        elif os.environ.get(TOKEN_ENV):
            token = os.environ[TOKEN_ENV].strip()
        else:
            token, made_up = secrets.token_urlsafe(24), True
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"] if loopback else None
    reader = open_reader(db)
    app = create_app(reader, token=token, refresh=refresh, allowed_hosts=hosts)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        sys.stderr.write(f"circuitry dashboard: cannot listen on {host} port {port}: {exc.strerror or exc}\n")
        return 2
    try:
        if made_up:
            out.write(f"actions token (unlocks acknowledging and resetting; shown once): {token}\n")
        shown = f"[{host}]" if ":" in host else host
        out.write(f"circuitry dashboard for {reader.backend.location} on http://{shown}:{port}/ "
                  f"({'actions need the token' if token else 'read-only'}; Ctrl-C to stop)\n")
        if not loopback:
            out.write("note: reachable from other machines; put it behind TLS and authentication you trust\n")
        out.flush()
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
