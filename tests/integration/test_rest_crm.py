"""The CRM over REST, end to end: Entra ID's and Okta's sequences through the gateway into a real fake CRM.

The fake CRM (tests/fakes/crm_app.py) runs as an aiohttp server on loopback;
the gateway reaches it with mappings/crm_rest.yaml (OAuth2 client credentials,
nested JSON bodies, cursor paging, membership kept as each person's `roles`
list). Every step asserts the CRM's own state, not only the SCIM answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.app import create_app
from gateway.http.keys import APPS
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, USER_URN, Scim
from tests.demo_rows import q
from tests.fakes.crm_app import API, CLIENT_SECRET, CRM_STATE, CrmState, create_crm_app
from tests.idp import MS_GROUP_URN, PASSWORD, entra_user, okta_user
from tests.idp import entra_group as entra_group_body

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "crm_rest.yaml"
TOKEN = "crm-scim-token-0123456789"  # given on the "command line" (extra_tokens)
ENV_TOKEN = "crm-env-token-9876543210"  # the mapping's auth.bearer env reference
BASE = "/apps/crm/scim/v2"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


@dataclass
class Crm:
    state: CrmState
    api_url: str
    token_url: str


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    """The fake CRM on a real loopback port."""
    server = TestServer(create_crm_app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield Crm(server.app[CRM_STATE], str(server.make_url(API)), str(server.make_url("/oauth/token")))
    finally:
        await server.close()


@pytest.fixture
def mapping(crm: Crm, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped mapping, pointed at the fake by its environment variables."""
    monkeypatch.setenv("CRM_API_URL", crm.api_url)
    monkeypatch.setenv("CRM_TOKEN_URL", crm.token_url)
    monkeypatch.setenv("CRM_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("CRM_SCIM_TOKEN", ENV_TOKEN)
    return MAPPING


@pytest.fixture
async def client(aiohttp_client: Any, mapping: Path, data_dir: Path) -> TestClient:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = GatewaySettings(mappings=[mapping], data_dir=data_dir, extra_tokens={"crm": [SecretStr(TOKEN)]})
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


@pytest.fixture
def state(crm: Crm) -> CrmState:
    return crm.state


# ---------------------------------------------------------------- helpers


async def entra_create(scim: Scim, user_name: str, **kw: Any) -> dict[str, Any]:
    parts = user_name.split("@")[0].split(".")
    body = entra_user(
        user_name,
        given=kw.pop("given", parts[0].title()),
        family=kw.pop("family", parts[-1].title()),
        mail=kw.pop("mail", user_name),
        **kw,
    )
    resp, data = await scim.post("/Users", body)
    assert resp.status == 201, data
    return data


async def okta_create(scim: Scim, user_name: str, given: str = "Test", family: str = "User") -> dict[str, Any]:
    resp, data = await scim.post("/Users", okta_user(user_name, given, family))
    assert resp.status == 201, data
    return data


async def entra_group(scim: Scim, name: str, members: list[str] | None = None) -> dict[str, Any]:
    resp, data = await scim.post("/Groups", entra_group_body(name, members))
    assert resp.status == 201, data
    return data


def person(state: CrmState, username: str) -> dict[str, Any]:
    found = state.person(username)
    assert found is not None, f"no person {username!r} in the CRM: {[p['account']['username'] for p in state.people.values()]}"
    return found


def role_id(state: CrmState, name: str) -> str:
    role = state.role(name)
    assert role is not None, f"no role {name!r} in the CRM: {[r['name'] for r in state.roles.values()]}"
    return str(role["id"])


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """The person's fields under short names, for compact asserts."""
    return {
        "first": record["person"]["name"]["first"],
        "last": record["person"]["name"]["last"],
        "title": record["person"]["title"],
        "email": record["contact"]["email"],
        "phone": record["contact"]["phone"],
        "username": record["account"]["username"],
        "active": record["account"]["active"],
    }


def no_401s(state: CrmState) -> bool:
    return all(status != 401 for _, _, status in state.calls)


def assert_no_password(obj: Any) -> None:
    text = json.dumps(obj)
    assert PASSWORD not in text
    assert '"password"' not in text.lower()


# ================================================================ the fake itself


@pytest.fixture
async def fake(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_crm_app())


async def fake_token(fake: TestClient, secret: str = CLIENT_SECRET) -> str:
    resp = await fake.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": "gateway", "client_secret": secret}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return str(body["access_token"])


async def test_fake_token_endpoint(fake: TestClient) -> None:
    state = fake.server.app[CRM_STATE]
    token = await fake_token(fake)
    resp = await fake.get(f"{API}/people", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert await resp.json() == {"items": [], "next_cursor": None}
    # HTTP Basic client authentication works too (RFC 6749 2.3.1).
    basic = base64.b64encode(f"gateway:{CLIENT_SECRET}".encode()).decode()
    resp = await fake.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "users.rw"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert resp.status == 200
    # Refusals.
    resp = await fake.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": "gateway", "client_secret": "wrong"}
    )
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"
    resp = await fake.post(
        "/oauth/token", data={"grant_type": "password", "client_id": "gateway", "client_secret": CLIENT_SECRET}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "unsupported_grant_type"
    resp = await fake.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert resp.status == 400
    assert [t.granted for t in state.token_requests] == [True, True, False, False]  # a JSON body is refused before it counts
    assert state.tokens_issued == 2
    # No token, an unknown token, an expired token: 401.
    assert (await fake.get(f"{API}/people")).status == 401
    assert (await fake.get(f"{API}/people", headers={"Authorization": "Bearer nope"})).status == 401
    state.expire_tokens()
    resp = await fake.get(f"{API}/people", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert "invalid_token" in resp.headers["WWW-Authenticate"]


async def test_fake_people_nested_unique_paged_and_searchable(fake: TestClient) -> None:
    state = fake.server.app[CRM_STATE]
    auth = {"Authorization": f"Bearer {await fake_token(fake)}"}
    resp = await fake.post(f"{API}/roles", json={"name": "Sales"}, headers=auth)
    assert resp.status == 201
    role = await resp.json()
    assert role["id"].startswith("r-")
    assert (await fake.post(f"{API}/roles", json={"name": "SALES"}, headers=auth)).status == 409

    body = {
        "person": {"name": {"first": "Ann", "last": "Lee"}, "title": "Rep"},
        "contact": {"email": "ann@crm.example"},
        "account": {"username": "Ann.Lee"},
        "roles": [role["id"]],
    }
    resp = await fake.post(f"{API}/people", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    ann = await resp.json()
    assert ann["id"].startswith("p-")
    assert ann["account"] == {"username": "Ann.Lee", "active": True}
    assert ann["contact"] == {"email": "ann@crm.example", "phone": None}
    assert state.people[ann["id"]] == ann
    # Username unique case-insensitively; flattened keys and unknown roles refused.
    dup = {**body, "account": {"username": "ann.lee"}}
    assert (await fake.post(f"{API}/people", json=dup, headers=auth)).status == 409
    flattened = {"account.username": "x", "account": {"username": "x"}}
    assert (await fake.post(f"{API}/people", json=flattened, headers=auth)).status == 400
    assert (
        await fake.post(f"{API}/people", json={"account": {"username": "y"}, "roles": ["r-nope"]}, headers=auth)
    ).status == 422
    assert len(state.people) == 1

    # PUT is a full replace: what the body leaves out is cleared; `created` is the CRM's; active is kept.
    resp = await fake.put(f"{API}/people/{ann['id']}", json={"id": ann["id"], "account": {"username": "ann.lee"}}, headers=auth)
    assert resp.status == 200, await resp.text()
    put = await resp.json()
    assert put["person"] == {"name": {"first": None, "last": None}, "title": None}
    assert put["account"] == {"username": "ann.lee", "active": True} and put["roles"] == []
    assert put["created"] == ann["created"]
    # account.active changes only through its own calls.
    resp = await fake.put(f"{API}/people/{ann['id']}", json={"account": {"username": "ann.lee", "active": False}}, headers=auth)
    assert resp.status == 400 and (await resp.json())["error"] == "read_only"
    resp = await fake.post(f"{API}/people/{ann['id']}/deactivate", headers=auth)
    assert (await resp.json())["account"]["active"] is False
    resp = await fake.put(f"{API}/people/{ann['id']}", json={"account": {"username": "ann.lee", "active": False}}, headers=auth)
    assert resp.status == 200  # repeating the current value is fine
    resp = await fake.post(f"{API}/people/{ann['id']}/activate", headers=auth)
    assert state.people[ann["id"]]["account"]["active"] is True

    # Paging with an opaque cursor; search by username and by email, case-insensitively.
    for i in range(4):
        await fake.post(
            f"{API}/people", json={"account": {"username": f"u{i}"}, "contact": {"email": f"U{i}@crm.example"}}, headers=auth
        )
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        resp = await fake.get(f"{API}/people", params={"limit": "2", **({"cursor": cursor} if cursor else {})}, headers=auth)
        page = await resp.json()
        seen += [p["account"]["username"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (["ann.lee", "u0", "u1", "u2", "u3"], 3)
    assert (await fake.get(f"{API}/people", params={"cursor": "garbage"}, headers=auth)).status == 400
    resp = await fake.get(f"{API}/people", params={"username": "U2"}, headers=auth)
    assert [p["account"]["username"] for p in (await resp.json())["items"]] == ["u2"]
    resp = await fake.get(f"{API}/people", params={"email": "u3@CRM.example"}, headers=auth)
    assert [p["account"]["username"] for p in (await resp.json())["items"]] == ["u3"]

    # Membership lives on the person; deleting a role takes it out of every list.
    u0 = state.person("u0")
    assert u0 is not None
    resp = await fake.put(f"{API}/people/{u0['id']}", json={**u0, "roles": [role["id"]]}, headers=auth)
    assert resp.status == 200
    assert state.holders("Sales") == {"u0"}
    assert (await fake.delete(f"{API}/roles/{role['id']}", headers=auth)).status == 204
    assert state.people[u0["id"]]["roles"] == []
    assert (await fake.delete(f"{API}/people/{u0['id']}", headers=auth)).status == 204
    assert (await fake.get(f"{API}/people/{u0['id']}", headers=auth)).status == 404
    assert (await fake.delete(f"{API}/people/{u0['id']}", headers=auth)).status == 404
    # Injected faults answer instead of the CRM, once each.
    state.faults.extend([503])
    assert (await fake.get(f"{API}/people", headers=auth)).status == 503
    assert (await fake.get(f"{API}/people", headers=auth)).status == 200


# ================================================================ the mapping


def test_crm_mapping_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["check", str(MAPPING)]) == 0
    assert "ok" in capsys.readouterr().out


# ================================================================ Entra ID


async def test_entra_lookup_of_unknown_user_is_an_empty_list(scim: Scim, state: CrmState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "nobody@contoso.com"'))
    assert resp.status == 200, data
    assert data["schemas"] == [LIST_URN]
    assert data["totalResults"] == 0
    assert state.people == {}


async def test_entra_create_user_writes_a_nested_person(scim: Scim, state: CrmState) -> None:
    body = entra_user("Alice.Smith@Contoso.com", given="Alice", family="Smith", mail="Alice.Smith@Contoso.COM", title="Engineer")
    resp, data = await scim.post("/Users", body)
    assert resp.status == 201, data
    assert data["userName"] == "Alice.Smith@Contoso.com"
    assert data["active"] is True
    assert data["name"]["givenName"] == "Alice"
    assert [(e.get("type"), e["value"]) for e in data["emails"]] == [("work", "alice.smith@contoso.com")]
    assert data[ENTERPRISE_URN]["department"] == "R&D"  # kept by the gateway: the CRM has no department

    rec = person(state, "alice.smith@contoso.com")
    assert rec["id"].startswith("p-")
    assert flat(rec) == {
        "first": "Alice",
        "last": "Smith",
        "title": "Engineer",
        "email": "alice.smith@contoso.com",
        "phone": None,
        "username": "Alice.Smith@Contoso.com",
        "active": True,
    }
    assert rec["roles"] == []
    assert len(state.people) == 1

    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == data["id"]
    resp, got = await scim.get(f"/Users/{data['id']}")
    assert resp.status == 200, got
    assert (got["name"]["familyName"], got["title"]) == ("Smith", "Engineer")


async def test_entra_legacy_patch_shape(scim: Scim, state: CrmState) -> None:
    user = await entra_create(scim, "legacy.patch@contoso.com")
    before = person(state, "legacy.patch@contoso.com")
    pid, created = before["id"], before["created"]
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": "displayName", "value": "Legacy Renamed"},
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "New.Address@Contoso.com"},
            {"op": "Add", "path": 'phoneNumbers[type eq "work"].value', "value": "+1 555 0100"},
            {"op": "Replace", "path": "title", "value": "Lead"},
        ],
    )
    assert resp.status == 200, data
    assert data["displayName"] == "Legacy Renamed"
    rec = person(state, "legacy.patch@contoso.com")
    assert (rec["id"], rec["created"]) == (pid, created)
    assert flat(rec) == {
        "first": "Legacy",
        "last": "Patch",
        "title": "Lead",
        "email": "new.address@contoso.com",
        "phone": "+1 555 0100",
        "username": "legacy.patch@contoso.com",
        "active": True,
    }


async def test_entra_pathless_patch_with_dotted_keys(scim: Scim, state: CrmState) -> None:
    user = await entra_create(scim, "new.shape@contoso.com", given="Old", family="Shape")
    resp, data = await scim.patch(
        f"/Users/{user['id']}?aadOptscim062020",
        [
            {
                "op": "replace",
                "value": {"name.givenName": "Newgiven", f"{ENTERPRISE_URN}:department": "Marketing", "active": False},
            },
        ],
    )
    assert resp.status == 200, data
    assert (data["name"]["givenName"], data["name"]["familyName"], data["active"]) == ("Newgiven", "Shape", False)
    rec = person(state, "new.shape@contoso.com")
    assert (rec["person"]["name"], rec["account"]["active"]) == ({"first": "Newgiven", "last": "Shape"}, False)


async def test_entra_disable_and_enable_with_strings(scim: Scim, state: CrmState) -> None:
    user = await entra_create(scim, "leaver@contoso.com")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200, data
    assert data["active"] is False
    assert person(state, "leaver@contoso.com")["account"]["active"] is False
    assert state.api_calls("POST", "/people/")[-1][1].endswith("/deactivate")  # through the CRM's own call
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert data["active"] is False
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert resp.status == 200, data
    assert person(state, "leaver@contoso.com")["account"]["active"] is True
    assert state.api_calls("POST", "/people/")[-1][1].endswith("/activate")
    assert person(state, "leaver@contoso.com")["person"]["name"]["first"] == "Leaver"  # the PUT kept the rest
    assert len(state.people) == 1


async def test_entra_rename_user(scim: Scim, state: CrmState) -> None:
    user = await entra_create(scim, "rename.me@contoso.com")
    pid = person(state, "rename.me@contoso.com")["id"]
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": "userName", "value": "Renamed@Contoso.com"},
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "Renamed@Contoso.com"},
        ],
    )
    assert resp.status == 200, data
    assert data["userName"] == "Renamed@Contoso.com"
    assert state.person("rename.me@contoso.com") is None
    rec = person(state, "renamed@contoso.com")
    assert (rec["id"], rec["account"]["username"], rec["contact"]["email"]) == (pid, "Renamed@Contoso.com", "renamed@contoso.com")
    _, found = await scim.get("/Users?filter=" + q('userName eq "rename.me@contoso.com"'))
    assert found["totalResults"] == 0


