"""The HR app over REST, end to end: Entra ID's and Okta's sequences through the gateway into the fake HR app.

The fake (tests/fakes/hr_app.py) runs as an aiohttp server on a real loopback
port; the gateway reaches it with the shipped mappings/hr_rest.yaml, pointed at
the fake by environment variables. Every step asserts the HR app's own state
(logins, status, member lists), not only the SCIM answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.http.keys import APPS
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, USER_URN, Scim
from tests.demo_rows import q
from tests.fakes.hr_app import HR_STATE, HrState, create_hr_app, serve
from tests.idp import MS_GROUP_URN, PASSWORD, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "hr_rest.yaml"
API_KEY = "hr-api-key-for-tests-0123"
TOKEN = "hr-scim-token-0123456789"  # given as on the command line (extra_tokens)
ENV_TOKEN = "hr-env-token-9876543210"  # the mapping's auth.bearer reference
BASE = "/apps/hr/scim/v2"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


@dataclass
class Hr:
    state: HrState
    url: str


@pytest.fixture
async def hr(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hr]:
    app = create_hr_app(api_key=API_KEY)
    async with serve(app) as url:
        monkeypatch.setenv("HR_API_URL", url)
        monkeypatch.setenv("HR_API_KEY", API_KEY)
        monkeypatch.setenv("HR_SCIM_TOKEN", ENV_TOKEN)
        yield Hr(app[HR_STATE], url)


@pytest.fixture
def state(hr: Hr) -> HrState:
    return hr.state


@pytest.fixture
async def client(aiohttp_client: Any, hr: Hr, tmp_path: Path) -> TestClient:
    settings = GatewaySettings(mappings=[MAPPING], data_dir=tmp_path / "data", extra_tokens={"hr": [SecretStr(TOKEN)]})
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def scim(client: TestClient) -> Scim:
    return Scim(client, TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


def app_user(state: HrState, login: str) -> dict[str, Any]:
    user = state.user_by_login(login)
    assert user is not None, f"the HR app has no user {login!r}"
    return user


async def assert_nothing_recorded(scim: Scim, client: TestClient) -> None:
    """The gateway's correlation table holds no resource and no unsettled write for the app."""
    resp, data = await scim.get("/Users")
    assert (resp.status, data["totalResults"]) == (200, 0), data
    assert await client.app[APPS]["hr"].provisioner.store.pending("hr") == []


# ---------------------------------------------------------------- Entra ID


