"""Freshservice over REST (API v2: agents and agent groups), end to end: Entra ID's and Okta's sequences into the fake.

The fake (tests/fakes/fresh_app.py) runs as an aiohttp server on a real loopback port; the gateway reaches it
with the shipped mappings/fresh_rest.yaml, pointed at the fake by environment variables. Every step asserts
Freshservice's own state. What this app brings that the others do not: the API key as the Basic user name,
flat requests with wrapped answers, `link` header pages, PUT as a partial update that refuses read-only fields,
deactivation by DELETE and reactivation by PUT .../reactivate, and members kept on the group as integer ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.demo_rows import q
from tests.fakes.fresh_app import API_KEY, FRESH_STATE, PASSWORD, FreshState, create_fresh_app, serve
from tests.idp import PASSWORD as OKTA_PASSWORD
from tests.idp import entra_group, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "fresh_rest.yaml"
TOKEN = "fresh-scim-token-0123456789"
BASE = "/apps/fresh/scim/v2"
READ_ONLY = {"id", "active", "created_at", "updated_at", "member_of", "has_logged_in"}


@pytest.fixture
async def state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FreshState]:
    app = create_fresh_app()
    async with serve(app) as url:
        monkeypatch.setenv("FRESH_API_URL", url)
        monkeypatch.setenv("FRESH_API_KEY", API_KEY)
        monkeypatch.setenv("FRESH_API_PASSWORD", PASSWORD)
        monkeypatch.setenv("FRESH_SCIM_TOKEN", TOKEN)
        yield app[FRESH_STATE]


def settings(data_dir: Path) -> GatewaySettings:
    return GatewaySettings(mappings=[MAPPING], data_dir=data_dir, extra_tokens={"fresh": [SecretStr(TOKEN)]})


@pytest.fixture
async def scim(aiohttp_client: Any, state: FreshState, tmp_path: Path) -> Scim:
    return Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


def agent(state: FreshState, email: str) -> dict[str, Any]:
    found = state.agent(email)
    assert found is not None, f"Freshservice has no agent {email!r}"
    return found


def writes_were_clean(state: FreshState) -> None:
    """Every write was a flat object with no read-only field, and every id list held integers."""
    for method, path, body in state.bodies:
        if body == {} or (method == "PUT" and path.endswith("/reactivate")):
            continue
        assert isinstance(body, dict) and not set(body) & READ_ONLY, (method, path, body)
        assert not {"agent", "group"} & set(body), (method, path, body)  # not enveloped
        for ids in (body.get("members"), body.get("department_ids")):
            assert ids is None or all(isinstance(i, int) for i in ids), (method, path, body)


# ---------------------------------------------------------------- Entra ID


async def test_entra_sequence(scim: Scim, state: FreshState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Alice.Smith@contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    assert ("GET", "/agents?email=Alice.Smith@contoso.com&per_page=100") in state.calls, state.calls

    alice = await create(scim, "/Users", entra_user("Alice.Smith@contoso.com", "Alice", "Smith"))
    row = agent(state, "alice.smith@contoso.com")
    assert (row["email"], row["first_name"], row["last_name"], row["job_title"], row["active"]) == (
        "Alice.Smith@contoso.com",
        "Alice",
        "Smith",
        "Engineer",
        True,
    )
    [(_, _, sent)] = [b for b in state.bodies if b[:2] == ("POST", "/agents")]
    assert sent == {"email": "Alice.Smith@contoso.com", "first_name": "Alice", "last_name": "Smith", "job_title": "Engineer"}

    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert [r["id"] for r in found["Resources"]] == [alice["id"]]

    state.bodies.clear()
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200, data
    assert agent(state, "alice.smith@contoso.com")["job_title"] == "Lead"
    assert state.bodies == [("PUT", f"/agents/{row['id']}", {"job_title": "Lead"})]  # only the change: a partial PUT

    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert agent(state, "alice.smith@contoso.com")["active"] is False
    assert ("DELETE", f"/agents/{row['id']}") in state.calls
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert agent(state, "alice.smith@contoso.com")["active"] is True
    assert ("PUT", f"/agents/{row['id']}/reactivate") in state.calls

    # A SCIM DELETE deactivates the agent (never "forget", which deletes their tickets).
    resp, _ = await scim.delete(f"/Users/{alice['id']}")
    assert resp.status == 204
    assert agent(state, "alice.smith@contoso.com")["active"] is False
    assert not [c for c in state.calls if c[1].endswith("/forget")]
    resp, _ = await scim.get(f"/Users/{alice['id']}")
    assert resp.status == 404

    # A group without members: lookup (none), create, rename, delete.
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Empty"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(scim, "/Groups", entra_group("Empty"))
    assert state.member_emails("Empty") == []
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Still Empty"}])
    assert resp.status == 200, data
    assert state.group("Empty") is None and state.member_emails("Still Empty") == []
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.groups == {}
    writes_were_clean(state)


async def test_entra_group_members(scim: Scim, state: FreshState) -> None:
    """Entra's group steps: create the group empty, add two members, remove one, rename, delete a member, delete."""
    alice = await create(scim, "/Users", entra_user("Alice.Smith@contoso.com", "Alice", "Smith"))
    bob = await create(scim, "/Users", entra_user("bob.jones@contoso.com", "Bob", "Jones"))
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(scim, "/Groups", entra_group("Engineering"))
    assert state.member_emails("Engineering") == []
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_emails("Engineering") == ["Alice.Smith@contoso.com", "bob.jones@contoso.com"]
    assert agent(state, "bob.jones@contoso.com")["member_of"] == [state.group("Engineering")["id"]]  # type: ignore[index]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_emails("Engineering") == ["bob.jones@contoso.com"]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert state.group("Engineering") is None and state.member_emails("Platform") == ["bob.jones@contoso.com"]

    # Bob is deleted (deactivated: a deactivated agent stays listed on the group in Freshservice), then the group.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert agent(state, "bob.jones@contoso.com")["active"] is False
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.groups == {}
    writes_were_clean(state)


