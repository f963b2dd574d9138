"""The dashboard over HTTP (a real uvicorn server on 127.0.0.1): every page escapes names and messages,
read-only without a token, actions need a session and its form token (or a Bearer token), query strings
choose among fixed options, ten thousand circuits are paged and searchable, it mounts under a prefix.
(The browser tests are in test_dashboard_browser.py.)"""

from __future__ import annotations

import io
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from circuitry import Registry
from circuitry.exceptions import ConfigurationError
from circuitry.store import SQLiteStore, open_reader
from circuitry.tools.dashboard import TOKEN_ENV, create_app, serve

from .conftest import eventually
from .dashboard_env import HOSTILE, TOKEN, get, many, populated, serving


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return populated(tmp_path_factory.mktemp("dash") / "app.db")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many(tmp_path_factory.mktemp("big") / "big.db")


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class Session:
    """A cookie-keeping client that does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie: str | None = None

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(fields).encode()
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if self.cookie:
            h["Cookie"] = self.cookie
        request = urllib.request.Request(self.base + path, data=body, headers=h, method="POST")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=30) as r:
                status, text, hdrs = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as exc:
            status, text, hdrs = exc.code, exc.read().decode(), exc.headers
        cookie = hdrs.get("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return status, text, hdrs.get("location") or ""

    def get(self, path: str) -> tuple[int, str, dict[str, str]]:
        return get(self.base + path, {"Cookie": self.cookie} if self.cookie else None)


def test_every_page_escapes_names_and_messages(db: Path) -> None:
    with serving(create_app(str(db), token=TOKEN)) as base:
        pages = ["/", "/?partial=1", f"/circuit?name={q(HOSTILE)}", f"/circuit?name={q(HOSTILE)}&window=15m",
                 "/alerts", "/alerts?all=1", f"/alerts?name={q(HOSTILE)}", "/webhooks", f"/?q={q(HOSTILE)}",
                 f"/circuit?name={q(HOSTILE + 'x')}"]
        for path in pages:
            status, body, headers = get(base + path)
            assert status in (200, 404), (path, status)
            assert "<script>alert" not in body and "<img src=x" not in body, path
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
        _, body, _ = get(base + "/")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        _, body, _ = get(base + f"/circuit?name={q(HOSTILE)}")
        assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in body  # the transition's error, as text
        assert "<svg" in body and "&lt;script&gt;" in body


def test_the_services_page_shows_what_the_issue_lists(db: Path) -> None:
    with serving(create_app(str(db))) as base:
        status, body, _ = get(base + "/")
        assert status == 200
        row = re.search(r'<tr data-circuit="payments">(.*?)</tr>', body, re.S)
        assert row is not None
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
        assert ">open<" in cells[1]  # state
        assert cells[2] == "13.0%"  # failure rate: 3 of 23 decided calls
        assert cells[3] == "23"  # calls
        assert "closed → open" in cells[5]  # last transition
        assert re.search(r">\d+</a>", cells[8])  # unacknowledged alerts, linked
        assert body.index('data-circuit="payments"') < body.index('data-circuit="search-0"')  # urgent first


def test_read_only_without_a_token(db: Path) -> None:
    with serving(create_app(str(db))) as base:
        _, body, _ = get(base + "/")
        assert "read-only" in body and 'name="csrf"' not in body and "/action" not in body
        status, text, _ = Session(base).post("/action", {"action": "open", "name": "payments"})
        assert status == 403 and "no token" in text
        status, _, _ = Session(base).post("/action", {"action": "open", "name": "payments"},
                                         {"Authorization": f"Bearer {TOKEN}"})
        assert status == 403
    assert open_reader(db).circuit("payments")["state"] == "open"  # type: ignore[index]


def test_actions_need_a_session_and_its_form_token(tmp_path: Path) -> None:
    db = populated(tmp_path / "act.db")
    with serving(create_app(str(db), token=TOKEN)) as base:
        s = Session(base)
        assert s.post("/action", {"action": "open", "name": "search-0"})[0] == 403  # no session
        assert s.post("/login", {"token": "wrong-token-wrong-token"})[0] == 401
        status, _, location = s.post("/login", {"token": TOKEN})
        assert status == 303 and location == "/" and s.cookie is not None
        _, page, _ = s.get("/circuit?name=search-0")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf is not None
        assert s.post("/action", {"action": "open", "name": "search-0", "csrf": "0" * 32})[0] == 403
        assert s.post("/action", {"action": "open", "name": "search-0", "csrf": csrf.group(1)},
                      {"Origin": "http://evil.example"})[0] == 403  # another site's form
        status, _, location = s.post("/action", {"action": "open", "name": "search-0", "csrf": csrf.group(1)})
        assert status == 303 and location == "/circuit?name=search-0"
        assert open_reader(db).circuit("search-0")["state"] == "forced_open"  # type: ignore[index]
        alert_id = open_reader(db).alerts("payments")[0]["id"]
        assert s.post("/action", {"action": "ack", "id": str(alert_id), "csrf": csrf.group(1)})[0] == 303
        assert all(a["id"] != alert_id for a in open_reader(db).alerts("payments"))
        # scripts: the token as a Bearer header, JSON back
        status, text, _ = Session(base).post("/action", {"action": "reset", "name": "search-0"},
                                             {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and '"to_state":"closed"' in text
        status, text, _ = Session(base).post("/action", {"action": "drop_tables", "name": "x"},
                                             {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400
        status, text, _ = Session(base).post("/action", {"action": "open", "name": "nope"},
                                             {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400 and "no circuit named" in text
        assert s.post("/logout", {})[0] == 303


def test_an_id_too_large_for_the_database_is_a_bad_request(db: Path) -> None:
    with serving(create_app(str(db), token=TOKEN)) as base:
        for ident in ("9" * 30, "0", "-1"):
            status, text, _ = Session(base).post("/action", {"action": "ack", "id": ident},
                                                 {"Authorization": f"Bearer {TOKEN}"})
            assert status == 400 and "id must be a number" in text, ident


def test_a_page_title_names_circuitry_once(db: Path) -> None:
    with serving(create_app(str(db))) as base:
        assert "<title>payments · circuitry</title>" in get(base + "/circuit?name=payments")[1]
        assert "<title>Services · circuitry</title>" in get(base + "/")[1]


def _serve_captured(monkeypatch: pytest.MonkeyPatch, db: str, **options: Any) -> tuple[int, str, list[Any]]:
    """``serve()`` up to the point of serving: the exit code, what it printed, and the app it would serve."""
    import uvicorn

    apps: list[Any] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(uvicorn.Server, "run", lambda self, *args, **kwargs: apps.append(self.config.app))
        code = serve(db, port=port, out=out, **options)
    return code, out.getvalue(), apps


def test_a_token_in_the_environment_does_not_turn_actions_on(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    code, printed, apps = _serve_captured(monkeypatch, str(db))
    assert code == 0 and "read-only" in printed and len(apps) == 1
    with serving(apps[0]) as base:
        status, _, _ = Session(base).post("/action", {"action": "open", "name": "search-1"},
                                          {"Authorization": f"Bearer {TOKEN}"})
        assert status == 403
    assert open_reader(db).circuit("search-1")["state"] == "closed"  # type: ignore[index]
    code, printed, _ = _serve_captured(monkeypatch, str(db), actions=True)  # asked for: the token unlocks them
    assert code == 0 and "actions need the token" in printed and TOKEN not in printed


def test_the_startup_line_never_shows_a_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    code, printed, _ = _serve_captured(monkeypatch, "postgresql://ops:hunter2@127.0.0.1:1/x")
    assert code == 0 and "postgresql://ops@127.0.0.1:1/x" in printed and "hunter2" not in printed


def test_a_taken_port_is_an_error_before_any_address_is_printed(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from circuitry.tools.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = io.StringIO()
        code = main(["dashboard", "--db", str(db), "--port", str(taken.getsockname()[1])], out=out)
    err = capsys.readouterr().err
    assert code == 2 and "http://" not in out.getvalue()
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1 port" in err


def test_guessing_the_token_is_slowed_down(db: Path) -> None:
    with serving(create_app(str(db), token=TOKEN)) as base:
        s = Session(base)
        for _ in range(5):
            assert s.post("/login", {"token": "not-it-not-it-not-it"})[0] == 401
        assert s.post("/login", {"token": TOKEN})[0] == 401  # locked for a minute, even with the right one


def test_a_dashboard_action_reaches_a_running_application(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "live.db", poll_interval=0.01, analysis_interval=3600)
    reg = Registry(hooks=[], store=store)
    b = reg.get("payments")
    b.record_success(b.admit())
    store.flush()
    with serving(create_app(store, token=TOKEN)) as base:
        status, _, _ = Session(base).post("/action", {"action": "open", "name": "payments"},
                                          {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert eventually(lambda: b.state.value == "forced_open")
    store.close()


def test_query_strings_choose_among_fixed_options(db: Path) -> None:
    with serving(create_app(str(db))) as base:
        for path in ["/?sort=" + q("name;DROP TABLE circuit_breaker_states"), "/?state=" + q("open' OR 1=1 --"),
                     "/?offset=-5", "/?offset=abc", "/circuit?name=payments&window=" + q("1y';--"),
                     "/webhooks?state=" + q("x'")]:
            assert get(base + path)[0] == 200, path
        _, body, _ = get(base + "/?q=%25")  # '%' matches itself, not everything
        assert "0 of 0" in body
        _, body, _ = get(base + "/?q=" + q("' OR '1'='1"))
        assert "0 of 0" in body
    assert open_reader(db).circuit("payments") is not None


def test_ten_thousand_circuits_are_paged_and_searchable(big: Path) -> None:
    with serving(create_app(str(big))) as base:
        status, body, _ = get(base + "/")
        assert status == 200 and "1\u201350 of 10000" in body
        assert body.count("<tr data-circuit=") == 50
        first = re.findall(r'<tr data-circuit="([^"]+)"', body)
        assert first[:3] == ["svc-00000", "svc-00997", "svc-01994"]  # open ones first
        _, body, _ = get(base + "/?sort=name&offset=9950")
        assert "9951\u201310000 of 10000" in body and 'rel="next"' not in body and 'rel="prev"' in body
        _, body, _ = get(base + "/?q=svc-0999")
        assert sorted(re.findall(r'<tr data-circuit="([^"]+)"', body)) == [f"svc-0999{i}" for i in range(10)]
        _, body, _ = get(base + "/?state=open&state=half_open")
        assert "of 16" in body  # open: every 997th (11); half-open: every 1999th that is not open (5)
        _, body, _ = get(base + "/?alerting=1")
        assert "of 11" in body
        status, body, _ = get(base + "/api/services?q=svc-0000")
        assert status == 200 and '"total":10' in body


def test_mounted_under_a_prefix_links_stay_inside(db: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/circuits", app=create_app(str(db)))])
    with serving(outer) as base:
        status, body, _ = get(base + "/ops/circuits/")
        assert status == 200
        links = re.findall(r'(?:href|src|action)="([^"]+)"', body)
        assert links and all(link.startswith("/ops/circuits/") for link in links), links
        assert get(base + "/ops/circuits/static/dashboard.css")[0] == 200
        assert get(base + "/ops/circuits/circuit?name=payments")[0] == 200


def test_the_command_line_server_answers_only_loopback_names(db: Path) -> None:
    with serving(create_app(str(db), allowed_hosts=["127.0.0.1", "localhost"])) as base:
        assert get(base + "/")[0] == 200
        assert get(base + "/", {"Host": "attacker.example"})[0] == 400  # DNS rebinding


def test_configuration_is_checked(db: Path) -> None:
    with pytest.raises(ConfigurationError, match="16 characters"):
        create_app(str(db), token="short")
    with pytest.raises(ConfigurationError):
        create_app(str(db), refresh=-1)
    with pytest.raises(ConfigurationError):
        create_app(42)  # type: ignore[arg-type]