async def test_entra_sequence(scim: Scim, state: HrState) -> None:
    # 1. Does the user exist? A filter matching nothing is an empty list.
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Alice.Smith@contoso.com"'))
    assert (resp.status, data["schemas"], data["totalResults"]) == (200, [LIST_URN], 0)

    # 2. Create.
    alice = await create(scim, "/Users", entra_user("Alice.Smith@Contoso.com", "Alice", "Smith"))
    assert alice["active"] is True and alice[ENTERPRISE_URN]["department"] == "R&D"
    row = app_user(state, "alice.smith@contoso.com")
    assert {k: row[k] for k in ("login", "first_name", "last_name", "email", "title", "department", "status")} == {
        "login": "Alice.Smith@Contoso.com", "first_name": "Alice", "last_name": "Smith",
        "email": "alice.smith@contoso.com", "title": "Engineer", "department": "R&D", "status": "enabled",
    }  # fmt: skip
    assert "password" not in row

    # 3. GET, and the follow-up lookup, in another case.
    resp, got = await scim.get(f"/Users/{alice['id']}?aadOptscim062020")
    assert (resp.status, got["userName"], got["emails"][0]["value"]) == (
        200,
        "Alice.Smith@Contoso.com",
        "alice.smith@contoso.com",
    )
    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert [r["id"] for r in found["Resources"]] == [alice["id"]]

    # 4. Entra's PATCH dialect: "Replace" capitalised, a path-less value with dotted and URN keys.
    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [
            {"op": "Replace", "path": "title", "value": "Lead"},
            {"op": "Replace", "value": {"name.givenName": "Alicia", f"{ENTERPRISE_URN}:department": "Platform"}},
        ],
    )
    assert resp.status == 200, data
    row = app_user(state, "alice.smith@contoso.com")
    assert (row["title"], row["first_name"], row["last_name"], row["department"]) == ("Lead", "Alicia", "Smith", "Platform")

    # 5. Disable with the string "False", enable with "True".
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert app_user(state, "alice.smith@contoso.com")["status"] == "disabled"
    resp, data = await scim.get(f"/Users/{alice['id']}")
    assert data["active"] is False
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert app_user(state, "alice.smith@contoso.com")["status"] == "enabled"

    # 6. Groups: lookup (none), create with Microsoft's URN, add members, remove by value list, rename.
    bob = await create(scim, "/Users", entra_user("bob.jones@contoso.com", "Bob", "Jones"))
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(
        scim, "/Groups", {"schemas": [GROUP_URN, MS_GROUP_URN], "externalId": "g-1", "displayName": "Engineering"}
    )
    assert state.group_by_name("Engineering") is not None and state.member_logins("Engineering") == []
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert [r["id"] for r in data["Resources"]] == [group["id"]] and "members" not in data["Resources"][0]

    resp, data = await scim.patch(
        f"/Groups/{group['id']}",
        [
            {"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]},
        ],
    )
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {alice["id"], bob["id"]}
    assert state.member_logins("Engineering") == ["Alice.Smith@Contoso.com", "bob.jones@contoso.com"]
    # Adding a present member again changes nothing.
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": bob["id"]}]}])
    assert resp.status == 200, data
    assert state.member_logins("Engineering") == ["Alice.Smith@Contoso.com", "bob.jones@contoso.com"]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert [m["value"] for m in data["members"]] == [bob["id"]]
    assert state.member_logins("Engineering") == ["bob.jones@contoso.com"]
    resp, data = await scim.get(f"/Users/{bob['id']}")
    assert [g["value"] for g in data["groups"]] == [group["id"]]

    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert state.group_by_name("Engineering") is None
    assert state.member_logins("Platform") == ["bob.jones@contoso.com"]

    # 7. Delete a user (out of the group too), then the group.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert state.user_by_login("bob.jones@contoso.com") is None
    assert state.member_logins("Platform") == []
    resp, _ = await scim.get(f"/Users/{bob['id']}")
    assert resp.status == 404
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.groups == {}
    assert [u["login"] for u in state.users.values()] == ["Alice.Smith@Contoso.com"]


async def test_entra_duplicate_group_name_is_uniqueness(scim: Scim, state: HrState) -> None:
    await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Unique"})
    resp, data = await scim.post("/Groups", {"schemas": [GROUP_URN, MS_GROUP_URN], "displayName": "UNIQUE"})
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data
    assert len(state.groups) == 1


# ---------------------------------------------------------------- Okta


async def test_okta_sequence(scim: Scim, state: HrState) -> None:
    # Users: lookup with paging parameters, create with a password, GET.
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"], data["startIndex"]) == (200, 0, 1)
    isaac = await create(scim, "/Users", okta_user("Isaac@Okta.example", "Isaac", "Brock"))
    assert "password" not in isaac
    row = app_user(state, "isaac@okta.example")
    assert (row["login"], row["first_name"], row["last_name"], row["email"], row["status"]) == (
        "Isaac@Okta.example",
        "Isaac",
        "Brock",
        "isaac@okta.example",
        "enabled",
    )
    assert PASSWORD not in repr(state.users)
    resp, got = await scim.get(f"/Users/{isaac['id']}")
    assert (resp.status, got["name"]) == (200, {"givenName": "Isaac", "familyName": "Brock"})

    # PUT: the whole user back, changed.
    body = okta_user("Isaac@Okta.example", "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    row = app_user(state, "isaac@okta.example")
    assert (row["first_name"], row["title"], row["status"]) == ("Izzy", "Director", "enabled")

    # Deactivation by PUT with active false, then reactivation by a path-less PATCH.
    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert app_user(state, "isaac@okta.example")["status"] == "disabled"
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": True}}])
    assert (resp.status, data["active"]) == (200, True), data
    assert app_user(state, "isaac@okta.example")["status"] == "enabled"
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    row = app_user(state, "isaac@okta.example")
    assert (row["status"], row["first_name"]) == ("disabled", "Izzy")
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"') + "&startIndex=1&count=100")
    assert data["Resources"][0]["active"] is False

    # Group Push: create with members, replace members, add, remove by value filter, rename, PUT, DELETE.
    a, b, c = [await create(scim, "/Users", okta_user(f"{n}@okta.example")) for n in "abc"]
    group = await create(
        scim,
        "/Groups",
        {
            "schemas": [GROUP_URN],
            "displayName": "Okta Pushed",
            "members": [{"value": a["id"], "display": "a"}, {"value": b["id"], "display": "b"}],
        },
    )
    assert state.member_logins("Okta Pushed") == ["a@okta.example", "b@okta.example"]
    gid = group["id"]
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_logins("Okta Pushed") == ["b@okta.example", "c@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": isaac["id"]}]}])
    assert resp.status == 200, data
    assert state.member_logins("Okta Pushed") == ["Isaac@Okta.example", "b@okta.example", "c@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert state.member_logins("Okta Pushed") == ["Isaac@Okta.example", "b@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data  # Okta retries: removing a non-member succeeds
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert state.member_logins("Okta Renamed") == ["Isaac@Okta.example", "b@okta.example"]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Final", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.member_logins("Okta Final") == ["a@okta.example"]
    assert len(state.groups) == 1
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert state.groups == {} and len(state.users) == 4


async def test_the_mappings_env_token_is_accepted_too(client: TestClient, state: HrState) -> None:
    resp, data = await Scim(client, ENV_TOKEN, BASE).get("/Users")
    assert resp.status == 200, data
    resp, _ = await Scim(client, "not-a-token", BASE).get("/Users")
    assert resp.status == 401


# ---------------------------------------------------------------- the app's faults


async def test_app_500_on_create_is_retried_under_its_idempotency_key_and_makes_one_record(
    scim: Scim, client: TestClient, state: HrState
) -> None:
    """The shipped mapping declares `create.idempotency_header`: the app makes one record per key, so a create that
    met a 5xx is sent again under the same key (before the key, a create was never retried: see the next test)."""
    state.fault("POST", "/users", status=500, body='{"error": "database is down"}')
    user = await create(scim, "/Users", entra_user("blip@contoso.com", "Blip", "Once"))
    assert state.calls.count(("POST", "/users")) == 2
    assert state.made_by_key == {user["id"]: ("users", app_user(state, "blip@contoso.com")["id"])}  # the key: the SCIM id
    assert len(state.users) == 1


async def test_app_500_on_every_try_of_a_create_is_503_with_retry_after_and_nothing_recorded(
    scim: Scim, client: TestClient, state: HrState
) -> None:
    state.fault("POST", "/users", status=500, body='{"error": "database is down"}', times=3)  # retries: 2
    resp, data = await scim.post("/Users", entra_user("down@contoso.com", "Down", "Time"))
    assert resp.status == 503, data
    assert resp.content_type == "application/scim+json"
    assert int(resp.headers["Retry-After"]) > 0
    assert state.calls.count(("POST", "/users")) == 3
    assert state.users == {}
    await assert_nothing_recorded(scim, client)
    # The IdP's retry goes through.
    await create(scim, "/Users", entra_user("down@contoso.com", "Down", "Time"))
    assert app_user(state, "down@contoso.com")["status"] == "enabled"


async def test_without_an_idempotency_key_a_create_meeting_a_500_is_never_retried(
    aiohttp_client: Any, hr: Hr, tmp_path: Path
) -> None:
    doc = yaml.safe_load(MAPPING.read_text())
    for kind in doc["connector"]["resources"].values():
        del kind["create"]["idempotency_header"]
    unkeyed = tmp_path / "hr_unkeyed.yaml"
    unkeyed.write_text(yaml.safe_dump(doc))
    settings = GatewaySettings(mappings=[unkeyed], data_dir=tmp_path / "data", extra_tokens={"hr": [SecretStr(TOKEN)]})
    client = await aiohttp_client(create_app(settings))
    scim = Scim(client, TOKEN, BASE)
    hr.state.fault("POST", "/users", status=500, body='{"error": "database is down"}')
    resp, data = await scim.post("/Users", entra_user("down@contoso.com", "Down", "Time"))
    assert resp.status == 503, data
    assert hr.state.calls.count(("POST", "/users")) == 1  # the app may have made it: a second could double it
    assert hr.state.users == {} and hr.state.made_by_key == {}
    await assert_nothing_recorded(scim, client)


async def test_app_html_answer_is_502_and_nothing_changed(scim: Scim, client: TestClient, state: HrState) -> None:
    html = "<html><body><h1>Sign in</h1></body></html>"
    state.fault("POST", "/users", status=200, body=html, content_type="text/html")
    resp, data = await scim.post("/Users", entra_user("proxy@contoso.com", "Pro", "Xy"))
    assert resp.status == 502, data
    assert "Sign in" not in data["detail"]
    assert state.users == {}
    await assert_nothing_recorded(scim, client)

    user = await create(scim, "/Users", entra_user("proxy@contoso.com", "Pro", "Xy"))
    before = dict(app_user(state, "proxy@contoso.com"))
    state.fault("PATCH", r"/users/\d+", status=200, body=html, content_type="text/html")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Changed"}])
    assert resp.status == 502, data
    assert app_user(state, "proxy@contoso.com") == before
    resp, data = await scim.get(f"/Users/{user['id']}")
    assert (resp.status, data["title"]) == (200, "Engineer")


async def test_app_conflict_is_uniqueness(scim: Scim, state: HrState) -> None:
    """A login the app already holds under another case, for a user the gateway never saw: the app's 409 is 409."""
    await create(scim, "/Users", entra_user("first@contoso.com", "First", "One"))
    state.fault("POST", "/users", status=409, body='{"error": "login already taken"}')
    resp, data = await scim.post("/Users", entra_user("second@contoso.com", "Second", "Two"))
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data
    assert "login already taken" in data["detail"]
    assert state.user_by_login("second@contoso.com") is None


@pytest.mark.parametrize(
    ("body", "named"),
    [('{"id": 7, "login": "trunc', "not JSON"), ('{"login": "noid@contoso.com"}', "no id"), ("[]", "id")],
    ids=["truncated-json", "missing-id", "not-an-object"],
)
async def test_app_garbage_on_create_is_502_naming_it_and_nothing_recorded(
    scim: Scim, client: TestClient, state: HrState, body: str, named: str
) -> None:
    state.fault("POST", "/users", status=201, body=body)
    resp, data = await scim.post("/Users", entra_user("noid@contoso.com", "No", "Id"))
    assert resp.status == 502, data
    assert data["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] and named in data["detail"], data
    assert "hr-api-key" not in data["detail"]
    await assert_nothing_recorded(scim, client)


async def test_listing_stops_at_the_apps_total(scim: Scim, state: HrState, client: TestClient) -> None:
    """The app answers its total: a list of every user costs one call per page, and no call for an empty page."""
    for name in ("p1", "p2", "p3"):
        await create(scim, "/Users", {"schemas": [USER_URN], "userName": f"{name}@x.example"})
    state.calls.clear()
    connector = client.app[APPS]["hr"].connector
    listed = [native async for native, _record in connector.list_all("User")]
    assert len(listed) == 3
    assert [c for c in state.calls if c[1].startswith("/users")] == [("GET", "/users?page=1&per_page=100")]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            '{"errors": [{"field": "email", "message": "is not allowed", "code": "blocked_domain"}]}',
            "email: is not allowed (blocked_domain)",
        ),
        ('{"errors": {"email": ["is invalid"], "login": ["is too long"]}}', "email: is invalid; login: is too long"),  # Rails
        (
            '{"detail": [{"loc": ["body", "email"], "msg": "value is not a valid email", "type": "value_error"}]}',
            "email: value is not a valid email",
        ),  # FastAPI
        ('{"errors": [{"source": {"pointer": "/data/attributes/email"}, "detail": "is taken"}]}', "email: is taken"),  # JSON:API
    ],
    ids=["errors-list", "rails", "fastapi", "jsonapi"],
)
async def test_the_apps_refusal_reaches_the_idp_in_its_own_words(
    scim: Scim, state: HrState, body: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The IdP's detail names what the app named; the operator's log has the app's whole answer."""
    from tests.fakes.hr_app import Fault

    state.faults.append(Fault("POST", r"^/users$", status=422, body=body))
    resp, data = await scim.post("/Users", {"schemas": [USER_URN], "userName": "refused@x.example"})
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert named in data["detail"], data
    assert state.users == {}
    assert any(body in r.getMessage() and "HTTP 422" in r.getMessage() for r in caplog.records), caplog.text


async def test_writes_send_what_the_request_means(scim: Scim, state: HrState) -> None:
    """Absent is not sent, a change sends only itself, a clear sends null: the app sees each for what it is."""
    user = await create(scim, "/Users", {"schemas": [USER_URN], "userName": "lean@x.example", "title": "Clerk"})
    [(method, path, body)] = [b for b in state.bodies if b[1] == "/users"]
    assert method == "POST" and body == {"login": "lean@x.example", "title": "Clerk"}, body  # no nulls for the rest
    state.bodies.clear()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200, data
    assert [b[2] for b in state.bodies] == [{"title": "Lead"}]
    state.bodies.clear()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "remove", "path": "title"}])
    assert resp.status == 200 and "title" not in data, data
    assert [b[2] for b in state.bodies] == [{"title": None}]
    assert app_user(state, "lean@x.example")["title"] is None


