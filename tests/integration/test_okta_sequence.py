"""Okta's provisioning sequence (users and Group Push), end to end, in the shapes Okta really sends.

Okta looks users up with startIndex/count, PUTs the whole user back (password
included), deactivates with a path-less PATCH, and pushes groups with POST
(members included), PATCH (replace / add / remove by value filter), and PUT.
Every step asserts the demo HR database's rows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GROUP_URN, USER_URN, Scim
from tests.demo_rows import count, employee, q, team, team_pairs
from tests.idp import PASSWORD, okta_user

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store

LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"


# ---------------------------------------------------------------- helpers


async def create_user(scim: Scim, user_name: str, given: str = "Test", family: str = "User") -> dict[str, Any]:
    resp, data = await scim.post("/Users", okta_user(user_name, given, family))
    assert resp.status == 201, data
    return data


def assert_no_password(obj: Any) -> None:
    """password appears nowhere in a response (any case of the key, any nesting) and neither does its value."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert key.lower() != "password", obj
            assert_no_password(value)
    elif isinstance(obj, list):
        for value in obj:
            assert_no_password(value)
    else:
        assert obj != PASSWORD


def store_dump(data_dir: Path, store_overrides: dict[str, Any]) -> bytes:
    """Everything the gateway's store holds, as bytes: its SQLite files, or its PostgreSQL tables as text."""
    if "store_url" not in store_overrides:
        files = [p for p in data_dir.iterdir() if p.name.startswith("gateway.db")]
        assert files, list(data_dir.iterdir())
        return b"".join(p.read_bytes() for p in files)
    import asyncpg

    async def dump() -> bytes:
        conn = await asyncpg.connect(store_overrides["store_url"].get_secret_value())
        try:
            rows = [r for t in ("resources", "members", "journal") for r in await conn.fetch(f"SELECT t::text FROM {t} t")]
        finally:
            await conn.close()
        assert rows
        return "\n".join(r[0] for r in rows).encode()

    return _run(dump())


def _run(coro: Any) -> Any:
    """Run a coroutine to its end from inside a test's running loop (on a thread of its own)."""
    import asyncio
    import threading

    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return out[0]


def assert_password_not_stored(data_dir: Path, demo_db: sqlite3.Connection, store_overrides: dict[str, Any]) -> None:
    """Neither the gateway's store nor the app's rows hold the password."""
    assert PASSWORD.encode() not in store_dump(data_dir, store_overrides), "the password is in the store"
    for row in demo_db.execute("SELECT * FROM employees"):
        assert PASSWORD not in [v for v in tuple(row)], dict(row)


# ---------------------------------------------------------------- users


