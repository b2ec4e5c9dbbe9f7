"""The mapping language end to end on real SQLite apps: every feature asserted in the app's rows."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.http.keys import APPS
from gateway.settings import GatewaySettings
from tests.conftest import GROUP_URN, PATCH_URN, TOKEN, USER_URN, Scim
from tests.demo_rows import q

HERE = Path(__file__).parent
ACME_URN = "urn:example:params:scim:schemas:extension:acme:2.0:User"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

ACME_DDL = """
CREATE TABLE staff (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE COLLATE NOCASE, given TEXT, family TEXT,
  dept_code TEXT, cost_center TEXT, hired TEXT, badges TEXT, mailbox TEXT, source TEXT, enabled INTEGER);
CREATE TABLE crews (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, member_ids TEXT);
"""
LEASE_DDL = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE COLLATE NOCASE, title TEXT);
CREATE TABLE squads (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE squad_members (squad_id INTEGER NOT NULL, account_id INTEGER NOT NULL, PRIMARY KEY (squad_id, account_id));
"""
ROTA_DDL = """
CREATE TABLE staff (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE COLLATE NOCASE, team_ids TEXT);
CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
"""
CREWS_DDL = """
CREATE TABLE people (id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE COLLATE NOCASE, title TEXT, team_ids TEXT);
CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name, ddl in (("acme.db", ACME_DDL), ("crews.db", CREWS_DDL), ("lease.db", LEASE_DDL), ("rota.db", ROTA_DDL)):
        db = sqlite3.connect(d / name)
        db.executescript(ddl)
        db.close()
    return d


@pytest.fixture
async def client(aiohttp_client: Any, data_dir: Path) -> AsyncIterator[TestClient]:
    settings = GatewaySettings(
        mappings=[HERE / "acme.yaml", HERE / "crews.yaml", HERE / "lease.yaml", HERE / "rota.yaml"],
        data_dir=data_dir,
        extra_tokens={app: [SecretStr(TOKEN)] for app in ("acme", "crews", "lease", "rota")},
    )
    yield await aiohttp_client(create_app(settings))


@pytest.fixture
def acme(client: TestClient) -> Scim:
    return Scim(client, base="/apps/acme/scim/v2")


@pytest.fixture
def crews(client: TestClient) -> Scim:
    return Scim(client, base="/apps/crews/scim/v2")


@pytest.fixture
def lease(client: TestClient) -> Scim:
    return Scim(client, base="/apps/lease/scim/v2")


def rows(data_dir: Path, db: str, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(data_dir / db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def execute(data_dir: Path, db: str, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(data_dir / db)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def zoe() -> dict[str, Any]:
    return {
        "schemas": [USER_URN, ENT, ACME_URN],
        "userName": "zoe",
        "name": {"givenName": "Zoë", "familyName": "Ñandú"},
        "active": True,
        ENT: {"department": "Engineering"},
        ACME_URN: {"costCenter": "CC-7", "hireDate": "2024-03-01T00:00:00Z", "badges": ["red", "blue"]},
    }


async def test_transforms_lookups_dates_and_computed_fields_reach_the_app(acme: Scim, data_dir: Path) -> None:
    resp, user = await acme.post("/Users", zoe())
    assert resp.status == 201, user
    [row] = rows(data_dir, "acme.db", "SELECT * FROM staff")
    assert row["dept_code"] == "E02"  # lookup table
    assert row["hired"] == "01.03.2024"  # date format
    assert row["badges"] == "red,blue"  # join
    assert row["mailbox"] == "zoe.nandu"  # computed from the names, accents folded
    assert row["source"] == "scim"  # constant
    assert row["cost_center"] == "CC-7"
    # ...and back: what the IdP reads is SCIM again
    assert user[ENT]["department"] == "Engineering"
    assert user[ACME_URN] == {"costCenter": "CC-7", "hireDate": "2024-03-01T00:00:00Z", "badges": ["red", "blue"]}


async def test_a_value_missing_from_a_lookup_is_a_clear_400_and_changes_nothing(acme: Scim, data_dir: Path) -> None:
    body = zoe()
    body[ENT]["department"] = "Marketing"
    resp, err = await acme.post("/Users", body)
    assert resp.status == 400 and err["scimType"] == "invalidValue"
    assert "'Marketing' is not in lookup table 'departments'" in err["detail"]
    assert rows(data_dir, "acme.db", "SELECT * FROM staff") == []


async def test_the_custom_schema_is_discoverable(acme: Scim) -> None:
    _, schema = await acme.get(f"/Schemas/{ACME_URN}")
    assert schema["name"] == "AcmeUser"
    assert {a["name"]: a["type"] for a in schema["attributes"]} == {
        "costCenter": "string",
        "hireDate": "dateTime",
        "badges": "string",
    }
    _, rtype = await acme.get("/ResourceTypes/User")
    assert {"schema": ACME_URN, "required": False} in rtype["schemaExtensions"]


async def test_custom_extension_attributes_filter_and_patch(acme: Scim, data_dir: Path) -> None:
    _, user = await acme.post("/Users", zoe())
    _, found = await acme.get("/Users?filter=" + q(f'{ACME_URN}:costCenter eq "CC-7"'))
    assert [u["id"] for u in found["Resources"]] == [user["id"]]
    resp, patched = await acme.patch(
        f"/Users/{user['id']}", [{"op": "replace", "path": f"{ACME_URN}:costCenter", "value": "CC-9"}]
    )
    assert resp.status == 200 and patched[ACME_URN]["costCenter"] == "CC-9"
    assert rows(data_dir, "acme.db", "SELECT cost_center FROM staff")[0][0] == "CC-9"


async def test_pushdown_finds_and_adopts_what_only_the_app_knows(acme: Scim, data_dir: Path) -> None:
    execute(data_dir, "acme.db", "INSERT INTO staff (login, given, dept_code, enabled) VALUES ('Legacy.Lee', 'Lee', 'S01', 1)")
    _, found = await acme.get("/Users?filter=" + q('userName eq "legacy.lee"'))
    assert found["totalResults"] == 1
    [lee] = found["Resources"]
    assert lee["userName"] == "Legacy.Lee" and lee[ENT]["department"] == "Sales"
    # an edit made in the app is in the next pushed-down answer (not only after a write)
    execute(data_dir, "acme.db", "UPDATE staff SET given = 'Leona' WHERE login = 'Legacy.Lee'")
    _, found = await acme.get("/Users?filter=" + q('userName eq "Legacy.Lee"'))
    assert found["Resources"][0]["name"]["givenName"] == "Leona"
    assert found["Resources"][0]["id"] == lee["id"], "the same resource, not a second adoption"


async def test_group_field_membership_is_the_id_list_on_the_group_row(acme: Scim, data_dir: Path) -> None:
    ids = []
    for name in ("ann", "bob", "cy"):
        _, u = await acme.post("/Users", {"schemas": [USER_URN], "userName": name})
        ids.append(u["id"])
    natives = [r["id"] for r in rows(data_dir, "acme.db", "SELECT id FROM staff ORDER BY id")]
    resp, group = await acme.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Crew", "members": [{"value": ids[0]}]})
    assert resp.status == 201, group
    assert rows(data_dir, "acme.db", "SELECT member_ids FROM crews")[0][0] == str(natives[0])
    resp, _ = await acme.request(
        "PATCH",
        f"/Groups/{group['id']}",
        {
            "schemas": [PATCH_URN],
            "Operations": [
                {"op": "add", "path": "members", "value": [{"value": ids[1]}, {"value": ids[2]}]},
                {"op": "remove", "path": f'members[value eq "{ids[0]}"]'},
            ],
        },
    )
    assert resp.status == 200
    assert rows(data_dir, "acme.db", "SELECT member_ids FROM crews")[0][0] == f"{natives[1]},{natives[2]}"
    _, got = await acme.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in got["members"]) == sorted(ids[1:])


async def test_user_field_membership_is_the_group_list_on_each_user_row(crews: Scim, data_dir: Path) -> None:
    _, ann = await crews.post("/Users", {"schemas": [USER_URN], "userName": "ann"})
    _, bob = await crews.post("/Users", {"schemas": [USER_URN], "userName": "bob"})
    resp, red = await crews.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Red", "members": [{"value": ann["id"]}]})
    assert resp.status == 201, red
    _, blue = await crews.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Blue", "members": [{"value": ann["id"]}, {"value": bob["id"]}]}
    )
    teams = {r["name"]: str(r["id"]) for r in rows(data_dir, "crews.db", "SELECT id, name FROM teams")}
    people = {r["login"]: r["team_ids"] for r in rows(data_dir, "crews.db", "SELECT login, team_ids FROM people")}
    assert people == {"ann": f"{teams['Red']},{teams['Blue']}", "bob": teams["Blue"]}
    resp, _ = await crews.patch(f"/Groups/{blue['id']}", [{"op": "remove", "path": f'members[value eq "{ann["id"]}"]'}])
    assert resp.status == 200
    people = {r["login"]: r["team_ids"] for r in rows(data_dir, "crews.db", "SELECT login, team_ids FROM people")}
    assert people == {"ann": teams["Red"], "bob": teams["Blue"]}
    _, got = await crews.get(f"/Users/{ann['id']}")
    assert [g["display"] for g in got["groups"]] == ["Red"]


async def test_cached_reads_answer_from_the_gateway_copy(crews: Scim, data_dir: Path) -> None:
    _, ann = await crews.post("/Users", {"schemas": [USER_URN], "userName": "ann", "title": "Clerk"})
    execute(data_dir, "crews.db", "UPDATE people SET title = 'Changed in app' WHERE login = 'ann'")
    _, got = await crews.get(f"/Users/{ann['id']}")
    assert got["title"] == "Clerk", "reads: cached never asks the app"
    resp, patched = await crews.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200 and patched["title"] == "Lead"
    assert rows(data_dir, "crews.db", "SELECT title FROM people")[0][0] == "Lead"


async def test_deactivate_by_delete_removes_the_app_record_and_reactivation_recreates_it(lease: Scim, data_dir: Path) -> None:
    def accounts() -> dict[str, tuple[int, str | None]]:
        return {r["login"]: (r["id"], r["title"]) for r in rows(data_dir, "lease.db", "SELECT * FROM accounts")}

    def squad_logins() -> list[str]:
        return [
            r[0] for r in rows(data_dir, "lease.db", "SELECT a.login FROM squad_members m JOIN accounts a ON a.id = m.account_id")
        ]

    _, ann = await lease.post("/Users", {"schemas": [USER_URN], "userName": "ann", "title": "Clerk", "active": True})
    _, squad = await lease.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Night", "members": [{"value": ann["id"]}]})
    assert squad_logins() == ["ann"]

    # Entra's deactivation: the app's record goes, the SCIM resource stays (inactive, still in its group)
    resp, got = await lease.patch(f"/Users/{ann['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200 and got["active"] is False
    assert accounts() == {} and squad_logins() == []
    _, got = await lease.get(f"/Users/{ann['id']}")
    assert got["active"] is False and got["title"] == "Clerk" and [g["value"] for g in got["groups"]] == [squad["id"]]
    _, found = await lease.get("/Users?filter=" + q('userName eq "ann"'))
    assert [u["id"] for u in found["Resources"]] == [ann["id"]]

    # a change while inactive lives in the gateway's copy only...
    resp, got = await lease.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "title", "value": "Lead"}])
    assert resp.status == 200 and got["title"] == "Lead" and accounts() == {}
    # ...and reactivation creates the record again, with it, back in its group
    resp, got = await lease.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200 and got["active"] is True and got["id"] == ann["id"]
    assert accounts()["ann"][1] == "Lead"
    assert squad_logins() == ["ann"]
    resp, got = await lease.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "title", "value": "Chief"}])
    assert accounts()["ann"][1] == "Chief", "writes reach the re-created record"


async def test_an_inactive_create_makes_no_app_record_until_activated(lease: Scim, data_dir: Path) -> None:
    _, bob = await lease.post("/Users", {"schemas": [USER_URN], "userName": "bob", "active": False})
    assert rows(data_dir, "lease.db", "SELECT * FROM accounts") == []
    resp, _ = await lease.post("/Users", {"schemas": [USER_URN], "userName": "BOB"})
    assert resp.status == 409, "the name is held while inactive"
    await lease.patch(f"/Users/{bob['id']}", [{"op": "replace", "value": {"active": True}}])
    assert [r["login"] for r in rows(data_dir, "lease.db", "SELECT * FROM accounts")] == ["bob"]
    await lease.patch(f"/Users/{bob['id']}", [{"op": "replace", "value": {"active": False}}])
    resp, _ = await lease.delete(f"/Users/{bob['id']}")
    assert resp.status == 204
    resp, _ = await lease.get(f"/Users/{bob['id']}")
    assert resp.status == 404


async def test_a_deactivation_by_delete_cut_short_is_finished_by_recovery(
    lease: Scim, client: TestClient, aiohttp_client: Any, data_dir: Path
) -> None:
    _, ann = await lease.post("/Users", {"schemas": [USER_URN], "userName": "ann"})
    runtime = client.app[APPS]["lease"]
    store, connector = runtime.provisioner.store, runtime.connector
    row = await store.get("lease", "User", ann["id"])
    assert row is not None and row.native_id is not None
    await store.begin_write("lease", "User", ann["id"], "update", if_match=row.version, payload={"relink": "drop"})
    await connector.delete("User", row.native_id)  # the crash comes here: the app's record is gone, nothing settled
    await client.close()
    settings = GatewaySettings(
        mappings=[HERE / "acme.yaml", HERE / "crews.yaml", HERE / "lease.yaml"],
        data_dir=data_dir,
        extra_tokens={"lease": [SecretStr(TOKEN)]},
    )
    again = Scim(await aiohttp_client(create_app(settings)), base="/apps/lease/scim/v2")
    resp, got = await again.get(f"/Users/{ann['id']}")
    assert resp.status == 200 and got["active"] is False, got
    resp, got = await again.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200 and [r["login"] for r in rows(data_dir, "lease.db", "SELECT login FROM accounts")] == ["ann"]


async def test_reactivation_restores_the_group_list_kept_on_the_user_record(client: TestClient, data_dir: Path) -> None:
    """deactivate via delete + membership via user_field: the re-created record carries its teams again."""
    rota = Scim(client, base="/apps/rota/scim/v2")
    _, ann = await rota.post("/Users", {"schemas": [USER_URN], "userName": "ann"})
    _, red = await rota.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Red", "members": [{"value": ann["id"]}]})
    _, blue = await rota.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Blue", "members": [{"value": ann["id"]}]})
    teams = {r["name"]: str(r["id"]) for r in rows(data_dir, "rota.db", "SELECT id, name FROM teams")}
    await rota.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": False}])
    assert rows(data_dir, "rota.db", "SELECT * FROM staff") == []
    resp, got = await rota.patch(f"/Users/{ann['id']}", [{"op": "replace", "path": "active", "value": True}])
    assert resp.status == 200, got
    [row] = rows(data_dir, "rota.db", "SELECT login, team_ids FROM staff")
    assert row["login"] == "ann" and sorted(row["team_ids"].split(",")) == sorted([teams["Red"], teams["Blue"]])
    assert sorted(g["value"] for g in got["groups"]) == sorted([red["id"], blue["id"]])