@pytest.mark.parametrize("garble", ['{"created": true}', '{"id": 12, "login": "cut sh'], ids=["no-id", "cut-short"])
async def test_a_create_answered_unreadably_is_linked_not_orphaned(
    scim: Scim, state: HrState, client: TestClient, garble: str
) -> None:
    """The app made the record but its answer cannot be read: the gateway finds the record by userName and links
    it, so there is no orphan in the app and no 409 on the IdP's retry."""
    from tests.fakes.hr_app import Fault

    state.faults.append(Fault("POST", r"^/users$", status=None, garble=garble))
    user = await create(scim, "/Users", {"schemas": [USER_URN], "userName": "garbled@x.example", "title": "T"})
    row = app_user(state, "garbled@x.example")
    stored = await client.app[APPS]["hr"].provisioner.store.get("hr", "User", user["id"])
    assert stored is not None and stored.native_id == str(row["id"])
    assert len(state.users) == 1
    resp, data = await scim.post("/Users", {"schemas": [USER_URN], "userName": "garbled@x.example"})
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data  # already linked: the retry finds it
    assert len(state.users) == 1


async def test_a_create_answered_unreadably_and_not_made_changes_nothing(scim: Scim, state: HrState, client: TestClient) -> None:
    from tests.fakes.hr_app import Fault

    state.faults.append(Fault("POST", r"^/users$", status=201, body='{"created": true}'))  # answered, not made
    resp, data = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ghost@x.example"})
    assert resp.status == 502, data
    assert state.users == {}
    await assert_nothing_recorded(scim, client)


