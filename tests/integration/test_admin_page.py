"""The admin page over real HTTP (the demo app, its SQLite files in tmp_path): off without credentials, its own
bearer and Basic credentials (refusals audited), GET only, and what each page shows of what the gateway did."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.admin_auth import CredentialsFileError, read_credentials_file, token_credential
from gateway.app import create_app
from gateway.auth import token_digest
from gateway.cli import main
from gateway.http import admin_data
from gateway.http.keys import STORE
from gateway.settings import AdminCredential
from tests.conftest import Scim, demo_settings, user_body

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PASSWORD = "correct horse battery staple"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


pytestmark = pytest.mark.both_stores


@pytest.fixture
async def admin(aiohttp_client: Any, data_dir: Path, store_overrides: dict[str, Any]) -> TestClient:
    credentials = [
        token_credential(ADMIN_TOKEN),
        AdminCredential(kind="basic", name="alice", sha256=token_digest(PASSWORD).hex()),
    ]
    return await aiohttp_client(create_app(demo_settings(data_dir, admin=credentials, **store_overrides)))


@pytest.fixture
def scim_admin(admin: TestClient) -> Scim:
    return Scim(admin)


def audit_lines(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def page(client: TestClient, path: str, status: int = 200, auth: str = f"Bearer {ADMIN_TOKEN}") -> str:
    resp = await client.get(path, headers={"Authorization": auth})
    text = await resp.text()
    assert resp.status == status, text
    return text


def cells(html: str, row_id: str) -> list[str]:
    """The text of each cell of the table row with that id."""
    found = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', html, re.S)
    assert found, f"no row {row_id}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", found.group(1), re.S)]


async def test_off_without_credentials(aiohttp_client: Any, data_dir: Path) -> None:
    client = await aiohttp_client(create_app(demo_settings(data_dir)))
    for path in ("/admin", "/admin/status.json", "/admin/audit"):
        resp = await client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert resp.status == 404


async def test_credentials_none_wrong_token_basic(admin: TestClient, data_dir: Path) -> None:
    resp = await admin.get("/admin")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="scim-gateway admin"')
    assert resp.content_type == "text/html"
    assert audit_lines(data_dir) == []  # a browser's first request, before its prompt: not an attempt

    for header, reason in [
        ("Bearer not-the-admin-token", "unknown_token"),
        (basic("alice", "wrong password"), "unknown_user"),
        (basic("mallory", PASSWORD), "unknown_user"),
        ("Basic !!!not-base64", "malformed"),
        (f"Digest {ADMIN_TOKEN}", "no_credentials"),
    ]:
        resp = await admin.get("/admin/status.json", headers={"Authorization": header})
        assert resp.status == 401, header
        text = await resp.text()
        assert ADMIN_TOKEN not in text and PASSWORD not in text
        last = audit_lines(data_dir)[-1:]
        assert [r["reason"] for r in last] == ([reason] if reason != "no_credentials" else ["malformed"]), header
    refusals = audit_lines(data_dir)
    assert [(r["op"], r["area"], r["status"], r["reason"], r["credential"]) for r in refusals] == [
        ("auth", "admin", 401, "unknown_token", None),
        ("auth", "admin", 401, "unknown_user", None),
        ("auth", "admin", 401, "unknown_user", None),
        ("auth", "admin", 401, "malformed", None),
    ]
    assert not any(PASSWORD in json.dumps(r) or "not-the-admin-token" in json.dumps(r) for r in refusals)

    resp = await admin.get("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-store" and "script-src" not in resp.headers["Content-Security-Policy"]
    resp = await admin.get("/admin", headers={"Authorization": basic("alice", PASSWORD)})
    assert resp.status == 200
    assert "basic:alice" in await resp.text()


async def test_head_answers_as_get_without_a_body(admin: TestClient) -> None:
    resp = await admin.head("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200 and resp.content_type == "text/html" and await resp.read() == b""
    assert (await admin.head("/admin")).status == 401


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_it_only_reads(admin: TestClient, method: str) -> None:
    for path in ("/admin", "/admin/audit", "/admin/status.json", "/admin/people"):
        resp = await admin.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert resp.status == 405, path
        assert resp.headers["Allow"] == "GET, HEAD"


async def test_overview_and_status_json(admin: TestClient, scim_admin: Scim, data_dir: Path) -> None:
    _, ann = await scim_admin.post("/Users", user_body("ann@example.com"))
    await scim_admin.post("/Users", user_body("bob@example.com"))
    resp, _ = await scim_admin.post("/Users", user_body("ANN@example.com"))
    assert resp.status == 409
    await scim_admin.post("/Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops"})

    status = json.loads(await page(admin, "/admin/status.json"))
    (demo,) = status["apps"]
    assert {k: demo[k] for k in ("name", "open", "breaker", "pending", "users", "groups", "reconcile")} == {
        "name": "demo",
        "open": True,
        "breaker": "closed",
        "pending": 0,
        "users": 2,
        "groups": 1,
        "reconcile": None,
    }
    html = await page(admin, "/admin")
    assert cells(html, "app-demo") == ["demo", "open", "closed", "", "0", "2", "1", "never"]
    failures = html.split('id="failures"')[1].split('id="recent"')[0]
    assert failures.count('<tr class="failed">') == 1 and "409" in failures and "uniqueness" in failures
    recent = html.split('id="recent"')[1]
    assert ann["id"] in recent and recent.count("<tr class=") == 4


async def test_audit_search_by_user_app_op_status_and_time(
    admin: TestClient, scim_admin: Scim, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ann = await scim_admin.post("/Users", user_body("ann@example.com", externalId="E-1"))
    _, bob = await scim_admin.post("/Users", user_body("bob@example.com"))
    await scim_admin.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": False}])
    await scim_admin.delete(f"/Users/{bob['id']}")

    def rows(html: str) -> list[tuple[str, str]]:
        body = html.split("<tbody>")[1] if "<tbody>" in html else ""
        return re.findall(r"<td>\S+Z</td><td>\w+</td><td>(\w[\w-]*) .*?(?:who=([0-9a-f-]+)|</td>)", body, re.S)

    html = await page(admin, "/admin/audit?user=ann%40example.com")
    assert [op for op, _ in rows(html)] == ["patch", "create"] and bob["id"] not in html
    html = await page(admin, "/admin/audit?user=E-1&op=create")
    assert [op for op, _ in rows(html)] == ["create"]
    html = await page(admin, "/admin/audit?op=delete&app=demo")
    assert [op for op, _ in rows(html)] == ["delete"] and bob["id"] in html
    html = await page(admin, "/admin/audit?status=204")
    assert [op for op, _ in rows(html)] == ["delete"]
    assert "No record matches." in await page(admin, "/admin/audit?since=2020-01-01&until=2020-01-02")
    assert len(rows(await page(admin, "/admin/audit?since=1h"))) == 4
    assert "No record matches." in await page(admin, "/admin/audit?user=nobody%40example.com")

    html = await page(admin, "/admin/audit?since=next+week", 400)
    assert "&#39;next week&#39; is not a time" in html
    assert "give an HTTP status" in await page(admin, "/admin/audit?status=bad", 400)

    monkeypatch.setattr(admin_data, "PAGE_SIZE", 3)
    first = await page(admin, "/admin/audit?app=demo")
    assert len(rows(first)) == 3 and 'href="?app=demo&amp;page=2" rel="next"' in first
    second = await page(admin, "/admin/audit?app=demo&page=2")
    assert len(rows(second)) == 1 and 'rel="prev"' in second and 'rel="next"' not in second


async def test_a_persons_footprint(admin: TestClient, scim_admin: Scim, demo_db: Any) -> None:
    _, ann = await scim_admin.post("/Users", user_body("ann@example.com", externalId="E-1"))
    _, group = await scim_admin.post(
        "/Groups",
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops", "members": [{"value": ann["id"]}]},
    )
    (native,) = [str(r[0]) for r in demo_db.execute("SELECT emp_no FROM employees WHERE login = 'ann@example.com'")]
    for who in ("ann@example.com", "E-1", ann["id"]):
        html = await page(admin, f"/admin/people?who={who}")
        row = cells(html, "account-demo")
        assert row[:6] == ["demo", "ann@example.com", ann["id"], native, "yes", "Ops"], who
        assert "create: done" in row[9]
    assert "No account in any app matches nobody" in await page(admin, "/admin/people?who=nobody")
    assert group["id"] not in await page(admin, "/admin/people")  # no search yet: only the form


async def test_markup_in_values_is_escaped(admin: TestClient, scim_admin: Scim) -> None:
    resp, _ = await scim_admin.post("/Users", user_body("<script>x</script>@example.com"))
    html = await page(admin, "/admin/people?who=%3Cscript%3Ex%3C/script%3E@example.com")
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;@example.com" in html


async def test_access_review_csv_and_reconcile_view(admin: TestClient, scim_admin: Scim) -> None:
    await scim_admin.post("/Users", user_body("ann@example.com"))
    resp = await admin.get("/admin/review.csv", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    (row,) = list(csv.DictReader(io.StringIO(await resp.text())))
    assert (row["app"], row["userName"], row["person"]) == ("demo", "ann@example.com", "ann@example.com")

    assert "No reconcile has run for demo" in await page(admin, "/admin/apps/demo/reconcile")
    report = {
        "app": "demo",
        "ran_at": "2026-05-04T10:00:00Z",
        "found": 1,
        "orphans": [{"type": "User", "native_id": "77", "name": "ghost"}],
    }
    await admin.app[STORE].save_report("demo", report, report["ran_at"])
    html = await page(admin, "/admin/apps/demo/reconcile")
    assert "Last run 2026-05-04T10:00:00Z" in html and "ghost" in html and "orphans (1)" in html
    assert "No app named" in await page(admin, "/admin/apps/nope/reconcile", 404)
    assert "Nothing at /admin/elsewhere" in await page(admin, "/admin/elsewhere", 404)
    overview = await page(admin, "/admin")
    assert cells(overview, "app-demo")[-1] == "2026-05-04T10:00:00Z: 1 found"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/audit?page=" + "9" * 5000,
        "/admin/audit?page=%C2%B2",
        "/admin/audit?status=%C2%B2%C2%B2%C2%B2",
        "/admin/audit?since=99999999999999d",
        "/admin/audit?until=0001-01-01&since=1w",
        "/admin/audit?user=%00",
        "/admin/people?who=%00x",
        "/admin/people?who=" + "x" * 10000,
        "/admin/people?who=%F0%9F%98%80%27%22%3C",
        "/admin/apps/%00/reconcile",
        "/admin/apps/" + "a" * 3000 + "/reconcile",
        "/admin/audit?user=ann%25&app=%27&op=%22",
    ],
)
async def test_hostile_input_is_no_500(admin: TestClient, path: str) -> None:
    resp = await admin.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status in (200, 400, 404), (path, await resp.text())
    assert resp.content_type == "text/html"


def test_credentials_file(tmp_path: Path) -> None:
    digest = token_digest(PASSWORD).hex()
    good = tmp_path / "admin.creds"
    good.write_text(
        f"# the admin page\nbearer ops-board {token_digest(ADMIN_TOKEN).hex()}\nbasic alice {digest.upper()}  # Alice\n"
    )
    assert read_credentials_file(good) == [
        AdminCredential(kind="bearer", name="ops-board", sha256=token_digest(ADMIN_TOKEN).hex()),
        AdminCredential(kind="basic", name="alice", sha256=digest),
    ]
    for text, message in [
        (f"basic alice {PASSWORD}\n", "admin.creds:1: expected `bearer NAME SHA256`"),
        ("# nothing\n", "no credential in it"),
        (f"basic al:ice {digest}\n", "cannot hold ':'"),
    ]:
        good.write_text(text)
        with pytest.raises(CredentialsFileError, match=re.escape(message)) as caught:
            read_credentials_file(good)
        assert PASSWORD not in str(caught.value)


def test_serve_refuses_a_bad_credentials_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "admin.creds"
    creds.write_text("basic alice plain-password\n")
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--admin-credentials", str(creds)]) == 2
    err = capsys.readouterr().err
    assert "admin.creds:1: expected" in err and "plain-password" not in err
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--admin-credentials", str(tmp_path / "none")]) == 2
    assert "cannot read the admin credentials file" in capsys.readouterr().err


async def test_an_apps_failures_carry_their_reason_code(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HR fake over REST refusing and failing creates: each audit line names what failed, never the app's message."""
    from pydantic import SecretStr

    from gateway.settings import GatewaySettings
    from tests.fakes.hr_app import HR_STATE, create_hr_app, serve
    from tests.idp import entra_user

    hr_app = create_hr_app(api_key="hr-api-key-admin-0123")
    async with serve(hr_app) as url:
        monkeypatch.setenv("HR_API_URL", url)
        monkeypatch.setenv("HR_API_KEY", "hr-api-key-admin-0123")
        monkeypatch.setenv("HR_SCIM_TOKEN", "unused-token-0123456789")
        root = Path(__file__).resolve().parents[2]
        settings = GatewaySettings(
            mappings=[root / "mappings" / "hr_rest.yaml"],
            data_dir=tmp_path / "data",
            extra_tokens={"hr": [SecretStr("hr-token-0123456789")]},
            admin=[token_credential(ADMIN_TOKEN)],
        )
        client = await aiohttp_client(create_app(settings))
        hr = Scim(client, "hr-token-0123456789", "/apps/hr/scim/v2")
        state = hr_app[HR_STATE]
        echo = '{"error": "login taken by secret-looking-value"}'
        for status, expected in ((409, 409), (500, 503), (422, 400)):
            # A create with hr_rest.yaml's idempotency key is retried on a 500 (twice): fail every try.
            state.fault("POST", "/users", status=status, body=echo, times=3 if status == 500 else 1)
            resp, _ = await hr.post("/Users", entra_user(f"f{status}@example.com", "F", "G"))
            assert resp.status == expected
        records = audit_lines(tmp_path / "data")
        assert [(r["status"], r.get("scim_type"), r.get("reason")) for r in records] == [
            (409, "uniqueness", "app_conflict"),
            (503, None, "app_unavailable"),
            (400, "invalidValue", "app_invalid"),
        ]
        assert "secret-looking-value" not in (tmp_path / "data" / "audit.log").read_text()
        html = await page(client, "/admin/audit?status=failed")
        assert all(code in html for code in ("app_conflict", "app_unavailable", "app_invalid"))
