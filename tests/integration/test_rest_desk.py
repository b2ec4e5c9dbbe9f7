"""The help desk over REST (a Zendesk-style API), end to end: Entra ID's and Okta's sequences into the fake desk.

The fake (tests/fakes/desk_app.py) runs as an aiohttp server on a real loopback port; the gateway reaches it
with the shipped mappings/desk_rest.yaml, pointed at the fake by environment variables. Every step asserts
the desk's own state. The desk refuses JSON null in any body, so every write is also checked for nulls.
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
from tests.conftest import ENTERPRISE_URN, GROUP_URN, USER_URN, Scim
from tests.demo_rows import q
from tests.fakes.desk_app import API_TOKEN, DESK_STATE, DeskState, create_desk_app, serve
from tests.idp import PASSWORD, entra_group, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "desk_rest.yaml"
TOKEN = "desk-scim-token-0123456789"
BASE = "/apps/desk/scim/v2"


@pytest.fixture
async def state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DeskState]:
    app = create_desk_app()
    async with serve(app) as url:
        monkeypatch.setenv("DESK_API_URL", url)
        monkeypatch.setenv("DESK_API_TOKEN", API_TOKEN)
        monkeypatch.setenv("DESK_SCIM_TOKEN", TOKEN)
        yield app[DESK_STATE]


def settings(data_dir: Path) -> GatewaySettings:
    return GatewaySettings(mappings=[MAPPING], data_dir=data_dir, extra_tokens={"desk": [SecretStr(TOKEN)]})


@pytest.fixture
async def scim(aiohttp_client: Any, state: DeskState, tmp_path: Path) -> Scim:
    return Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


def desk_user(state: DeskState, email: str) -> dict[str, Any]:
    user = state.user(email)
    assert user is not None, f"the desk has no user {email!r}"
    return user


def no_nulls(state: DeskState) -> None:
    """No write the desk saw carried a JSON null (it would have refused it with 400)."""

    def has_null(value: Any) -> bool:
        if isinstance(value, dict):
            return any(has_null(v) for v in value.values())
        if isinstance(value, list):
            return any(has_null(v) for v in value)
        return value is None

    assert not [b for b in state.bodies if has_null(b[2])], state.bodies


# ---------------------------------------------------------------- Entra ID


async def test_entra_sequence(scim: Scim, state: DeskState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Alice.Smith@contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0)

    alice = await create(scim, "/Users", entra_user("Alice.Smith@contoso.com", "Alice", "Smith"))
    row = desk_user(state, "alice.smith@contoso.com")
    assert (row["email"], row["name"], row["external_id"], row["suspended"]) == (
        "alice.smith@contoso.com",
        "Alice Smith",
        "Alice.Smith@contoso.com",
        False,
    )
    assert row["user_fields"] == {"job_title": "Engineer", "department": "R&D"}
    [(_, _, sent)] = [b for b in state.bodies if b[:2] == ("POST", "/users")]
    assert set(sent) == {"user"} and "phone" not in sent["user"], sent  # enveloped; absent fields left out

    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert [r["id"] for r in found["Resources"]] == [alice["id"]]

    state.bodies.clear()
    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [
            {"op": "Replace", "path": "title", "value": "Lead"},
            {"op": "Replace", "value": {f"{ENTERPRISE_URN}:department": "Platform"}},
        ],
    )
    assert resp.status == 200, data
    assert desk_user(state, "alice.smith@contoso.com")["user_fields"] == {"job_title": "Lead", "department": "Platform"}
    assert [b[2] for b in state.bodies] == [{"user": {"user_fields": {"job_title": "Lead", "department": "Platform"}}}]

    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert desk_user(state, "alice.smith@contoso.com")["suspended"] is True
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert desk_user(state, "alice.smith@contoso.com")["suspended"] is False

    # Groups: lookup (none), create, add members, remove one, rename.
    bob = await create(scim, "/Users", entra_user("bob.jones@contoso.com", "Bob", "Jones"))
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(scim, "/Groups", entra_group("Engineering"))
    assert state.member_emails("Engineering") == []
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_emails("Engineering") == ["alice.smith@contoso.com", "bob.jones@contoso.com"]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.member_emails("Engineering") == ["bob.jones@contoso.com"]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert state.group("Engineering") is None and state.member_emails("Platform") == ["bob.jones@contoso.com"]

    # Delete a user (out of the group too), then the group.
    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert state.user("bob.jones@contoso.com") is None and state.member_emails("Platform") == []
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.groups == {}
    no_nulls(state)


# ---------------------------------------------------------------- Okta


async def test_okta_sequence(scim: Scim, state: DeskState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)
    isaac = await create(scim, "/Users", okta_user("Isaac@Okta.example", "Isaac", "Brock"))
    row = desk_user(state, "isaac@okta.example")
    assert (row["email"], row["external_id"], row["name"], row["suspended"]) == (
        "isaac@okta.example",
        "Isaac@Okta.example",
        "Isaac Brock",
        False,
    )
    assert PASSWORD not in repr(state.users) and PASSWORD not in repr(state.bodies)

    body = okta_user("Isaac@Okta.example", "Izzy", "Brock", title="Director", id=isaac["id"])
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    row = desk_user(state, "isaac@okta.example")
    assert (row["name"], row["user_fields"]["job_title"], row["suspended"]) == ("Izzy Brock", "Director", False)

    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert desk_user(state, "isaac@okta.example")["suspended"] is True
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": True}}])
    assert (resp.status, data["active"]) == (200, True), data
    assert desk_user(state, "isaac@okta.example")["suspended"] is False

    # Group Push.
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
    assert state.member_emails("Okta Pushed") == ["b@okta.example", "c@okta.example", "isaac@okta.example"]
    for _ in range(2):  # Okta retries: removing a non-member succeeds
        resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
        assert resp.status == 200, data
        assert state.member_emails("Okta Pushed") == ["b@okta.example", "isaac@okta.example"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert state.member_emails("Okta Renamed") == ["b@okta.example", "isaac@okta.example"]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Final", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.member_emails("Okta Final") == ["a@okta.example"]
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert state.groups == {} and len(state.users) == 4
    no_nulls(state)


# ---------------------------------------------------------------- nulls, and the desk's own words


async def test_clears_send_the_rules_value_never_null(scim: Scim, state: DeskState) -> None:
    user = await create(scim, "/Users", {"schemas": [USER_URN], "userName": "lean@x.example", "title": "Clerk"})
    [(_, _, sent)] = [b for b in state.bodies if b[:2] == ("POST", "/users")]
    assert sent == {"user": {"external_id": "lean@x.example", "name": "lean@x.example", "user_fields": {"job_title": "Clerk"}}}
    state.bodies.clear()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "remove", "path": "title"}])
    assert resp.status == 200 and "title" not in data, data
    assert [b[2] for b in state.bodies] == [{"user": {"user_fields": {"job_title": ""}}}]
    assert desk_user(state, "lean@x.example")["user_fields"]["job_title"] == ""
    state.bodies.clear()
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "phoneNumbers", "value": None}])
    assert resp.status == 200, data
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "remove", "path": "active"}])
    assert resp.status == 200, data
    assert desk_user(state, "lean@x.example")["suspended"] is False
    no_nulls(state)


async def test_the_desks_422_is_invalid_value_and_changes_nothing(scim: Scim, state: DeskState) -> None:
    resp, data = await scim.post(
        "/Users", {"schemas": [USER_URN], "userName": "x", "emails": [{"type": "work", "value": "not-an-email"}]}
    )
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert "HTTP 422" in data["detail"] and "RecordInvalid" in data["detail"], data
    assert state.users == {}
    resp, data = await scim.get("/Users")
    assert data["totalResults"] == 0


async def test_the_desks_422_reaches_the_idp_naming_the_field(scim: Scim, state: DeskState) -> None:
    resp, data = await scim.post(
        "/Users", {"schemas": [USER_URN], "userName": "x", "emails": [{"type": "work", "value": "not-an-email"}]}
    )
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert "email" in data["detail"] and "not properly formatted" in data["detail"], data


# ---------------------------------------------------------------- records the desk held before


def seed(state: DeskState) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    ann = state.add_user(
        name="Ann Old", email="ann@old.example", external_id="ann@old.example", user_fields={"job_title": "Agent"}
    )
    ben = state.add_user(name="Ben Old", email="ben@old.example", external_id="ben@old.example", suspended=True)
    team = state.add_group("Tier 1")
    state.members[team["id"]] += [ann["id"], ben["id"]]
    return ann, ben, team


async def test_import_links_what_the_desk_holds(aiohttp_client: Any, state: DeskState, tmp_path: Path) -> None:
    seed(state)
    for n in range(150):  # more than one page of users (100 a page)
        state.add_user(name=f"Bulk {n}", email=f"bulk{n}@old.example", external_id=f"bulk{n}")
    argv = ["import", "desk", "--config", str(MAPPING), "--data-dir", str(tmp_path / "data")]
    assert await asyncio.to_thread(main, argv) == 0
    assert await asyncio.to_thread(main, argv) == 0  # again: nothing new
    scim = Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)
    resp, data = await scim.get("/Users?count=1")
    assert data["totalResults"] == 152
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben@old.example"'))
    [ben] = found["Resources"]
    assert (ben["displayName"], ben["active"]) == ("Ben Old", False)
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Tier 1"'))
    [team] = groups["Resources"]
    _, ann = await scim.get("/Users?filter=" + q('userName eq "ann@old.example"'))
    assert sorted(m["value"] for m in team["members"]) == sorted([ann["Resources"][0]["id"], ben["id"]])
    resp, _ = await scim.post("/Users", {"schemas": [USER_URN], "userName": "ANN@old.example"})
    assert resp.status == 409
    # What the import linked, SCIM changes in the desk.
    resp, data = await scim.patch(f"/Users/{ben['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200, data
    assert desk_user(state, "ben@old.example")["suspended"] is False
    no_nulls(state)


async def test_entra_lookup_adopts_an_existing_user_and_group(scim: Scim, state: DeskState) -> None:
    ann, ben, _ = seed(state)
    _, found = await scim.get("/Users?filter=" + q('userName eq "Ann@Old.example"'))
    [user] = found["Resources"]
    assert (user["displayName"], user["title"], user["active"]) == ("Ann Old", "Agent", True)
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Senior Agent"}])
    assert resp.status == 200, data
    assert ann["user_fields"]["job_title"] == "Senior Agent" and len(state.users) == 2
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben@old.example"'))
    [ben_scim] = found["Resources"]
    _, groups = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Tier 1"'))
    [group] = groups["Resources"]
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got["members"]) == sorted([user["id"], ben_scim["id"]])
    assert len(state.groups) == 1


async def test_membership_drift_is_removed_and_put_replaces(scim: Scim, state: DeskState) -> None:
    a, b, c = [
        await create(
            scim,
            "/Users",
            {"schemas": [USER_URN], "userName": f"{n}@m.example", "emails": [{"type": "work", "value": f"{n}@m.example"}]},
        )
        for n in "abc"
    ]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    gid = state.group("Ops")["id"]  # type: ignore[index]
    uid = {u["external_id"]: u["id"] for u in state.users.values()}
    state.members[gid] += [uid["b@m.example"], uid["c@m.example"]]  # an agent adds b and c in the desk itself
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in data["members"]) == sorted([a["id"], b["id"], c["id"]]), data
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert state.member_emails("Ops") == ["a@m.example", "b@m.example"]
    state.members[gid].append(uid["c@m.example"])
    resp, data = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": b["id"]}]}
    )
    assert resp.status == 200, data
    assert state.member_emails("Ops") == ["b@m.example"]
    assert [m["value"] for m in data["members"]] == [b["id"]]


GROUP_FIRST_GAP = (
    "a group adopted before its members are linked keeps an empty member list in the gateway's copy: the members "
    "the app lists have no SCIM ids yet, and nothing fills them in once the users are linked (GET reads the app live)"
)


async def test_group_adopted_before_its_members_shows_them_once_linked(scim: Scim, state: DeskState) -> None:
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


# ---------------------------------------------------------------- check --connect


async def test_check_connect_fits_the_live_desk(state: DeskState, capsys: pytest.CaptureFixture[str]) -> None:
    seed(state)
    assert await asyncio.to_thread(main, ["check", "--connect", str(MAPPING)]) == 0, capsys.readouterr().out
    assert "ok (app desk: User, Group; the live app fits)" in capsys.readouterr().out