async def test_membership_is_read_from_and_decided_against_the_app(scim: Scim, state: HrState) -> None:
    """Members added or removed in the app itself show on GET, and the IdP's removals and replacements reach
    them: the app never keeps access the IdP believes it removed."""
    a, b, c = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": f"{n}@m.example"}) for n in "abc"]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    gid = state.group_by_name("Ops")["id"]  # type: ignore[index]
    uid = {u["login"]: u["id"] for u in state.users.values()}
    state.members[gid].append(uid["b@m.example"])  # an admin adds b in the app itself

    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in data["members"]) == sorted([a["id"], b["id"]]), data
    resp, data = await scim.get(f"/Users/{b['id']}")
    assert [g["value"] for g in data["groups"]] == [group["id"]]

    state.members[gid].append(uid["c@m.example"])  # and c, which the gateway has not seen yet
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert state.member_logins("Ops") == ["a@m.example", "b@m.example"]

    state.members[gid].append(uid["c@m.example"])
    resp, data = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.member_logins("Ops") == ["a@m.example"]  # exactly the given list, in the app
    assert [m["value"] for m in data["members"]] == [a["id"]]


async def test_a_group_adopted_before_its_members(
    scim: Scim, state: HrState, client: TestClient, hr: Hr, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entra looks the group up first (adopted, its members not linked yet), then its users: the group gains them
    on its next read by id, and `import` repairs the copy of any group it has already linked."""
    import aiohttp

    from gateway.cli import main

    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http:
        async with http.post(f"{hr.url}/users", json={"login": "early@x.example"}) as resp:
            user_id = (await resp.json())["id"]
        for name in ("Early", "Later"):
            async with http.post(f"{hr.url}/groups", json={"name": name}) as resp:
                gid = (await resp.json())["id"]
            async with http.post(f"{hr.url}/groups/{gid}/members", json={"user_id": user_id}) as resp:
                assert resp.status < 300
    groups = {}
    for name in ("Early", "Later"):
        resp, data = await scim.get("/Groups?filter=" + q(f'displayName eq "{name}"'))
        [groups[name]] = data["Resources"]
        assert groups[name].get("members", []) == []  # its member is no SCIM user yet
    resp, data = await scim.get("/Users?filter=" + q('userName eq "early@x.example"'))
    [user] = data["Resources"]
    resp, data = await scim.get(f"/Groups/{groups['Early']['id']}")
    assert [m["value"] for m in data["members"]] == [user["id"]]
    store = client.app[APPS]["hr"].provisioner.store
    assert [m.id for m in await store.members("hr", groups["Later"]["id"])] == []
    # The CLI on the same data directory the serving gateway uses (the fixture's tmp_path / "data").
    status = await asyncio.to_thread(main, ["import", "hr", "--config", str(MAPPING), "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Group: 2 in the app, 0 linked now, 2 already linked" in out and "1 with their members brought up to date" in out, out
    assert [m.id for m in await store.members("hr", groups["Later"]["id"])] == [user["id"]]


async def test_the_request_id_is_answered_and_passed_on_to_the_app(scim: Scim, state: HrState) -> None:
    """X-Request-Id: the caller's (when plain) or the gateway's own, in the answer, the audit line and the app's calls."""
    state.request_ids.clear()
    resp, data = await scim.post(
        "/Users", {"schemas": [USER_URN], "userName": "traced@x.example"}, headers={"X-Request-Id": "idp-req-0001-abcd"}
    )
    assert resp.status == 201, data
    assert resp.headers["X-Request-Id"] == "idp-req-0001-abcd"
    assert state.request_ids and set(state.request_ids) == {"idp-req-0001-abcd"}
    resp, data = await scim.get("/Users?filter=" + q('userName eq "nobody@x.example"'), headers={"X-Request-Id": "bad id\\r\\n"})
    assert resp.status == 200 and len(resp.headers["X-Request-Id"]) == 32  # refused as given: the gateway's own
    resp, data = await scim.get("/Users/no-such-id")
    assert resp.status == 404 and resp.headers.get("X-Request-Id")