# ---------------------------------------------------------------- Okta


async def test_okta_sequence(scim: Scim, state: FreshState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)
    isaac = await create(scim, "/Users", okta_user("Isaac@Okta.example", "Isaac", "Brock"))
    row = agent(state, "isaac@okta.example")
    assert (row["email"], row["first_name"], row["last_name"], row["active"]) == ("Isaac@Okta.example", "Isaac", "Brock", True)
    assert OKTA_PASSWORD not in repr(state.agents) and OKTA_PASSWORD not in repr(state.bodies)

    body = okta_user("Isaac@Okta.example", "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    row = agent(state, "isaac@okta.example")
    assert (row["first_name"], row["job_title"], row["active"]) == ("Izzy", "Director", True)

    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert agent(state, "isaac@okta.example")["active"] is False
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": True}}])
    assert (resp.status, data["active"]) == (200, True), data
    assert agent(state, "isaac@okta.example")["active"] is True

    resp, _ = await scim.delete(f"/Users/{isaac['id']}")
    assert resp.status == 204
    assert agent(state, "isaac@okta.example")["active"] is False and len(state.agents) == 1
    writes_were_clean(state)


async def test_okta_group_push(scim: Scim, state: FreshState) -> None:
    """Okta's Group Push: create with members, replace them, add, remove twice, rename, PUT, delete."""
    isaac = await create(scim, "/Users", okta_user("Isaac@Okta.example", "Isaac", "Brock"))
    a, b, c = [await create(scim, "/Users", okta_user(f"{n}@okta.example")) for n in "abc"]
    group = await create(
        scim,
        "/Groups",
        {"schemas": [GROUP_URN], "displayName": "Okta Pushed", "members": [{"value": a["id"]}, {"value": b["id"]}]},
    )
    assert state.member_emails("Okta Pushed") == ["a@okta.example", "b@okta.example"]
    gid = group["id"]
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_emails("Okta Pushed") == ["b@okta.example", "c@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": isaac["id"]}]}])
    assert resp.status == 200, data
    assert state.member_emails("Okta Pushed") == ["Isaac@Okta.example", "b@okta.example", "c@okta.example"]
    for _ in range(2):  # Okta retries: removing a non-member succeeds
        resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
        assert resp.status == 200, data
        assert state.member_emails("Okta Pushed") == ["Isaac@Okta.example", "b@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert state.member_emails("Okta Renamed") == ["Isaac@Okta.example", "b@okta.example"]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Final", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.member_emails("Okta Final") == ["a@okta.example"]
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert state.groups == {} and len(state.agents) == 4
    writes_were_clean(state)


# ---------------------------------------------------------------- Freshservice's own words


async def test_the_400_names_the_field_and_changes_nothing(scim: Scim, state: FreshState) -> None:
    resp, data = await scim.post("/Users", {"schemas": [USER_URN], "userName": "not-an-email"})
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert "HTTP 400" in data["detail"] and "email" in data["detail"], data
    assert "valid email address" in data["detail"] and "invalid_value" in data["detail"], data
    assert state.agents == {}
    resp, data = await scim.get("/Users")
    assert data["totalResults"] == 0


async def test_the_409_names_the_field(scim: Scim, state: FreshState) -> None:
    user = await create(scim, "/Users", {"schemas": [USER_URN], "userName": "one@x.example"})
    state.add_agent("two@x.example", "Two")  # made in Freshservice, not linked
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "userName", "value": "two@x.example"}])
    assert (resp.status, data["scimType"]) == (409, "uniqueness"), data
    assert "email" in data["detail"] and "already exists" in data["detail"] and "duplicate_value" in data["detail"], data
    assert agent(state, "one@x.example")["first_name"] == "one"  # the userName's local part: a first name is required


# ---------------------------------------------------------------- records Freshservice held before


def seed(state: FreshState) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    ann = state.add_agent("ann@old.example", "Ann", last_name="Old", job_title="Agent")
    ben = state.add_agent("ben@old.example", "Ben", last_name="Old", active=False)
    team = state.add_group("Tier 1", [ann["id"], ben["id"]])
    return ann, ben, team