async def test_okta_lookup_with_paging_params_empty(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "nobody@okta.example"') + "&startIndex=1&count=100")
    assert resp.status == 200, data
    assert data["schemas"] == [LIST_URN]
    assert data["totalResults"] == 0
    assert data["startIndex"] == 1
    assert data.get("Resources", []) == []


async def test_okta_create_with_password_get_and_lookup(
    scim: Scim, demo_db: sqlite3.Connection, data_dir: Path, store_overrides: dict[str, Any]
) -> None:
    resp, user = await scim.post("/Users", okta_user("Isaac.Brock@Okta.example", "Isaac", "Brock"))
    assert resp.status == 201, user
    assert_no_password(user)
    assert user["userName"] == "Isaac.Brock@Okta.example"
    assert user["active"] is True
    assert user["name"] == {"givenName": "Isaac", "familyName": "Brock"}
    row = employee(demo_db, "isaac.brock@okta.example")
    assert (row["login"], row["first_nm"], row["last_nm"], row["display_nm"], row["mail"], row["status"]) == (
        "Isaac.Brock@Okta.example",
        "Isaac",
        "Brock",
        "Isaac Brock",
        "isaac.brock@okta.example",
        "A",
    )

    resp, got = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200, got
    assert_no_password(got)
    assert got["id"] == user["id"]
    assert got["userName"] == "Isaac.Brock@Okta.example"
    assert got["emails"][0]["value"] == "isaac.brock@okta.example"

    resp, found = await scim.get("/Users?filter=" + q('userName eq "isaac.brock@okta.example"') + "&startIndex=1&count=100")
    assert resp.status == 200
    assert found["totalResults"] == 1
    assert found["itemsPerPage"] == 1
    assert found["Resources"][0]["id"] == user["id"]
    assert_no_password(found)
    # Even asked for by name, password is never returned.
    resp, data = await scim.get(f"/Users/{user['id']}?attributes=password,userName")
    assert resp.status == 200
    assert_no_password(data)
    assert data["userName"] == "Isaac.Brock@Okta.example"
    assert_password_not_stored(data_dir, demo_db, store_overrides)


async def test_okta_put_full_replace_with_password(
    scim: Scim, demo_db: sqlite3.Connection, data_dir: Path, store_overrides: dict[str, Any]
) -> None:
    user = await create_user(scim, "put.me@okta.example", "Put", "Me")
    emp_no = employee(demo_db, "put.me@okta.example")["emp_no"]
    body = okta_user("put.me@okta.example", "Putnam", "Mee", title="Director")
    body["id"] = user["id"]
    body["emails"] = [{"primary": True, "value": "Put.Me2@Okta.example", "type": "work"}]
    body["meta"] = user["meta"]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert_no_password(data)
    assert data["id"] == user["id"]
    assert data["name"] == {"givenName": "Putnam", "familyName": "Mee"}
    assert data["title"] == "Director"
    row = employee(demo_db, "put.me@okta.example")
    assert row["emp_no"] == emp_no
    assert (row["first_nm"], row["last_nm"], row["display_nm"], row["mail"], row["job_title"], row["status"]) == (
        "Putnam",
        "Mee",
        "Putnam Mee",
        "put.me2@okta.example",
        "Director",
        "A",
    )
    assert count(demo_db, "employees") == 1

    # PUT replaces: what the body leaves out is cleared in the app.
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
    assert_no_password(data)
    assert "title" not in data
    assert "emails" not in data
    row = employee(demo_db, "put.me@okta.example")
    assert (row["first_nm"], row["last_nm"], row["job_title"], row["mail"], row["display_nm"]) == ("Only", None, None, None, None)
    assert_password_not_stored(data_dir, demo_db, store_overrides)


async def test_okta_password_change_by_patch_is_accepted_and_not_stored(
    scim: Scim, demo_db: sqlite3.Connection, data_dir: Path, store_overrides: dict[str, Any]
) -> None:
    user = await create_user(scim, "pw.patch@okta.example")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"password": PASSWORD}}])
    assert resp.status == 200, data
    assert_no_password(data)
    assert_password_not_stored(data_dir, demo_db, store_overrides)


async def test_okta_deactivate_with_pathless_patch(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "leaving@okta.example", "Lea", "Ving")
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    assert data["id"] == user["id"]
    assert data["active"] is False
    assert data["userName"] == "leaving@okta.example"
    assert data["name"] == {"givenName": "Lea", "familyName": "Ving"}
    row = employee(demo_db, "leaving@okta.example")
    assert row["status"] == "I"
    assert row["first_nm"] == "Lea"
    # Okta reactivates the same way.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": True}}])
    assert resp.status == 200, data
    assert data["active"] is True
    assert employee(demo_db, "leaving@okta.example")["status"] == "A"


async def test_okta_deactivate_with_put_active_false(scim: Scim, demo_db: sqlite3.Connection) -> None:
    user = await create_user(scim, "put.off@okta.example", "Put", "Off")
    body = okta_user("put.off@okta.example", "Put", "Off", active=False)
    body["id"] = user["id"]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert data["active"] is False
    assert employee(demo_db, "put.off@okta.example")["status"] == "I"


# ---------------------------------------------------------------- Group Push