async def test_entra_group_create_and_lookup(scim: Scim, state: CrmState) -> None:
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    resp, group = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP_URN, MS_GROUP_URN],
            "externalId": "8aa1a0c0",
            "displayName": "Engineering",
            "meta": {"resourceType": "Group"},
        },
    )
    assert resp.status == 201, group
    assert group["schemas"] == [GROUP_URN]
    role = state.role("Engineering")
    assert role is not None and role["id"].startswith("r-") and role["name"] == "Engineering"
    assert len(state.roles) == 1
    assert state.holders("Engineering") == set()
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert [r["id"] for r in data["Resources"]] == [group["id"]]
    assert "members" not in data["Resources"][0]


async def test_entra_group_members_land_in_each_persons_roles(scim: Scim, state: CrmState) -> None:
    u1 = await entra_create(scim, "u1@contoso.com")
    u2 = await entra_create(scim, "u2@contoso.com")
    u3 = await entra_create(scim, "u3@contoso.com")
    g = await entra_group(scim, "Ops")
    rid = role_id(state, "Ops")

    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Add", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert person(state, "u1@contoso.com")["roles"] == [rid]
    assert state.holders("Ops") == {"u1@contoso.com"}

    resp, data = await scim.patch(
        f"/Groups/{g['id']}",
        [
            {"op": "Add", "path": "members", "value": [{"value": u2["id"]}, {"value": u3["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {u1["id"], u2["id"], u3["id"]}
    assert state.holders("Ops") == {"u1@contoso.com", "u2@contoso.com", "u3@contoso.com"}
    # Adding a present member changes nothing (no duplicate in the list).
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Add", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert person(state, "u1@contoso.com")["roles"] == [rid]

    # Entra's Remove with a value list removes only those; the person's other fields are untouched.
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Remove", "path": "members", "value": [{"value": u1["id"]}]}])
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {u2["id"], u3["id"]}
    assert person(state, "u1@contoso.com")["roles"] == []
    assert flat(person(state, "u1@contoso.com"))["first"] == "U1"
    assert state.holders("Ops") == {"u2@contoso.com", "u3@contoso.com"}
    resp, data = await scim.get(f"/Users/{u2['id']}")
    assert [gr["value"] for gr in data.get("groups", [])] == [g["id"]]
    resp, data = await scim.get(f"/Users/{u1['id']}")
    assert data.get("groups", []) == []
    # Entra's membership check.
    for user, expected in ((u2, 1), (u1, 0)):
        flt = f'id eq "{g["id"]}" and members eq "{user["id"]}"'
        resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q(flt))
        assert (resp.status, data["totalResults"]) == (200, expected), data


async def test_entra_a_person_holds_several_roles(scim: Scim, state: CrmState) -> None:
    u = await entra_create(scim, "multi@contoso.com")
    a = await entra_group(scim, "Alpha", [u["id"]])
    b = await entra_group(scim, "Beta", [u["id"]])
    assert state.role_names("multi@contoso.com") == {"Alpha", "Beta"}
    resp, data = await scim.patch(f"/Groups/{a['id']}", [{"op": "Remove", "path": "members", "value": [{"value": u["id"]}]}])
    assert resp.status == 200, data
    assert state.role_names("multi@contoso.com") == {"Beta"}
    resp, data = await scim.get(f"/Users/{u['id']}")
    assert [gr["value"] for gr in data.get("groups", [])] == [b["id"]]


async def test_entra_rename_group_keeps_role_id_and_holders(scim: Scim, state: CrmState) -> None:
    u = await entra_create(scim, "stays@contoso.com")
    g = await entra_group(scim, "Old Name", [u["id"]])
    rid = role_id(state, "Old Name")
    resp, data = await scim.patch(f"/Groups/{g['id']}", [{"op": "Replace", "path": "displayName", "value": "New Name"}])
    assert resp.status == 200, data
    assert state.role("Old Name") is None
    assert role_id(state, "New Name") == rid
    assert state.holders("New Name") == {"stays@contoso.com"}


async def test_entra_group_display_name_is_unique(scim: Scim, state: CrmState) -> None:
    await entra_group(scim, "Unique Team")
    resp, data = await scim.post("/Groups", {"schemas": [GROUP_URN, MS_GROUP_URN], "displayName": "unique team"})
    assert resp.status == 409, data
    assert data["scimType"] == "uniqueness"
    assert len(state.roles) == 1


async def test_entra_delete_user_removes_the_person(scim: Scim, state: CrmState) -> None:
    keep = await entra_create(scim, "keep@contoso.com")
    gone = await entra_create(scim, "gone@contoso.com")
    g = await entra_group(scim, "Team", [keep["id"], gone["id"]])
    gone_pid = person(state, "gone@contoso.com")["id"]
    resp, data = await scim.delete(f"/Users/{gone['id']}")
    assert resp.status == 204, data
    assert gone_pid not in state.people
    assert state.person("gone@contoso.com") is None
    assert state.holders("Team") == {"keep@contoso.com"}
    resp, _ = await scim.get(f"/Users/{gone['id']}")
    assert resp.status == 404
    resp, data = await scim.get(f"/Groups/{g['id']}")
    assert [m["value"] for m in data["members"]] == [keep["id"]]


async def test_entra_delete_group_removes_the_role_everywhere(scim: Scim, state: CrmState) -> None:
    u = await entra_create(scim, "survivor@contoso.com")
    g = await entra_group(scim, "Doomed", [u["id"]])
    rid = role_id(state, "Doomed")
    resp, _ = await scim.delete(f"/Groups/{g['id']}")
    assert resp.status == 204
    assert rid not in state.roles
    assert all(rid not in p["roles"] for p in state.people.values())
    assert person(state, "survivor@contoso.com")["account"]["active"] is True
    resp, data = await scim.get(f"/Users/{u['id']}")
    assert data.get("groups", []) == []
    g2 = await entra_group(scim, "Doomed")
    assert g2["id"] != g["id"]


async def test_entra_full_sequence(scim: Scim, state: CrmState) -> None:
    """The whole cycle in Entra's order, the CRM's state checked after each step."""
    resp, data = await scim.get("/Users?filter=" + q('userName eq "jdoe@contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    chief = await entra_create(scim, "chief@contoso.com", given="Chief", family="Boss")
    resp, user = await scim.post(
        "/Users", entra_user("JDoe@contoso.com", given="John", family="Doe", mail="John.Doe@Contoso.com")
    )
    assert resp.status == 201, user
    assert flat(person(state, "jdoe@contoso.com")) == {
        "first": "John",
        "last": "Doe",
        "title": "Engineer",
        "email": "john.doe@contoso.com",
        "phone": None,
        "username": "JDoe@contoso.com",
        "active": True,
    }
    resp, data = await scim.patch(
        f"/Users/{user['id']}",
        [
            {"op": "Replace", "path": "displayName", "value": "Johnny Doe"},
            {"op": "Replace", "path": "title", "value": "Staff Engineer"},
        ],
    )
    assert resp.status == 200, data
    assert person(state, "jdoe@contoso.com")["person"]["title"] == "Staff Engineer"
    resp, data = await scim.patch(
        f"/Users/{user['id']}?aadOptscim062020",
        [
            {"op": "replace", "value": {"name.givenName": "Jon", "name.familyName": "Doe-Smith"}},
        ],
    )
    assert resp.status == 200, data
    assert person(state, "jdoe@contoso.com")["person"]["name"] == {"first": "Jon", "last": "Doe-Smith"}

    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Platform Team"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await entra_group(scim, "Platform Team")
    resp, data = await scim.patch(
        f"/Groups/{group['id']}",
        [
            {"op": "Add", "path": "members", "value": [{"value": user["id"]}, {"value": chief["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert state.holders("Platform Team") == {"JDoe@contoso.com", "chief@contoso.com"}
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": chief["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.holders("Platform Team") == {"JDoe@contoso.com"}
    assert person(state, "chief@contoso.com")["roles"] == []
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert state.holders("Platform") == {"JDoe@contoso.com"}
    # A later write to the user (a PUT of the whole person in the CRM) keeps its roles.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Principal"}])
    assert resp.status == 200, data
    rec = person(state, "jdoe@contoso.com")
    assert (rec["person"]["title"], rec["roles"]) == ("Principal", [role_id(state, "Platform")])

    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200, data
    rec = person(state, "jdoe@contoso.com")
    assert rec["account"]["active"] is False
    assert rec["roles"] == [role_id(state, "Platform")]  # disabling keeps the roles

    resp, _ = await scim.delete(f"/Users/{user['id']}")
    assert resp.status == 204
    assert state.person("jdoe@contoso.com") is None
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.roles == {}
    assert [p["account"]["username"] for p in state.people.values()] == ["chief@contoso.com"]
    # One token served the whole sequence.
    assert state.tokens_issued == 1
    assert no_401s(state)


# ================================================================ Okta


async def test_okta_lookup_with_paging_params_empty(scim: Scim, state: CrmState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "nobody@okta.example"') + "&startIndex=1&count=100")
    assert resp.status == 200, data
    assert (data["totalResults"], data["startIndex"]) == (0, 1)
    assert state.people == {}


async def test_okta_create_get_lookup_and_no_password_in_the_crm(scim: Scim, state: CrmState, data_dir: Path) -> None:
    resp, user = await scim.post("/Users", okta_user("Isaac.Brock@Okta.example", "Isaac", "Brock"))
    assert resp.status == 201, user
    assert_no_password(user)
    rec = person(state, "isaac.brock@okta.example")
    assert flat(rec) == {
        "first": "Isaac",
        "last": "Brock",
        "title": None,
        "email": "isaac.brock@okta.example",
        "phone": None,
        "username": "Isaac.Brock@Okta.example",
        "active": True,
    }
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200, got
    assert_no_password(got)
    assert got["name"] == {"givenName": "Isaac", "familyName": "Brock"}
    resp, found = await scim.get("/Users?filter=" + q('userName eq "isaac.brock@okta.example"') + "&startIndex=1&count=100")
    assert [r["id"] for r in found["Resources"]] == [user["id"]]
    # The password reached neither the CRM nor the gateway's store.
    assert PASSWORD not in json.dumps(state.people)
    for path in data_dir.iterdir():
        if path.name.startswith("gateway.db"):
            assert PASSWORD.encode() not in path.read_bytes()


async def test_okta_put_full_replace(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "put.me@okta.example", "Put", "Me")
    pid = person(state, "put.me@okta.example")["id"]
    await entra_group(scim, "Kept", [user["id"]])
    rid = role_id(state, "Kept")
    body = okta_user("put.me@okta.example", "Putnam", "Mee", title="Director")
    body["id"] = user["id"]
    body["emails"] = [{"primary": True, "value": "Put.Me2@Okta.example", "type": "work"}]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert_no_password(data)
    rec = person(state, "put.me@okta.example")
    assert rec["id"] == pid
    assert flat(rec) == {
        "first": "Putnam",
        "last": "Mee",
        "title": "Director",
        "email": "put.me2@okta.example",
        "phone": None,
        "username": "put.me@okta.example",
        "active": True,
    }
    # PUT replaces: what the body leaves out is cleared in the CRM.
    body2 = {
        "schemas": [USER_URN],
        "id": user["id"],
        "userName": "put.me@okta.example",
        "active": True,
        "name": {"givenName": "Only"},
        "password": PASSWORD,
    }
    resp, data = await scim.put(f"/Users/{user['id']}", body2)
    assert resp.status == 200, data
    assert "title" not in data and "emails" not in data
    assert flat(person(state, "put.me@okta.example")) == {
        "first": "Only",
        "last": None,
        "title": None,
        "email": None,
        "phone": None,
        "username": "put.me@okta.example",
        "active": True,
    }
    # ...but a user's PUT is not about its groups: the CRM's roles list stays (Okta's `groups: []` is read-only).
    assert person(state, "put.me@okta.example")["roles"] == [rid]
    assert len(state.people) == 1


async def test_okta_deactivate_and_reactivate_with_pathless_patch(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "leaving@okta.example", "Lea", "Ving")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    assert (data["active"], data["name"]) == (False, {"givenName": "Lea", "familyName": "Ving"})
    rec = person(state, "leaving@okta.example")
    assert (rec["account"]["active"], rec["person"]["name"]["first"]) == (False, "Lea")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": True}}])
    assert resp.status == 200, data
    assert person(state, "leaving@okta.example")["account"]["active"] is True


async def test_okta_deactivate_with_put_active_false(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "put.off@okta.example", "Put", "Off")
    body = okta_user("put.off@okta.example", "Put", "Off", active=False)
    body["id"] = user["id"]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert data["active"] is False
    assert person(state, "put.off@okta.example")["account"]["active"] is False


async def test_okta_group_push_sequence(scim: Scim, state: CrmState) -> None:
    a = await okta_create(scim, "a@okta.example")
    b = await okta_create(scim, "b@okta.example")
    c = await okta_create(scim, "c@okta.example")
    d = await okta_create(scim, "d@okta.example")

    resp, group = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP_URN],
            "displayName": "Okta Pushed",
            "members": [{"value": a["id"], "display": "a@okta.example"}, {"value": b["id"], "display": "b@okta.example"}],
        },
    )
    assert resp.status == 201, group
    assert {m["value"] for m in group["members"]} == {a["id"], b["id"]}
    gid = group["id"]
    rid = role_id(state, "Okta Pushed")
    assert state.holders("Okta Pushed") == {"a@okta.example", "b@okta.example"}
    assert person(state, "a@okta.example")["roles"] == [rid]

    resp, got = await scim.get(f"/Groups/{gid}")
    assert {m["value"] for m in got["members"]} == {a["id"], b["id"]}

    resp, data = await scim.patch(
        f"/Groups/{gid}",
        [
            {
                "op": "replace",
                "path": "members",
                "value": [{"value": b["id"], "display": "b"}, {"value": c["id"], "display": "c"}],
            },
        ],
    )
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {b["id"], c["id"]}
    assert state.holders("Okta Pushed") == {"b@okta.example", "c@okta.example"}
    assert person(state, "a@okta.example")["roles"] == []

    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": d["id"], "display": "d"}]}]
    )
    assert resp.status == 200, data
    assert state.holders("Okta Pushed") == {"b@okta.example", "c@okta.example", "d@okta.example"}

    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {b["id"], d["id"]}
    assert state.holders("Okta Pushed") == {"b@okta.example", "d@okta.example"}
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data  # Okta retries: removing a non-member changes nothing
    assert state.holders("Okta Pushed") == {"b@okta.example", "d@okta.example"}

    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert role_id(state, "Okta Renamed") == rid
    assert state.holders("Okta Renamed") == {"b@okta.example", "d@okta.example"}

    resp, data = await scim.put(
        f"/Groups/{gid}",
        {
            "schemas": [GROUP_URN],
            "id": gid,
            "displayName": "Okta Final",
            "members": [{"value": a["id"], "display": "a"}, {"value": d["id"], "display": "d"}],
        },
    )
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {a["id"], d["id"]}
    assert [r["name"] for r in state.roles.values()] == ["Okta Final"]
    assert state.holders("Okta Final") == {"a@okta.example", "d@okta.example"}

    resp, body = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert state.roles == {}
    assert all(p["roles"] == [] for p in state.people.values())
    assert len(state.people) == 4
    resp, _ = await scim.get(f"/Groups/{gid}")
    assert resp.status == 404


async def test_okta_group_put_with_empty_members_empties_the_role(scim: Scim, state: CrmState) -> None:
    a = await okta_create(scim, "a@okta.example")
    b = await okta_create(scim, "b@okta.example")
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Emptied", "members": [{"value": a["id"]}, {"value": b["id"]}]}
    )
    assert resp.status == 201, group
    assert state.holders("Emptied") == {"a@okta.example", "b@okta.example"}
    gid = group["id"]
    resp, data = await scim.put(f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Emptied", "members": []})
    assert resp.status == 200, data
    assert data.get("members", []) == []
    assert state.holders("Emptied") == set()
    resp, data = await scim.get(f"/Users/{a['id']}")
    assert data.get("groups", []) == []


async def test_okta_full_user_sequence(scim: Scim, state: CrmState, data_dir: Path) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "seq@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)
    resp, user = await scim.post("/Users", okta_user("seq@okta.example", "Seq", "Uence"))
    assert resp.status == 201, user
    assert person(state, "seq@okta.example")["account"]["active"] is True
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200 and got["userName"] == "seq@okta.example"
    body = okta_user("seq@okta.example", "Sequel", "Uence")
    body["id"] = user["id"]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert person(state, "seq@okta.example")["person"]["name"]["first"] == "Sequel"
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    rec = person(state, "seq@okta.example")
    assert (rec["person"]["name"]["first"], rec["account"]["active"]) == ("Sequel", False)
    resp, data = await scim.get("/Users?filter=" + q('userName eq "seq@okta.example"') + "&startIndex=1&count=100")
    assert data["totalResults"] == 1 and data["Resources"][0]["active"] is False
    assert PASSWORD not in json.dumps(state.people)
    assert state.tokens_issued == 1
    assert no_401s(state)


# ================================================================ the token, adoption, paging, faults


async def test_token_is_fetched_once_and_reused(scim: Scim, state: CrmState) -> None:
    for i in range(3):
        await okta_create(scim, f"reuse{i}@okta.example")
    g = await entra_group(scim, "Reuse")
    resp, _ = await scim.get(f"/Groups/{g['id']}")
    assert resp.status == 200
    assert len(state.token_requests) == 1
    req = state.token_requests[0]
    assert (req.client_id, req.method, req.granted) == ("gateway", "post", True)  # client_auth: body
    assert set((req.scope or "").split()) == {"users.rw", "roles.rw"}
    assert len(state.calls) >= 5 and no_401s(state)


async def test_client_secret_basic_works_too(
    aiohttp_client: Any, mapping: Path, data_dir: Path, state: CrmState, tmp_path: Path
) -> None:
    """Without `client_auth: body` the connector authenticates with HTTP Basic (RFC 6749's default), which the CRM takes too."""
    text = mapping.read_text()
    assert "    client_auth: body" in text
    basic = tmp_path / "crm_basic.yaml"
    basic.write_text("\n".join(line for line in text.splitlines() if "client_auth: body" not in line))
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = GatewaySettings(mappings=[basic], data_dir=data_dir, extra_tokens={"crm": [SecretStr(TOKEN)]})
    scim = Scim(await aiohttp_client(create_app(settings)), TOKEN, BASE)
    await okta_create(scim, "basic@okta.example")
    assert [(t.method, t.client_id, t.granted) for t in state.token_requests] == [("basic", "gateway", True)]
    assert person(state, "basic@okta.example")["account"]["active"] is True


async def test_an_expired_token_is_refreshed_once_and_the_call_succeeds(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "refresh@okta.example", "Re", "Fresh")
    assert state.tokens_issued == 1
    state.expire_tokens()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Renewed"}])
    assert resp.status == 200, data
    assert person(state, "refresh@okta.example")["person"]["title"] == "Renewed"
    assert state.tokens_issued == 2
    assert sum(1 for _, _, status in state.calls if status == 401) == 1
    # ...and the new token is reused from then on.
    await okta_create(scim, "after@okta.example")
    assert state.tokens_issued == 2


async def test_a_token_with_a_short_lifetime_is_renewed_before_or_when_it_lapses(scim: Scim, state: CrmState) -> None:
    state.token_ttl = 1
    user = await okta_create(scim, "short@okta.example")
    first = state.tokens_issued
    assert first >= 1
    await asyncio.sleep(1.2)
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Later"}])
    assert resp.status == 200, data
    assert person(state, "short@okta.example")["person"]["title"] == "Later"
    assert state.tokens_issued > first


async def test_a_refused_client_secret_is_a_503_that_names_no_secret(scim: Scim, state: CrmState) -> None:
    state.client_secret = "rotated-in-the-crm"
    resp, data = await scim.post("/Users", okta_user("refused@okta.example"))
    assert resp.status == 503, data  # the gateway's own credentials, not the IdP's request
    assert "Retry-After" in resp.headers
    assert CLIENT_SECRET not in json.dumps(data)
    assert state.people == {}
    assert any(not t.granted for t in state.token_requests)
    # The IdP's lookup finds nothing half-made.
    state.client_secret = CLIENT_SECRET
    resp, found = await scim.get("/Users?filter=" + q('userName eq "refused@okta.example"'))
    assert (resp.status, found["totalResults"]) == (200, 0)


async def test_a_transient_503_is_retried(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "flaky@okta.example")
    state.faults.append(503)
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200, data
    assert [s for _, _, s in state.calls].count(503) == 1


async def test_a_crm_that_keeps_failing_is_a_503_with_retry_after(scim: Scim, state: CrmState) -> None:
    user = await okta_create(scim, "down@okta.example")
    state.faults.extend([503] * 10)
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Never"}])
    assert resp.status == 503, data
    assert "Retry-After" in resp.headers
    state.faults.clear()
    assert person(state, "down@okta.example")["person"]["title"] is None
    assert [s for _, _, s in state.calls].count(503) == 3  # the first try and `retries: 2`


async def test_a_create_the_crm_fails_leaves_nothing_and_can_be_retried(scim: Scim, state: CrmState) -> None:
    await okta_create(scim, "warmup@okta.example")  # the token is in hand: the fault hits the create itself
    state.faults.append(503)
    resp, data = await scim.post("/Users", okta_user("retry.me@okta.example"))
    assert resp.status == 503, data  # a POST is not idempotent: not retried by the connector
    assert "Retry-After" in resp.headers
    assert state.person("retry.me@okta.example") is None
    _, found = await scim.get("/Users?filter=" + q('userName eq "retry.me@okta.example"'))
    assert found["totalResults"] == 0
    # The IdP's retry goes through, once.
    user = await okta_create(scim, "retry.me@okta.example")
    assert person(state, "retry.me@okta.example")["account"]["username"] == "retry.me@okta.example"
    assert len(state.people) == 2
    _, found = await scim.get("/Users?filter=" + q('userName eq "retry.me@okta.example"'))
    assert [r["id"] for r in found["Resources"]] == [user["id"]]


async def test_creating_a_name_the_crm_already_has_is_a_conflict_not_a_duplicate(scim: Scim, state: CrmState) -> None:
    pid = "p-legacy-0003"
    state.people[pid] = {
        "id": pid,
        "created": "2020-01-01T00:00:00Z",
        "person": {"name": {"first": "Pre", "last": "Existing"}, "title": None},
        "contact": {"email": None, "phone": None},
        "account": {"username": "Taken@Okta.example", "active": True},
        "roles": [],
    }
    resp, data = await scim.post("/Users", okta_user("taken@okta.example"))
    assert resp.status == 409, data  # the CRM's 409 is `uniqueness`, as in the demo app
    assert data["scimType"] == "uniqueness"
    assert list(state.people) == [pid]
    assert state.people[pid]["person"]["name"]["first"] == "Pre"


async def test_an_existing_crm_person_is_adopted_on_lookup(scim: Scim, state: CrmState) -> None:
    """Search pushdown: the gateway asks the CRM ?username= and links the account instead of duplicating it."""
    pid = "p-legacy-0001"
    state.people[pid] = {
        "id": pid,
        "created": "2020-01-01T00:00:00Z",
        "person": {"name": {"first": "Lee", "last": "Gacy"}, "title": "Clerk"},
        "contact": {"email": "legacy@contoso.com", "phone": None},
        "account": {"username": "Legacy@Contoso.com", "active": True},
        "roles": [],
    }
    resp, data = await scim.get("/Users?filter=" + q('userName eq "legacy@contoso.com"'))
    assert resp.status == 200 and data["totalResults"] == 1, data
    user = data["Resources"][0]
    assert (user["userName"], user["name"]["givenName"], user["title"], user["active"]) == (
        "Legacy@Contoso.com",
        "Lee",
        "Clerk",
        True,
    )
    assert any(path.startswith(f"{API}/people?") and "username=" in path for _, path, _ in state.calls), state.calls
    resp, patched = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Manager"}])
    assert resp.status == 200, patched
    assert (state.people[pid]["person"]["title"], len(state.people)) == ("Manager", 1)
    # Creating the same name through SCIM is a conflict, never a second person.
    resp, body = await scim.post("/Users", okta_user("LEGACY@contoso.com"))
    assert resp.status == 409 and body["scimType"] == "uniqueness"
    assert len(state.people) == 1


async def test_concurrent_groups_all_land_in_one_persons_roles(scim: Scim, state: CrmState) -> None:
    """Each add is a read-modify-write of the same person's list: none may be lost to another."""
    user = await okta_create(scim, "popular@okta.example")
    names = [f"Concurrent {i}" for i in range(6)]
    await asyncio.gather(*(entra_group(scim, name, [user["id"]]) for name in names))
    assert state.role_names("popular@okta.example") == set(names)
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert len(data.get("groups", [])) == 6
    # ...and concurrent removals leave nothing behind.
    _, listed = await scim.get("/Groups?count=100")
    await asyncio.gather(
        *(
            scim.patch(f"/Groups/{g['id']}", [{"op": "Remove", "path": "members", "value": [{"value": user["id"]}]}])
            for g in listed["Resources"]
        )
    )
    assert person(state, "popular@okta.example")["roles"] == []


async def test_an_existing_role_is_adopted_with_its_holders(scim: Scim, state: CrmState) -> None:
    """Okta's lookup by displayName links a role the CRM already has; its members are the people whose list names it."""
    rid, pid = "r-legacy-0001", "p-legacy-0002"
    state.roles[rid] = {"id": rid, "created": "2020-01-01T00:00:00Z", "name": "Old Role"}
    state.people[pid] = {
        "id": pid,
        "created": "2020-01-01T00:00:00Z",
        "person": {"name": {"first": "Hol", "last": "Der"}, "title": None},
        "contact": {"email": None, "phone": None},
        "account": {"username": "holder@okta.example", "active": True},
        "roles": [rid],
    }
    _, found = await scim.get("/Users?filter=" + q('userName eq "holder@okta.example"'))
    assert found["totalResults"] == 1, found
    holder = found["Resources"][0]
    _, found = await scim.get("/Groups?filter=" + q('displayName eq "old role"'))
    assert found["totalResults"] == 1, found
    group = found["Resources"][0]
    assert [m["value"] for m in group.get("members", [])] == [holder["id"]]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "remove", "path": "members"}])
    assert resp.status == 200, data
    assert state.people[pid]["roles"] == []
    assert len(state.roles) == 1


async def test_list_all_walks_every_cursor_page(client: TestClient, state: CrmState) -> None:
    """The connector's list_all (import, reconcile) follows next_cursor until null, 50 a page."""
    for i in range(120):
        pid = f"p-bulk-{i:04d}"
        state.people[pid] = {
            "id": pid,
            "created": "2020-01-01T00:00:00Z",
            "person": {"name": {"first": f"F{i}", "last": None}, "title": None},
            "contact": {"email": None, "phone": None},
            "account": {"username": f"bulk{i}", "active": True},
            "roles": [],
        }
    connector = client.server.app[APPS]["crm"].connector
    seen = [(native_id, record) async for native_id, record in connector.list_all("User")]
    assert [n for n, _ in seen] == list(state.people)
    assert seen[7][1]["person.name.first"] == "F7"  # flattened back to the mapping's dotted fields
    assert seen[7][1]["account.username"] == "bulk7"
    pages = [path for method, path, _ in state.calls if method == "GET" and path.startswith(f"{API}/people")]
    assert len(pages) == 3
    assert all("limit=50" in path for path in pages)


async def test_the_env_token_from_the_mapping_is_accepted_and_others_are_not(client: TestClient) -> None:
    resp, data = await Scim(client, ENV_TOKEN, BASE).get("/Users")
    assert resp.status == 200, data
    resp, data = await Scim(client, "wrong-token-000000000", BASE).get("/Users")
    assert resp.status == 401, data


async def test_roles_given_or_taken_in_the_crm_show_on_the_users_groups(scim: Scim, state: CrmState) -> None:
    """Membership kept on the person (`roles`): a user's GET by id reads its groups from its own record, so a
    role given or taken in the CRM itself shows at once, with the group's name, and the copy follows."""
    user = await entra_create(scim, "rita.roles@contoso.com")
    sales = await entra_group(scim, "Sales")
    ops = await entra_group(scim, "Ops", [user["id"]])
    record = person(state, "rita.roles@contoso.com")
    record["roles"] = [role_id(state, "Sales")]  # the CRM's admin swaps the role
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200, data
    assert [(g["value"], g.get("display")) for g in data["groups"]] == [(sales["id"], "Sales")], data
    resp, data = await scim.get("/Users?filter=" + q('userName eq "rita.roles@contoso.com"'))
    assert [g["value"] for g in data["Resources"][0]["groups"]] == [sales["id"]]  # the copy followed
    assert ops["id"] not in [g["value"] for g in data["Resources"][0]["groups"]]