async def test_import_links_what_freshservice_holds(aiohttp_client: Any, state: FreshState, tmp_path: Path) -> None:
    seed(state)
    for n in range(150):  # more than one page of agents (100 a page): the `link` header leads on
        state.add_agent(f"bulk{n}@old.example", f"Bulk{n}")
    argv = ["import", "fresh", "--config", str(MAPPING), "--data-dir", str(tmp_path / "data")]
    assert await asyncio.to_thread(main, argv) == 0
    assert any(c[0] == "GET" and c[1].startswith("/agents?") and "page=2" in c[1] for c in state.calls), state.calls
    assert await asyncio.to_thread(main, argv) == 0  # again: nothing new
    scim = Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)
    resp, data = await scim.get("/Users?count=1")
    assert data["totalResults"] == 152
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben@old.example"'))
    [ben] = found["Resources"]
    assert (ben["name"]["givenName"], ben["active"]) == ("Ben", False)
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Tier 1"'))
    [team] = groups["Resources"]
    _, ann = await scim.get("/Users?filter=" + q('userName eq "ann@old.example"'))
    assert sorted(m["value"] for m in team["members"]) == sorted([ann["Resources"][0]["id"], ben["id"]])
    resp, _ = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ANN@old.example"})
    assert resp.status == 409
    # What the import linked, SCIM changes in Freshservice.
    resp, data = await scim.patch(f"/Users/{ben['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200, data
    assert agent(state, "ben@old.example")["active"] is True
    writes_were_clean(state)


async def test_entra_lookup_adopts_an_existing_user_and_group(scim: Scim, state: FreshState) -> None:
    ann, ben, _ = seed(state)
    _, found = await scim.get("/Users?filter=" + q('userName eq "Ann@Old.example"'))
    [user] = found["Resources"]
    assert (user["name"]["givenName"], user["title"], user["active"]) == ("Ann", "Agent", True)
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Senior Agent"}])
    assert resp.status == 200, data
    assert ann["job_title"] == "Senior Agent" and len(state.agents) == 2
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben@old.example"'))
    [ben_scim] = found["Resources"]
    assert ben_scim["active"] is False
    _, groups = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Tier 1"'))
    [group] = groups["Resources"]
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got["members"]) == sorted([user["id"], ben_scim["id"]])
    assert len(state.groups) == 1
    writes_were_clean(state)


async def test_members_changed_in_freshservice_then_a_remove_and_a_put(scim: Scim, state: FreshState) -> None:
    a, b, c = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": f"{n}@m.example"}) for n in "abc"]
    uid = {x["email"]: x["id"] for x in state.agents.values()}
    # The group is Freshservice's own, with a in it .
    record = state.add_group("Ops", [uid["a@m.example"]])
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Ops"'))
    [group] = groups["Resources"]
    assert [m["value"] for m in group["members"]] == [a["id"]]
    record["members"] += [uid["b@m.example"], uid["c@m.example"]]  # an admin adds b and c in Freshservice itself
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in data["members"]) == sorted([a["id"], b["id"], c["id"]]), data
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert state.member_emails("Ops") == ["a@m.example", "b@m.example"]
    record["members"].append(uid["c@m.example"])  # and c again
    resp, data = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": b["id"]}]}
    )
    assert resp.status == 200, data
    assert record["members"] == [uid["b@m.example"]]  # exactly the list given
    assert [m["value"] for m in data["members"]] == [b["id"]]
    writes_were_clean(state)


async def test_group_adopted_before_its_members_shows_them_once_linked(scim: Scim, state: FreshState) -> None:
    """Entra looks the group up first (its members not yet linked), then each member: the group then shows them."""
    seed(state)
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Tier 1"'))
    [group] = groups["Resources"]
    assert group.get("members", []) == []  # nothing linked yet: no member the IdP could know
    ids = []
    for email in ("ann@old.example", "ben@old.example"):
        _, found = await scim.get("/Users?filter=" + q(f'userName eq "{email}"'))
        ids.append(found["Resources"][0]["id"])
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got.get("members", [])) == sorted(ids), got
    _, listed = await scim.get("/Groups?filter=" + q('displayName eq "Tier 1"'))
    assert sorted(m["value"] for m in listed["Resources"][0].get("members", [])) == sorted(ids), listed
    # A SCIM write of the group keeps the members it does not name out of the app only when asked to.
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "add", "path": "members", "value": []}])
    assert resp.status in (200, 204), data
    assert state.member_emails("Tier 1") == ["ann@old.example", "ben@old.example"]


# ---------------------------------------------------------------- check --connect


async def test_check_connect_fits_live_freshservice(state: FreshState, capsys: pytest.CaptureFixture[str]) -> None:
    seed(state)
    assert await asyncio.to_thread(main, ["check", "--connect", str(MAPPING)]) == 0, capsys.readouterr().out
    assert "ok (app fresh: User, Group; the live app fits)" in capsys.readouterr().out
