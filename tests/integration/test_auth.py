"""Per-app bearer tokens: each app accepts only its own; tokens live as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings

HR_TOKEN = "hr-token-aaaaaaaaaaaaaaaa"
DEMO_TOKEN = "demo-token-bbbbbbbbbbbbbbb"


def two_apps(tmp_path: Path, monkeypatch: Any) -> GatewaySettings:
    data_dir = tmp_path / "data"
    ensure_demo_database(data_dir)
    # A second app on its own copy of the demo schema, its token given by hash in the mapping.
    hr_dir = tmp_path / "hr"
    ensure_demo_database(hr_dir)
    text = demo_mapping_path().read_text()
    text = text.replace("app: demo", "app: hr").replace("{data_dir}/demo.db", f"{hr_dir}/demo.db")
    text = text.replace("bearer: []", f"bearer:\n    - sha256: {hashlib.sha256(HR_TOKEN.encode()).hexdigest()}")
    hr_mapping = tmp_path / "hr.yaml"
    hr_mapping.write_text(text)
    # The demo app's token by environment reference.
    monkeypatch.setenv("DEMO_APP_TOKEN", DEMO_TOKEN)
    demo_text = demo_mapping_path().read_text().replace("bearer: []", "bearer:\n    - env: DEMO_APP_TOKEN")
    demo_mapping = tmp_path / "demo.yaml"
    demo_mapping.write_text(demo_text)
    return GatewaySettings(mappings=[demo_mapping, hr_mapping], data_dir=data_dir)


async def test_each_app_accepts_only_its_own_token(aiohttp_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    client = await aiohttp_client(create_app(two_apps(tmp_path, monkeypatch)))
    cases = [
        ("demo", DEMO_TOKEN, 200),
        ("hr", HR_TOKEN, 200),
        ("demo", HR_TOKEN, 401),
        ("hr", DEMO_TOKEN, 401),
        ("hr", "", 401),
        ("hr", HR_TOKEN.upper(), 401),
    ]
    for app, token, status in cases:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await client.get(f"/apps/{app}/scim/v2/Users", headers=headers)
        assert resp.status == status, (app, token)
        assert resp.content_type == "application/scim+json"
        body = await resp.json(content_type=None)
        if status == 401:
            assert body["status"] == "401" and body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
            assert "WWW-Authenticate" in resp.headers
            assert token not in (body.get("detail") or "") or not token


async def test_a_write_with_one_apps_token_never_reaches_another_app(aiohttp_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    import sqlite3

    client = await aiohttp_client(create_app(two_apps(tmp_path, monkeypatch)))
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "intruder"}
    resp = await client.post("/apps/hr/scim/v2/Users", json=body, headers={"Authorization": f"Bearer {DEMO_TOKEN}"})
    assert resp.status == 401
    with sqlite3.connect(tmp_path / "hr" / "demo.db") as db:
        assert db.execute("SELECT count(*) FROM employees").fetchone()[0] == 0


async def test_unknown_app_is_a_scim_404(aiohttp_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    client = await aiohttp_client(create_app(two_apps(tmp_path, monkeypatch)))
    resp = await client.get("/apps/nope/scim/v2/Users", headers={"Authorization": f"Bearer {DEMO_TOKEN}"})
    assert resp.status == 404
    assert (await resp.json(content_type=None))["status"] == "404"


def test_a_token_given_on_the_command_line_is_kept_as_a_secret(tmp_path: Path) -> None:
    settings = GatewaySettings(mappings=[demo_mapping_path()], data_dir=tmp_path, extra_tokens={"demo": [SecretStr("visible?")]})
    assert "visible?" not in repr(settings) and "visible?" not in str(settings.model_dump())
