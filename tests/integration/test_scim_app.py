"""A SaaS app that speaks SCIM itself, end to end: Entra ID's and Okta's sequences through the gateway, with the
shipped mappings/scim_app.yaml, into a real SCIM server written by others (scim2-server, a process on loopback).
Every step asserts the target's own resources, read over plain HTTP, not only the gateway's answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, Scim
from tests.demo_rows import q
from tests.idp import MS_GROUP_URN, PASSWORD, entra_group, entra_user, okta_user
from tests.scim_target import TARGET_TOKEN, ScimTarget, TargetTenant

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "scim_app.yaml"
TOKEN = "scim-app-scim-token-0123456789"
BASE = "/apps/scim_app/scim/v2"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimTarget]:
    server = ScimTarget(tmp_path_factory.mktemp("scim-app"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tenant(target: ScimTarget, monkeypatch: pytest.MonkeyPatch) -> TargetTenant:
    tenant = target.tenant()
    monkeypatch.setenv("SCIM_APP_URL", tenant.base_url)
    monkeypatch.setenv("SCIM_APP_TOKEN", TARGET_TOKEN)
    monkeypatch.setenv("SCIM_APP_SCIM_TOKEN", TOKEN)
    return tenant


@pytest.fixture
async def client(aiohttp_client: Any, tenant: TargetTenant, tmp_path: Path) -> TestClient:
    return await aiohttp_client(create_app(GatewaySettings(mappings=[MAPPING], data_dir=tmp_path / "data")))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


def work_email(raw: dict[str, Any]) -> str:
    return next(e["value"] for e in raw["emails"] if e.get("type") == "work")


def member_ids(tenant: TargetTenant, display_name: str) -> list[str]:
    group = tenant.group(display_name)
    assert group is not None, f"the target has no group {display_name}"
    return sorted(m["value"] for m in group.get("members", []))


async def test_entra_sequence(scim: Scim, tenant: TargetTenant) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "alice@contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0), data

    alice = await create(scim, "/Users", entra_user("alice@contoso.com", "Alice", "Smith", mail="Alice.Smith@contoso.com"))
    raw = tenant.user("alice@contoso.com")
    assert raw["id"] != alice["id"]  # the app's own id; the gateway issues the IdP's
    assert (raw["name"]["givenName"], raw["name"]["familyName"], raw["title"], raw["active"]) == (
        "Alice",
        "Smith",
        "Engineer",
        True,
    )
    assert work_email(raw) == "Alice.Smith@contoso.com" and raw["externalId"] == "ext-alice@contoso.com"
    assert raw[ENTERPRISE_URN] == {"department": "R&D"} and ENTERPRISE_URN in raw["schemas"]
    resp, got = await scim.get(f"/Users/{alice['id']}?aadOptscim062020")
    assert (resp.status, got["userName"], got["emails"][0]["value"]) == (200, "alice@contoso.com", "Alice.Smith@contoso.com")

    # A manager: the app holds the manager's id in the app; the IdP sees the gateway's.
    bob = await create(scim, "/Users", entra_user("bob@contoso.com", "Bob", "Jones", department="Sales", manager=alice["id"]))
    assert tenant.user("bob@contoso.com")[ENTERPRISE_URN]["manager"]["value"] == raw["id"]
    resp, got = await scim.get(f"/Users/{bob['id']}")
    assert got[ENTERPRISE_URN]["manager"]["value"] == alice["id"]

    # Entra's PATCH dialect: "Replace", a path-less value with dotted and URN keys, "False" as a string.
    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [
            {"op": "Replace", "path": "title", "value": "Lead"},
            {"op": "Replace", "value": {"name.givenName": "Alicia", f"{ENTERPRISE_URN}:department": "Sales"}},
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "alicia@contoso.com"},
        ],
    )
    assert resp.status == 200, data
    raw = tenant.user("alice@contoso.com")
    assert (raw["title"], raw["name"]["givenName"], raw[ENTERPRISE_URN]["department"]) == ("Lead", "Alicia", "Sales")
    assert work_email(raw) == "alicia@contoso.com"
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert tenant.user("alice@contoso.com")["active"] is False
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Remove", "path": "title"}])
    assert resp.status == 200, data
    assert "title" not in tenant.user("alice@contoso.com")

    # Groups: Entra's body (Microsoft's URN), members added, one removed by a value list, a rename.
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(scim, "/Groups", entra_group("Engineering"))
    assert member_ids(tenant, "Engineering") == []
    native = {u["userName"]: u["id"] for u in tenant.all("/Users")}
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status in (200, 204), data
    assert member_ids(tenant, "Engineering") == sorted([native["alice@contoso.com"], native["bob@contoso.com"]])
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status in (200, 204), data
    assert member_ids(tenant, "Engineering") == [native["bob@contoso.com"]]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Eng"}])
    assert resp.status in (200, 204), data
    assert tenant.group("Engineering") is None and member_ids(tenant, "Eng") == [native["bob@contoso.com"]]

    # Delete: the user leaves the app, and the app's group no longer lists it.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert tenant.one("/Users", native["bob@contoso.com"]) is None
    assert member_ids(tenant, "Eng") == []
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert tenant.all("/Groups") == []


async def test_okta_sequence(scim: Scim, tenant: TargetTenant) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"], data["startIndex"]) == (200, 0, 1)
    isaac = await create(scim, "/Users", okta_user("Isaac@Okta.example", "Isaac", "Brock"))
    raw = tenant.user("isaac@okta.example")
    assert (raw["userName"], raw["name"], raw["locale"], raw["active"]) == (
        "Isaac@Okta.example",
        {"givenName": "Isaac", "familyName": "Brock"},
        "en-US",
        True,
    )
    assert PASSWORD not in repr(tenant.all("/Users"))  # the mapping sends no password on

    # PUT: the whole user back, changed; then deactivation and reactivation by a path-less PATCH.
    body = okta_user("Isaac@Okta.example", "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    raw = tenant.user("isaac@okta.example")
    assert (raw["name"]["givenName"], raw["title"], raw["active"]) == ("Izzy", "Director", True)
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": False}}])
    assert (resp.status, data["active"]) == (200, False), data
    assert tenant.user("isaac@okta.example")["active"] is False
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": True}}])
    assert tenant.user("isaac@okta.example")["active"] is True

    # Group Push: create with members, replace the list, add, remove by value filter, rename, delete.
    a, b, c = [await create(scim, "/Users", okta_user(f"{n}@okta.example")) for n in "abc"]
    native = {u["userName"]: u["id"] for u in tenant.all("/Users")}
    group = await create(
        scim,
        "/Groups",
        {"schemas": [GROUP_URN], "displayName": "Okta Pushed", "members": [{"value": a["id"]}, {"value": b["id"]}]},
    )
    assert member_ids(tenant, "Okta Pushed") == sorted([native["a@okta.example"], native["b@okta.example"]])
    gid = group["id"]
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert member_ids(tenant, "Okta Pushed") == sorted([native["b@okta.example"], native["c@okta.example"]])
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": isaac["id"]}]}])
    assert resp.status == 200, data
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert member_ids(tenant, "Okta Pushed") == sorted([native["b@okta.example"], native["Isaac@Okta.example"]])
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert tenant.group("Okta Renamed") is not None
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204 and tenant.all("/Groups") == []


async def test_accounts_already_in_the_app_are_adopted_not_duplicated(scim: Scim, tenant: TargetTenant) -> None:
    status, existing = tenant.request(
        "POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "carol", "title": "Old"}
    )
    assert status == 201, existing
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Carol"'))
    assert (resp.status, data["totalResults"]) == (200, 1), data
    carol = data["Resources"][0]
    assert carol["id"] != existing["id"] and carol["title"] == "Old"
    resp, data = await scim.patch(f"/Users/{carol['id']}", [{"op": "replace", "path": "title", "value": "New"}])
    assert resp.status == 200, data
    assert [u["title"] for u in tenant.all("/Users")] == ["New"]  # the one account, linked and changed

    status, _ = tenant.request("POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "dan"})
    assert status == 201
    resp, data = await scim.post("/Users", okta_user("dan", password=None))
    # A create without the lookup first: the app's own 409, its scimType and detail carried to the IdP.
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data
    assert "scimType uniqueness: One or more of the attribute values are already in use" in data["detail"]
    assert len([u for u in tenant.all("/Users") if u["userName"] == "dan"]) == 1


async def test_the_target_down_is_503_with_retry_after(scim: Scim, target: ScimTarget, tenant: TargetTenant) -> None:
    alice = await create(scim, "/Users", entra_user("alice@contoso.com", "Alice", "Smith"))
    target.stop()
    try:
        resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "replace", "path": "title", "value": "x"}])
        assert resp.status == 503, data
        assert resp.headers.get("Retry-After") and "connect" in data["detail"]
    finally:
        target.start()


def test_translate_shows_the_calls(tenant: TargetTenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    request = tmp_path / "request.json"
    request.write_text('{"method": "POST", "path": "/Users", "body": {"userName": "zoe", "name": {"givenName": "Zoe"}}}')
    code = main(["translate", "scim_app", str(request), "--config", str(MAPPING)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"method": "POST"' in out and '"givenName": "Zoe"' in out and "Bearer ***" in out
    assert TARGET_TOKEN not in out and MS_GROUP_URN not in out


def test_check_connect_names_fields_the_targets_schema_lacks(
    tenant: TargetTenant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    assert main(["check", "--connect", str(MAPPING), "--data-dir", str(tmp_path / "data")]) == 0, capsys.readouterr().out
    assert "the live app fits" in capsys.readouterr().out
    typo = tmp_path / "scim_app.yaml"
    typo.write_text(MAPPING.read_text().replace("field: name.givenName", "field: name.givenNam"))
    assert main(["check", "--connect", str(typo), "--data-dir", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "the app's User records have no field 'name.givenNam' (did you mean name.givenName?)" in out, out