async def test_okta_group_push_sequence(scim: Scim, demo_db: sqlite3.Connection) -> None:
    a = await create_user(scim, "a@okta.example")
    b = await create_user(scim, "b@okta.example")
    c = await create_user(scim, "c@okta.example")
    d = await create_user(scim, "d@okta.example")

    # Push: create with members (Okta sends value + display).
    resp, group = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP_URN],
            "displayName": "Okta Pushed",
            "members": [{"value": a["id"], "display": "a@okta.example"}, {"value": b["id"], "display": "b@okta.example"}],
        },
    )
    assert resp.status == 201, group
    assert resp.headers["Location"] == group["meta"]["location"]
    assert {m["value"] for m in group["members"]} == {a["id"], b["id"]}
    assert team_pairs(demo_db) == {("Okta Pushed", "a@okta.example"), ("Okta Pushed", "b@okta.example")}
    gid = group["id"]
    team_id = team(demo_db, "Okta Pushed")["team_id"]

    # Okta's GET of the group.
    resp, got = await scim.get(f"/Groups/{gid}")
    assert resp.status == 200
    assert got["displayName"] == "Okta Pushed"
    assert {m["value"] for m in got["members"]} == {a["id"], b["id"]}

    # PATCH replace the whole member list.
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
    assert team_pairs(demo_db) == {("Okta Pushed", "b@okta.example"), ("Okta Pushed", "c@okta.example")}

    # PATCH add.
    resp, data = await scim.patch(
        f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": d["id"], "display": "d"}]}]
    )
    assert resp.status == 200, data
    assert team_pairs(demo_db) == {
        ("Okta Pushed", "b@okta.example"),
        ("Okta Pushed", "c@okta.example"),
        ("Okta Pushed", "d@okta.example"),
    }

    # PATCH remove by value filter: only that member.
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert {m["value"] for m in data["members"]} == {b["id"], d["id"]}
    assert team_pairs(demo_db) == {("Okta Pushed", "b@okta.example"), ("Okta Pushed", "d@okta.example")}

    # Removing one who is not a member any more succeeds and changes nothing (Okta retries).
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert count(demo_db, "team_members") == 2

    # Okta's rename: path-less replace echoing the id.
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert data["id"] == gid
    assert data["displayName"] == "Okta Renamed"
    assert team(demo_db, "Okta Renamed")["team_id"] == team_id
    assert team_pairs(demo_db) == {("Okta Renamed", "b@okta.example"), ("Okta Renamed", "d@okta.example")}

    # PUT with displayName + members replaces both.
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
    assert data["displayName"] == "Okta Final"
    assert {m["value"] for m in data["members"]} == {a["id"], d["id"]}
    assert team(demo_db, "Okta Final")["team_id"] == team_id
    assert count(demo_db, "teams") == 1
    assert team_pairs(demo_db) == {("Okta Final", "a@okta.example"), ("Okta Final", "d@okta.example")}

    # DELETE.
    resp, body = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert body is None
    assert count(demo_db, "teams") == 0
    assert count(demo_db, "employees") == 4
    resp, _ = await scim.get(f"/Groups/{gid}")
    assert resp.status == 404


async def test_okta_group_put_with_empty_members_empties_the_group(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """Okta pushes a group whose last member left as PUT with `members: []`."""
    a = await create_user(scim, "a@okta.example")
    b = await create_user(scim, "b@okta.example")
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Emptied", "members": [{"value": a["id"]}, {"value": b["id"]}]}
    )
    assert resp.status == 201, group
    assert count(demo_db, "team_members") == 2
    gid = group["id"]
    resp, data = await scim.put(f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Emptied", "members": []})
    assert resp.status == 200, data
    assert data.get("members", []) == []
    assert count(demo_db, "team_members") == 0
    resp, data = await scim.get(f"/Groups/{gid}")
    assert data.get("members", []) == []
    resp, data = await scim.get(f"/Users/{a['id']}")
    assert data.get("groups", []) == []


async def test_okta_group_patch_replace_members_with_empty_list(scim: Scim, demo_db: sqlite3.Connection) -> None:
    a = await create_user(scim, "a@okta.example")
    resp, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Cleared", "members": [{"value": a["id"]}]})
    assert resp.status == 201, group
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "replace", "path": "members", "value": []}])
    assert resp.status == 200, data
    assert data.get("members", []) == []
    assert count(demo_db, "team_members") == 0


async def test_okta_full_user_sequence(
    scim: Scim, demo_db: sqlite3.Connection, data_dir: Path, store_overrides: dict[str, Any]
) -> None:
    resp, data = await scim.get("/Users?filter=" + q('userName eq "seq@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)
    resp, user = await scim.post("/Users", okta_user("seq@okta.example", "Seq", "Uence"))
    assert resp.status == 201, user
    assert employee(demo_db, "seq@okta.example")["status"] == "A"
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200 and got["userName"] == "seq@okta.example"
    body = okta_user("seq@okta.example", "Sequel", "Uence")
    body["id"] = user["id"]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    assert employee(demo_db, "seq@okta.example")["first_nm"] == "Sequel"
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200, data
    row = employee(demo_db, "seq@okta.example")
    assert (row["first_nm"], row["status"]) == ("Sequel", "I")
    # Okta never deletes users by default; the user stays findable and inactive.
    resp, data = await scim.get("/Users?filter=" + q('userName eq "seq@okta.example"') + "&startIndex=1&count=100")
    assert data["totalResults"] == 1
    assert data["Resources"][0]["active"] is False
    assert_password_not_stored(data_dir, demo_db, store_overrides)
