"""The dashboard in a real browser: Debian's headless Chromium (/usr/bin/chromium) driven by Playwright
— no browser is downloaded. A hostile circuit name renders as text and runs nothing; the services table
updates live without a reload; ten thousand circuits page and search; actions work after unlocking.
Screenshots go to artifacts/dashboard/ (CI keeps them). Render times at ten thousand circuits are
printed, not asserted (the machine is shared)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from circuitry.store import open_reader
from circuitry.store.control import set_state
from circuitry.tools.dashboard import create_app

from .dashboard_env import HOSTILE, HOSTILE_MESSAGE, TOKEN, many, populated, serving

CHROMIUM = os.environ.get("CIRCUITRY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does, so CI never skips)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.dialogs = dialogs
    yield page
    page.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_hostile_circuit_name_renders_as_text_and_runs_nothing(page: Any, tmp_path: Path) -> None:
    db = populated(tmp_path / "xss.db")
    with serving(create_app(str(db), refresh=0)) as base:
        page.goto(base + "/")
        link = page.locator("td.name a", has_text=HOSTILE)
        assert link.count() == 1 and link.inner_text() == HOSTILE
        shot(page, "xss-services")
        link.click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == HOSTILE
        assert page.get_by_text(HOSTILE_MESSAGE).count() >= 1  # the stored error, shown as text
        shot(page, "xss-circuit")
        page.goto(base + "/alerts")
        assert page.locator("td.name a", has_text=HOSTILE).count() >= 1
        shot(page, "xss-alerts")
        assert page.dialogs == []  # no alert() ran
        assert page.evaluate("window.__xss") is None  # no onerror ran
        assert page.locator("script").count() == 1  # ours only


def test_the_services_table_updates_live_without_a_reload(page: Any, tmp_path: Path) -> None:
    db = populated(tmp_path / "live.db")
    with serving(create_app(str(db), refresh=0.3)) as base:
        page.goto(base + "/")
        row = page.locator('tr[data-circuit="search-1"] .badge')
        assert row.inner_text() == "closed"
        page.evaluate("window.__sameDocument = 42")
        set_state(open_reader(db).backend, "search-1", "open", by="test")  # as another process would
        expect = pytest.importorskip("playwright.sync_api").expect  # (the page's CSP forbids eval'd predicates)
        expect(row).to_have_text("forced open", timeout=30_000)
        assert page.evaluate("window.__sameDocument") == 42  # updated in place, not reloaded
        assert int(page.evaluate("document.body.getAttribute('data-updates')")) >= 1
        shot(page, "live-update")


def test_ten_thousand_circuits_page_and_search(page: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = many(tmp_path / "big.db")
    with serving(create_app(str(db), refresh=0)) as base:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            page.goto(base + "/")
            page.wait_for_selector("table.services tbody tr")
            timings.append(time.perf_counter() - started)
        nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0]; return "
                            "{response: n.responseEnd - n.requestStart, load: n.loadEventEnd - n.startTime}; })()")
        assert page.locator("table.services tbody tr").count() == 50
        assert "1\u201350 of 10000" in page.locator(".shown").inner_text()
        shot(page, "ten-thousand")
        page.fill('input[name="q"]', "svc-0420")
        page.click('form.filters button[type="submit"]')
        page.wait_for_url("**q=svc-0420**")
        names = page.locator("td.name a").all_inner_texts()
        assert sorted(names) == [f"svc-0420{i}" for i in range(10)]
        page.goto(base + "/?sort=name")
        page.click('a[rel="next"]')
        page.wait_for_url("**offset=50**")
        assert page.locator("td.name a").first.inner_text() == "svc-00050"
        with capsys.disabled():
            print(f"\n[dashboard, 10,000 circuits] page load in Chromium: best {min(timings) * 1000:.0f} ms, "
                  f"median {sorted(timings)[2] * 1000:.0f} ms; last navigation: response {nav['response']:.0f} ms, "
                  f"load event {nav['load']:.0f} ms")


def test_actions_after_unlocking_and_the_timeline(page: Any, tmp_path: Path) -> None:
    db = populated(tmp_path / "act.db")
    with serving(create_app(str(db), token=TOKEN, refresh=0)) as base:
        page.goto(base + "/circuit?name=payments")
        assert page.locator('button[data-action="open"]').count() == 0  # read-only until unlocked
        assert page.locator("svg.timeline g.transition").count() >= 1  # closed -> open marked
        assert page.locator("svg.timeline rect.band-open").count() >= 1
        shot(page, "timeline")
        page.click("text=Unlock actions")
        page.fill('input[name="token"]', TOKEN)
        page.click('button[type="submit"]')
        page.goto(base + "/circuit?name=payments")
        page.click('button[data-action="close"]')  # asks first (accepted by the fixture)
        page.wait_for_url("**/circuit?name=payments")
        assert page.locator("dl.facts .badge").inner_text() == "forced closed"
        assert any("Force payments closed" in d for d in page.dialogs)
        assert open_reader(db).circuit("payments")["state"] == "disabled"  # type: ignore[index]
        page.click('button[data-action="ack_service"]')
        page.wait_for_url("**/circuit?name=payments")
        assert open_reader(db).alerts("payments") == []
        shot(page, "after-actions")
