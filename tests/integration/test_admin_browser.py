"""The admin page in a real headless Chromium (Debian's, driven by Playwright; its own browsers never downloaded),
against a live gateway process serving two apps: the demo (SQLite) and the HR fake over REST on loopback.

Users are provisioned over SCIM into both, one create fails in HR (the app answers 500), and the page is
read as an operator reads it: the overview, the failures, a person's footprint with both apps' native ids,
and an audit search, all through the browser's own Basic login. Screenshots go to $SCIM_GATEWAY_ARTEFACTS
(default tests/artefacts/, ignored by git), with the access review CSV the browser downloaded."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth import token_digest
from gateway.cli import main
from gateway.demo import demo_mapping_path, ensure_demo_database
from tests.conftest import LiveGateway, need_service
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve
from tests.idp import entra_user

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "hr-api-key-browser-0123"
HR_TOKEN = "hr-scim-token-browser-0123"
DEMO_TOKEN = "demo-scim-token-browser-0123"
ADMIN_USER, ADMIN_PASSWORD = "operator", "browser-test-password-0123"


def artefacts() -> Path:
    folder = Path(os.environ.get("SCIM_GATEWAY_ARTEFACTS") or ROOT / "tests" / "artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        need_service(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        need_service("the playwright package is not installed (pip install -e '.[test]')")
    return CHROMIUM


@pytest.fixture
async def hr() -> AsyncIterator[tuple[HrState, str]]:
    app = create_hr_app(api_key=API_KEY)
    async with serve(app) as url:
        yield app[HR_STATE], url


@pytest.fixture
async def gateway(hr: tuple[HrState, str], tmp_path: Path) -> AsyncIterator[LiveGateway]:
    _, url = hr
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "hr.yaml").write_text((ROOT / "mappings" / "hr_rest.yaml").read_text())
    demo = demo_mapping_path().read_text()
    assert "  bearer: []\n" in demo
    (mappings / "demo.yaml").write_text(demo.replace("  bearer: []\n", "  bearer:\n    - env: DEMO_SCIM_TOKEN\n"))
    ensure_demo_database(tmp_path / "gw" / "data")
    creds = tmp_path / "admin.creds"
    creds.write_text(f"basic {ADMIN_USER} {token_digest(ADMIN_PASSWORD).hex()}\n")
    env = {"HR_API_URL": url, "HR_API_KEY": API_KEY, "HR_SCIM_TOKEN": HR_TOKEN, "DEMO_SCIM_TOKEN": DEMO_TOKEN}
    live = LiveGateway(tmp_path / "gw", token="", env=env)
    live.start("--config", str(mappings), "--admin-credentials", str(creds))
    yield live
    live.stop()


async def scim(session: aiohttp.ClientSession, gw: LiveGateway, app: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(
        f"{gw.url}/apps/{app}/scim/v2/Users",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_admin_page_in_chromium(
    chromium: str, gateway: LiveGateway, hr: tuple[HrState, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    state, _ = hr
    people = {"ann@example.com": ("Ann", "Lee", "E-100"), "bob@example.com": ("Bob", "Roy", "E-200")}
    ids: dict[tuple[str, str], str] = {}
    async with aiohttp.ClientSession() as session:
        # Someone in the demo only, first: Ann's native ids then differ between the apps (HR 1, the demo 2).
        status, body = await scim(session, gateway, "demo", DEMO_TOKEN, entra_user("dan@example.com", "Dan", "Fox"))
        assert status == 201, body
        for login, (given, family, external) in people.items():
            for app, token in (("hr", HR_TOKEN), ("demo", DEMO_TOKEN)):
                status, body = await scim(session, gateway, app, token, entra_user(login, given, family, external_id=external))
                assert status == 201, body
                ids[(app, login)] = body["id"]
        # Retried under hr_rest.yaml's idempotency key (twice): every try fails.
        state.fault("POST", "/users", status=500, body='{"error": "database is down"}', times=3)
        status, body = await scim(session, gateway, "hr", HR_TOKEN, entra_user("carol@example.com", "Carol", "Kim"))
        assert status == 503, body
        # An account made in HR behind the gateway's back, then `scim-gateway reconcile hr` (its report kept in the store).
        async with session.post(
            f"{hr[1]}/users", json={"login": "mallory", "first_name": "M"}, headers={"X-API-Key": API_KEY}
        ) as resp:
            assert resp.status == 201
    for name, value in gateway.env.items():
        monkeypatch.setenv(name, value)
    argv = ["reconcile", "hr", "--config", str(tmp_path / "mappings" / "hr.yaml"), "--data-dir", str(gateway.root / "data")]
    assert await asyncio.to_thread(main, argv) == 1  # found something
    hr_native = str(state.user_by_login("ann@example.com")["id"])  # type: ignore[index]
    with closing(sqlite3.connect(gateway.root / "data" / "demo.db")) as db:
        (demo_native,) = [str(r[0]) for r in db.execute("SELECT emp_no FROM employees WHERE login = 'ann@example.com'")]
    assert hr_native != demo_native

    shots = artefacts()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            # Without credentials a browser prompts (headless, Playwright cancels the prompt); a wrong password
            # gets the 401 page.
            anonymous = await browser.new_context()
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                await (await anonymous.new_page()).goto(f"{gateway.url}/admin")
            await anonymous.close()
            wrong = await browser.new_context(http_credentials={"username": ADMIN_USER, "password": "wrong"})
            response = await (await wrong.new_page()).goto(f"{gateway.url}/admin")
            assert response is not None and response.status == 401
            await wrong.close()

            context = await browser.new_context(
                http_credentials={"username": ADMIN_USER, "password": ADMIN_PASSWORD}, viewport={"width": 1280, "height": 900}
            )
            page = await context.new_page()
            response = await page.goto(f"{gateway.url}/admin")
            assert response is not None and response.status == 200
            assert await page.title() == "Overview · scim-gateway admin"
            hr_row = [c.strip() for c in await page.locator("#app-hr td").all_inner_texts()]
            demo_row = [c.strip() for c in await page.locator("#app-demo td").all_inner_texts()]
            # The failed create counts toward the breaker (one in a row: still closed) and is its last failure.
            assert hr_row[:3] == ["hr", "open", "closed (1 failing in a row)"] and hr_row[4:7] == ["0", "2", "0"]
            assert demo_row[:3] == ["demo", "open", "closed"] and demo_row[4:7] == ["0", "3", "0"]
            assert hr_row[3] == "the app failed (HTTP 500 on POST /api/users)"
            # The failures, newest first: the wrong password above, then HR's create with the app's error.
            failures = page.locator("#failures + .scroll tbody tr")
            assert await failures.count() == 2
            refused, failed = [[c.strip() for c in await failures.nth(i).locator("td").all_inner_texts()] for i in (0, 1)]
            assert refused[1:3] == ["admin", "auth GET"] and refused[4:7] == ["401", "", "unknown_user"]
            assert failed[1:3] == ["hr", "create POST"] and failed[4:7] == ["503", "", "app_unavailable"]
            assert await page.locator("#recent + .scroll tbody tr").count() == 7
            assert hr_row[7].endswith(": 1 found") and demo_row[7] == "never"
            await page.screenshot(path=str(shots / "admin-overview.png"), full_page=True)

            # HR's reconcile report, from the overview's link: the orphan made behind the gateway's back.
            await page.click("#app-hr >> text=1 found")
            assert await page.title() == "Reconcile hr · scim-gateway admin"
            orphans = await page.locator("#findings-orphans tbody tr").all_inner_texts()
            assert len(orphans) == 1 and "mallory" in orphans[0]
            await page.screenshot(path=str(shots / "admin-reconcile.png"), full_page=True)

            # The access review, downloaded as a browser downloads it: a row per account.
            async with page.expect_download() as download_info:
                await page.click("header >> text=Access review (CSV)")
            download = await download_info.value
            assert download.suggested_filename == "access-review.csv"
            await download.save_as(shots / "access-review.csv")
            review = list(csv.DictReader(io.StringIO((shots / "access-review.csv").read_text())))
            assert sorted((r["app"], r["userName"]) for r in review) == [
                ("demo", "ann@example.com"),
                ("demo", "bob@example.com"),
                ("demo", "dan@example.com"),
                ("hr", "ann@example.com"),
                ("hr", "bob@example.com"),
            ]

            # The footprint, reached as an operator would: the People link, the form.
            await page.click("header >> text=People")
            await page.fill("input[name=who]", "E-100")
            await page.click("button[type=submit]")
            assert await page.locator("#account-hr td.native").inner_text() == hr_native
            assert await page.locator("#account-demo td.native").inner_text() == demo_native
            hr_cells = await page.locator("#account-hr td").all_inner_texts()
            assert hr_cells[1:3] == ["ann@example.com", ids[("hr", "ann@example.com")]]
            assert await page.locator("table.records tbody tr").count() == 2  # her two creates
            await page.screenshot(path=str(shots / "admin-person.png"), full_page=True)

            # The audit search: her records only, from the link on her page; then the failures of HR.
            await page.click("text=Search the audit log for them")
            rows = page.locator("table.records tbody tr")
            assert await rows.count() == 2
            texts = await rows.all_inner_texts()
            assert {ids[("hr", "ann@example.com")], ids[("demo", "ann@example.com")]} == {
                i for i in ids.values() if any(i in t for t in texts)
            }
            await page.goto(f"{gateway.url}/admin/audit")
            await page.select_option("select[name=app]", "hr")
            await page.fill("input[name=status]", "failed")
            await page.fill("input[name=since]", "1h")
            await page.click("button[type=submit]")
            assert await rows.count() == 1
            assert "app_unavailable" in await rows.first.inner_text()
            await page.screenshot(path=str(shots / "admin-audit.png"), full_page=True)

            # A phone's width: the tables scroll inside their boxes, the page itself does not.
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.goto(f"{gateway.url}/admin")
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            await page.screenshot(path=str(shots / "admin-phone.png"), full_page=True)
            await context.close()
        finally:
            await browser.close()
    for name in ("admin-overview.png", "admin-reconcile.png", "admin-person.png", "admin-audit.png", "admin-phone.png"):
        assert (shots / name).stat().st_size > 5000, name
