"""Per-app bearer tokens: each app accepts only its own; tokens live as hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from gateway.app import create_app
from gateway.connectors.registry import load_registry
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.mapping.compile import load_mapping
from gateway.mapping.loader import MappingFileError
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, PATCH_URN, USER_URN
from tests.integration.test_jwt import jwt_block, mint, public_jwk, rsa_key

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


async def test_a_write_with_one_apps_token_never_reaches_another_app(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
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


# ---------------------------------------------------------------- one app's credentials at every endpoint of another


async def test_one_apps_token_and_jwt_are_refused_by_every_endpoint_of_another(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """demo (A) and hr (B) in one gateway, both trusting one issuer (the same keys) for different audiences.
    A's static token and a JWT for A's audience get 401 from every kind of B endpoint, and B is unchanged."""

    async def serve_keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [public_jwk(rsa_key("k1"), "k1")]})

    keys = web.Application()
    keys.router.add_get("/keys", serve_keys)
    jwks_url = str((await aiohttp_server(keys)).make_url("/keys"))
    settings = two_apps(tmp_path, monkeypatch)
    for path, audience in ((settings.mappings[0], "api://demo"), (settings.mappings[1], "api://hr")):
        text = path.read_text().replace("auth:\n", "auth:\n" + jwt_block(f"jwks_url: {jwks_url}", audience=audience) + "\n", 1)
        path.write_text(text)
    client = await aiohttp_client(create_app(settings))

    def headers(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}

    a_jwt = mint(aud="api://demo")
    assert (await client.get("/apps/demo/scim/v2/Users", headers=headers(a_jwt))).status == 200
    assert (await client.get("/apps/demo/scim/v2/Users", headers=headers(DEMO_TOKEN))).status == 200
    # B's own resources, made with B's token.
    hr = "/apps/hr/scim/v2"
    resp = await client.post(f"{hr}/Users", json={"schemas": [USER_URN], "userName": "b.user"}, headers=headers(HR_TOKEN))
    user = await resp.json(content_type=None)
    resp = await client.post(f"{hr}/Groups", json={"schemas": [GROUP_URN], "displayName": "B team"}, headers=headers(HR_TOKEN))
    group = await resp.json(content_type=None)
    assert resp.status == 201

    async def b_state() -> Any:
        got = [
            await (await client.get(f"{hr}/{kind}/{item['id']}", headers=headers(HR_TOKEN))).json(content_type=None)
            for kind, item in (("Users", user), ("Groups", group))
        ]
        with sqlite3.connect(tmp_path / "hr" / "demo.db") as db:
            rows = [
                db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("employees", "teams", "team_members")
            ]
        return got, rows

    before = await b_state()
    patch = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "displayName", "value": "pwned"}]}
    bulk = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "x", "data": {"schemas": [USER_URN], "userName": "bulk.intruder"}},
            {"method": "DELETE", "path": f"/Users/{user['id']}"},
        ],
    }
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/Users", None),
        ("GET", f"/Users/{user['id']}", None),
        ("GET", '/Users?filter=userName eq "b.user"', None),
        ("POST", "/Users", {"schemas": [USER_URN], "userName": "intruder"}),
        ("PUT", f"/Users/{user['id']}", {"schemas": [USER_URN], "userName": "renamed"}),
        ("PATCH", f"/Users/{user['id']}", patch),
        ("DELETE", f"/Users/{user['id']}", None),
        ("GET", "/Groups", None),
        ("GET", f"/Groups/{group['id']}", None),
        ("POST", "/Groups", {"schemas": [GROUP_URN], "displayName": "intruders"}),
        ("PUT", f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "renamed"}),
        ("PATCH", f"/Groups/{group['id']}", patch),
        ("DELETE", f"/Groups/{group['id']}", None),
        ("POST", "/.search", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}),
        ("POST", "/Users/.search", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}),
        ("POST", "/Bulk", bulk),
        # Discovery needs a token too: it shows the app's schema, which is the app's business.
        ("GET", "/ServiceProviderConfig", None),
        ("GET", "/ResourceTypes", None),
        ("GET", "/ResourceTypes/User", None),
        ("GET", "/Schemas", None),
        ("GET", f"/Schemas/{USER_URN}", None),
    ]
    for token, kind in ((DEMO_TOKEN, "A's static token"), (a_jwt, "a JWT for A's audience")):
        for method, path, body in requests:
            resp = await client.request(
                method, hr + path, data=json.dumps(body) if body is not None else None, headers=headers(token)
            )
            answer = await resp.json(content_type=None)
            assert resp.status == 401, (kind, method, path, answer)
            assert resp.headers["WWW-Authenticate"].endswith('error="invalid_token"'), (kind, method, path)
            assert token not in json.dumps(answer)
            if token == a_jwt:
                assert "another audience" in answer["detail"]
    assert await b_state() == before
    # Every refusal is in the audit log as such, with no credential; and nothing was recorded as written to B.
    records = [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    b_records = [r for r in records if r["app"] == "hr"]
    assert [(r["op"], r["status"], r["credential"]) for r in b_records[2:]] == [("auth", 401, None)] * (2 * len(requests))
    assert [(r["op"], r["status"], r["credential"]) for r in b_records[:2]] == [
        ("create", 201, f"token-{hashlib.sha256(HR_TOKEN.encode()).hexdigest()[:8]}")
    ] * 2


# ---------------------------------------------------------------- which credential a request used


async def test_each_request_knows_its_credential_by_name_never_by_secret(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    settings = two_apps(tmp_path, monkeypatch)
    hr = settings.mappings[1]
    digest = hashlib.sha256(HR_TOKEN.encode()).hexdigest()
    second = "hr-second-token-cccccccccc"
    hr.write_text(
        hr.read_text().replace(
            f"    - sha256: {digest}",
            f"    - sha256: {digest}\n      name: entra-prod\n    - sha256: {hashlib.sha256(second.encode()).hexdigest()}",
        )
    )
    client = await aiohttp_client(create_app(settings))
    user = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "named"}
    for app, token in (("hr", HR_TOKEN), ("hr", second), ("demo", DEMO_TOKEN)):
        resp = await client.post(
            f"/apps/{app}/scim/v2/Users", json={**user, "userName": token}, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 201
    records = [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    assert [(r["app"], r["credential"]) for r in records] == [
        ("hr", "entra-prod"),
        ("hr", f"token-{hashlib.sha256(second.encode()).hexdigest()[:8]}"),
        ("demo", f"token-{hashlib.sha256(DEMO_TOKEN.encode()).hexdigest()[:8]}"),  # by env reference, named by its hash
    ]


def test_token_names_are_checked(tmp_path: Path) -> None:
    ensure_demo_database(tmp_path)
    for bearer, message in (
        (
            "    - {sha256: " + "a" * 64 + ", name: idp}\n    - {sha256: " + "b" * 64 + ", name: idp}",
            "token names must be unique within an app: idp",
        ),
        ("    - {sha256: " + "a" * 64 + ", name: 'jwt:forged'}", "auth.bearer[0].name: String should match pattern"),
    ):
        path = tmp_path / "named.yaml"
        path.write_text(demo_mapping_path().read_text().replace("  bearer: []", "  bearer:\n" + bearer))
        with pytest.raises(MappingFileError) as caught:
            load_mapping(path, load_registry())
        assert message in str(caught.value), str(caught.value)
