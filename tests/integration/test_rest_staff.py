"""The staff directory over REST (a Django REST framework app), end to end: Entra ID's and Okta's sequences.

The fake (tests/fakes/staff_app.py) runs as an aiohttp server on a real loopback port; the gateway reaches it
with the shipped mappings/staff_rest.yaml, pointed at the fake by environment variables. The app takes no
PATCH (every update is a PUT of the whole employee), keeps `is_active` as 0 or 1, and holds team membership
only as each employee's list of team codes. Every step asserts the app's own state.
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
from tests.fakes.staff_app import API_KEY, STAFF_STATE, StaffState, create_staff_app, serve
from tests.idp import PASSWORD, entra_group, entra_user, okta_user

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "mappings" / "staff_rest.yaml"
TOKEN = "staff-scim-token-0123456789"
BASE = "/apps/staff/scim/v2"


@pytest.fixture
async def state(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StaffState]:
    app = create_staff_app()
    async with serve(app) as url:
        monkeypatch.setenv("STAFF_API_URL", url)
        monkeypatch.setenv("STAFF_API_TOKEN", API_KEY)
        monkeypatch.setenv("STAFF_SCIM_TOKEN", TOKEN)
        yield app[STAFF_STATE]


def settings(data_dir: Path) -> GatewaySettings:
    return GatewaySettings(mappings=[MAPPING], data_dir=data_dir, extra_tokens={"staff": [SecretStr(TOKEN)]})


@pytest.fixture
async def scim(aiohttp_client: Any, state: StaffState, tmp_path: Path) -> Scim:
    return Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)


async def create(scim: Scim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp, data = await scim.post(path, body)
    assert resp.status == 201, data
    return data


def employee(state: StaffState, username: str) -> dict[str, Any]:
    found = state.employee(username)
    assert found is not None, f"the staff app has no employee {username!r}"
    return found


def no_patch(state: StaffState) -> None:
    assert not [c for c in state.calls if c[0] == "PATCH"], "the app takes no PATCH"


# ---------------------------------------------------------------- Entra ID


async def test_entra_sequence(scim: Scim, state: StaffState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "alice.smith"'))
    assert (resp.status, data["totalResults"]) == (200, 0)

    alice = await create(
        scim, "/Users", entra_user("alice.smith", "Alice", "Smith", mail="Alice.Smith@Contoso.com", title="Engineer")
    )
    row = employee(state, "alice.smith")
    assert {k: row[k] for k in ("first_name", "last_name", "email", "job_title", "is_active", "teams")} == {
        "first_name": "Alice", "last_name": "Smith", "email": "alice.smith@contoso.com",
        "job_title": "Engineer", "is_active": 1, "teams": [],
    }  # fmt: skip
    resp, got = await scim.get(f"/Users/{alice['id']}")
    assert (resp.status, got["active"], got["name"]["givenName"]) == (200, True, "Alice")

    resp, data = await scim.patch(
        f"/Users/{alice['id']}",
        [
            {"op": "Replace", "path": "title", "value": "Lead"},
            {"op": "Replace", "value": {"name.givenName": "Alicia", f"{ENTERPRISE_URN}:department": "Platform"}},
        ],
    )
    assert resp.status == 200, data
    row = employee(state, "alice.smith")
    assert (row["job_title"], row["first_name"], row["last_name"]) == ("Lead", "Alicia", "Smith")
    [(method, path, sent)] = [b for b in state.bodies if b[0] == "PUT"]
    assert (method, path) == ("PUT", f"/employees/{row['id']}/") and sent["username"] == "alice.smith", sent

    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert (resp.status, data["active"]) == (200, False), data
    assert employee(state, "alice.smith")["is_active"] == 0
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert (resp.status, data["active"]) == (200, True), data
    assert employee(state, "alice.smith")["is_active"] == 1

    # Teams: lookup (none), create, add members, remove one, rename (the code stays).
    bob = await create(scim, "/Users", entra_user("bob.jones", "Bob", "Jones", mail="bob@contoso.com"))
    resp, data = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Engineering"'))
    assert (resp.status, data["totalResults"]) == (200, 0)
    group = await create(scim, "/Groups", entra_group("Engineering"))
    assert state.team("Engineering")["code"] == "engineering"  # type: ignore[index]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}, {"value": bob["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.team_members("Engineering") == ["alice.smith", "bob.jones"]
    assert employee(state, "bob.jones")["teams"] == ["engineering"]
    resp, data = await scim.patch(
        f"/Groups/{group['id']}", [{"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.team_members("Engineering") == ["bob.jones"]
    resp, data = await scim.get(f"/Users/{bob['id']}")
    assert [g["value"] for g in data["groups"]] == [group["id"]]
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert state.team("Engineering") is None and state.team_members("Platform") == ["bob.jones"]

    resp, _ = await scim.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    assert state.employee("bob.jones") is None
    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert state.teams == {} and [e["username"] for e in state.employees.values()] == ["alice.smith"]
    no_patch(state)


# ---------------------------------------------------------------- Okta


async def test_okta_sequence(scim: Scim, state: StaffState) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)
    isaac = await create(
        scim, "/Users", okta_user("isaac", "Isaac", "Brock", emails=[{"value": "isaac@okta.example", "type": "work"}])
    )
    row = employee(state, "isaac")
    assert (row["first_name"], row["last_name"], row["email"], row["is_active"]) == ("Isaac", "Brock", "isaac@okta.example", 1)
    assert PASSWORD not in repr(state.employees) and PASSWORD not in repr(state.bodies)

    body = okta_user(
        "isaac", "Izzy", "Brock", title="Director", id=isaac["id"], emails=[{"value": "isaac@okta.example", "type": "work"}]
    )
    resp, data = await scim.put(f"/Users/{isaac['id']}", body)
    assert resp.status == 200, data
    row = employee(state, "isaac")
    assert (row["first_name"], row["job_title"], row["is_active"]) == ("Izzy", "Director", 1)
    resp, data = await scim.put(f"/Users/{isaac['id']}", body | {"active": False})
    assert (resp.status, data["active"]) == (200, False), data
    assert employee(state, "isaac")["is_active"] == 0
    resp, data = await scim.patch(f"/Users/{isaac['id']}", [{"op": "replace", "value": {"active": True}}])
    assert (resp.status, data["active"]) == (200, True), data
    assert employee(state, "isaac")["is_active"] == 1

    # Group Push.
    a, b, c = [await create(scim, "/Users", okta_user(n, emails=[{"value": f"{n}@okta.example"}])) for n in "abc"]
    group = await create(
        scim,
        "/Groups",
        {"schemas": [GROUP_URN], "displayName": "Okta Pushed", "members": [{"value": a["id"]}, {"value": b["id"]}]},
    )
    assert state.team_members("Okta Pushed") == ["a", "b"]
    gid = group["id"]
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "replace", "path": "members", "value": [{"value": b["id"]}, {"value": c["id"]}]}]
    )
    assert resp.status == 200, data
    assert state.team_members("Okta Pushed") == ["b", "c"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": isaac["id"]}]}])
    assert resp.status == 200, data
    assert state.team_members("Okta Pushed") == ["b", "c", "isaac"]
    for _ in range(2):  # Okta retries: removing a non-member succeeds
        resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
        assert resp.status == 200, data
        assert state.team_members("Okta Pushed") == ["b", "isaac"]
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert state.team_members("Okta Renamed") == ["b", "isaac"]
    resp, data = await scim.put(
        f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Final", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.team_members("Okta Final") == ["a"]
    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert state.teams == {} and len(state.employees) == 4
    assert all(e["teams"] == [] for e in state.employees.values())
    no_patch(state)


# ---------------------------------------------------------------- the app's rules


async def test_clears_send_blank_and_the_drf_400_names_the_field(scim: Scim, state: StaffState) -> None:
    user = await create(scim, "/Users", {"schemas": [USER_URN], "userName": "lean", "title": "Clerk"})
    [(_, _, sent)] = [b for b in state.bodies if b[:2] == ("POST", "/employees/")]
    assert sent == {"username": "lean", "job_title": "Clerk"}, sent  # absent fields left out
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "remove", "path": "title"}])
    assert resp.status == 200 and "title" not in data, data
    assert employee(state, "lean")["job_title"] == ""
    resp, data = await scim.post("/Users", {"schemas": [USER_URN], "userName": "bad name!"})
    assert (resp.status, data["scimType"]) == (400, "invalidValue"), data
    assert "username: Enter a valid username" in data["detail"], data
    assert state.employee("bad name!") is None


# ---------------------------------------------------------------- records the app held before


def seed(state: StaffState) -> dict[str, Any]:
    team = state.add_team("Night Shift")
    state.add_employee("ann", first_name="Ann", email="ann@old.example", job_title="Nurse", teams=[team["code"]])
    state.add_employee("ben", first_name="Ben", is_active=0, teams=[team["code"]])
    return team


async def test_import_links_what_the_app_holds(aiohttp_client: Any, state: StaffState, tmp_path: Path) -> None:
    seed(state)
    for n in range(120):  # more than one page (100 a page)
        state.add_employee(f"bulk{n}")
    argv = ["import", "staff", "--config", str(MAPPING), "--data-dir", str(tmp_path / "data")]
    assert await asyncio.to_thread(main, argv) == 0
    assert await asyncio.to_thread(main, argv) == 0
    scim = Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)
    _, data = await scim.get("/Users?count=1")
    assert data["totalResults"] == 122
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben"'))
    [ben] = found["Resources"]
    assert ben["active"] is False
    _, ann = await scim.get("/Users?filter=" + q('userName eq "ann"'))
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Night Shift"'))
    [team] = groups["Resources"]
    assert sorted(m["value"] for m in team["members"]) == sorted([ann["Resources"][0]["id"], ben["id"]])
    resp, data = await scim.patch(f"/Users/{ben['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200, data
    assert employee(state, "ben")["is_active"] == 1 and employee(state, "ben")["teams"] == ["night-shift"]


async def test_entra_lookup_adopts_an_existing_employee_and_team(scim: Scim, state: StaffState) -> None:
    seed(state)
    _, found = await scim.get("/Users?filter=" + q('userName eq "ann"'))
    [ann] = found["Resources"]
    assert (ann["name"]["givenName"], ann["title"], ann["active"]) == ("Ann", "Nurse", True)
    resp, data = await scim.patch(f"/Users/{ann['id']}", [{"op": "Replace", "path": "title", "value": "Head Nurse"}])
    assert resp.status == 200, data
    assert employee(state, "ann")["job_title"] == "Head Nurse" and employee(state, "ann")["teams"] == ["night-shift"]
    _, found = await scim.get("/Users?filter=" + q('userName eq "ben"'))
    [ben] = found["Resources"]
    _, groups = await scim.get("/Groups?excludedAttributes=members&filter=" + q('displayName eq "Night Shift"'))
    [group] = groups["Resources"]
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got["members"]) == sorted([ann["id"], ben["id"]])
    assert len(state.teams) == 1 and len(state.employees) == 2


async def test_membership_drift_is_removed_and_put_replaces(scim: Scim, state: StaffState) -> None:
    a, b, c = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": n}) for n in "abc"]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    employee(state, "b")["teams"].append("ops")  # HR adds b and c in the app itself
    employee(state, "c")["teams"].append("ops")
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert state.team_members("Ops") == ["a", "b"]
    resp, data = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": c["id"]}]}
    )
    assert resp.status == 200, data
    assert state.team_members("Ops") == ["c"]  # exactly the given list: b, added in the app, is gone too
    no_patch(state)


async def test_a_group_put_leaves_exactly_the_given_members_in_the_app(scim: Scim, state: StaffState) -> None:
    a, b = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": n}) for n in "ab"]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    employee(state, "b")["teams"].append("ops")  # HR adds b in the app itself
    resp, data = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]}
    )
    assert resp.status == 200, data
    assert state.team_members("Ops") == ["a"]  # exactly the given list, in the app


async def test_members_added_in_the_app_show_on_the_groups_get(scim: Scim, state: StaffState) -> None:
    a, b = [await create(scim, "/Users", {"schemas": [USER_URN], "userName": n}) for n in "ab"]
    group = await create(scim, "/Groups", {"schemas": [GROUP_URN], "displayName": "Ops", "members": [{"value": a["id"]}]})
    employee(state, "b")["teams"].append("ops")  # HR adds b in the app itself
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in data["members"]) == sorted([a["id"], b["id"]]), data


async def test_group_adopted_before_its_members_shows_them_once_linked(scim: Scim, state: StaffState) -> None:
    """Entra looks the team up first (its members not yet linked), then each member: the team then shows them."""
    seed(state)
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Night Shift"'))
    [group] = groups["Resources"]
    assert group.get("members", []) == []
    ids = []
    for username in ("ann", "ben"):
        _, found = await scim.get("/Users?filter=" + q(f'userName eq "{username}"'))
        ids.append(found["Resources"][0]["id"])
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got.get("members", [])) == sorted(ids), got
    _, listed = await scim.get("/Groups?filter=" + q('displayName eq "Night Shift"'))
    assert sorted(m["value"] for m in listed["Resources"][0].get("members", [])) == sorted(ids), listed


async def test_import_repairs_a_group_adopted_before_its_members(aiohttp_client: Any, state: StaffState, tmp_path: Path) -> None:
    """The same order (team first, then its members, by lookups), then `scim-gateway import`: the team shows them."""
    seed(state)
    scim = Scim(await aiohttp_client(create_app(settings(tmp_path / "data"))), TOKEN, BASE)
    _, groups = await scim.get("/Groups?filter=" + q('displayName eq "Night Shift"'))
    [group] = groups["Resources"]
    ids = []
    for username in ("ann", "ben"):
        _, found = await scim.get("/Users?filter=" + q(f'userName eq "{username}"'))
        ids.append(found["Resources"][0]["id"])
    argv = ["import", "staff", "--config", str(MAPPING), "--data-dir", str(tmp_path / "data")]
    assert await asyncio.to_thread(main, argv) == 0
    _, got = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got.get("members", [])) == sorted(ids), got


# ---------------------------------------------------------------- check --connect


async def test_check_connect_fits_the_live_app(state: StaffState, capsys: pytest.CaptureFixture[str]) -> None:
    seed(state)
    assert await asyncio.to_thread(main, ["check", "--connect", str(MAPPING)]) == 0, capsys.readouterr().out
    assert "ok (app staff: User, Group; the live app fits)" in capsys.readouterr().out
