"""The shipped legacy SQL examples end to end: Entra's and Okta's sequences against real PostgreSQL and MariaDB.

Each test loads the example's DDL (mappings/sql/*.sql) into a fresh database,
serves the example mapping (mappings/legacy_*.yaml, DSN from the environment as
the mapping says), and after every step asserts the ROWS of the legacy tables,
read past the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, PATCH_URN, TOKEN, USER_URN, Scim
from tests.demo_rows import q
from tests.idp import MS_GROUP_URN, PASSWORD, entra_user, okta_user
from tests.proxy import TcpProxy
from tests.services import (
    MARIADB_HOST,
    MARIADB_PORT,
    PG_HOST,
    PG_PORT,
    create_mariadb_database,
    create_pg_database,
    drop_mariadb_database,
    drop_pg_database,
    load_schema,
    mariadb_url,
    pg_url,
    read_rows,
)

ROOT = Path(__file__).resolve().parents[2]
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"

# Per app: how its rows read as one normalized user (login, given, family, display, email, title, active, manager login).
USER_ROW = {
    "legacy_pg": """
        SELECT p.person_id, p.account_name, p.given_name, p.surname, p.full_name, e.email_address, p.job_title,
               p.enabled, m.account_name, p.deleted_at IS NOT NULL
        FROM hr_person p
        LEFT JOIN hr_person_email e ON e.person_id = p.person_id AND e.email_type = 'WORK'
        LEFT JOIN hr_person m ON m.person_id = p.manager_id
        WHERE lower(p.account_name) = lower(:login) ORDER BY p.person_id""",
    "legacy_mariadb": """
        SELECT usr_id, usr_login, usr_fname, usr_lname, usr_display, usr_email, usr_title,
               usr_active = 'Y', NULL, 0
        FROM usr WHERE usr_login = :login ORDER BY usr_id""",
}
GROUP_PAIRS = {
    "legacy_pg": """SELECT u.unit_name, p.account_name FROM hr_unit_member m
        JOIN hr_org_unit u ON u.unit_id = m.unit_id JOIN hr_person p ON p.person_id = m.person_id""",
    "legacy_mariadb": """SELECT g.grp_name, u.usr_login FROM usr_grp m
        JOIN grp g ON g.grp_id = m.grp_id JOIN usr u ON u.usr_id = m.usr_id""",
}
GROUPS = {
    "legacy_pg": "SELECT unit_name FROM hr_org_unit ORDER BY unit_id",
    "legacy_mariadb": "SELECT grp_name FROM grp ORDER BY grp_id",
}


@dataclass
class Legacy:
    """The served app and its database."""

    app: str
    dsn: str
    scim: Scim

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return await read_rows(self.dsn, sql, **params)

    async def user(self, login: str) -> dict[str, Any] | None:
        """The live (not soft-deleted) user row, normalized; None when there is none."""
        rows = [r for r in await self.rows(USER_ROW[self.app], login=login) if not r[9]]
        assert len(rows) <= 1, rows
        if not rows:
            return None
        keys = ("key", "login", "given", "family", "display", "email", "title", "active", "manager")
        row = dict(zip(keys, rows[0], strict=False))
        row["active"] = bool(row["active"])
        return row

    async def pairs(self) -> set[tuple[str, str]]:
        return {(g, u) for g, u in await self.rows(GROUP_PAIRS[self.app])}

    async def groups(self) -> list[str]:
        return [r[0] for r in await self.rows(GROUPS[self.app])]


async def load_ddl(app: str, database: str) -> None:
    """The example app's DDL (mappings/sql/APP.sql) into `database`."""
    script = (ROOT / "mappings" / "sql" / f"{app}.sql").read_text("utf-8")
    await load_schema("postgresql" if app == "legacy_pg" else "mariadb", database, script)


@asynccontextmanager
async def serve_legacy(
    app: str, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: TcpProxy | None = None
) -> AsyncIterator[Legacy]:
    """The example app's schema in a fresh database, served by a gateway (through `proxy` when given)."""
    if app == "legacy_pg":
        database = await create_pg_database()
        dsn = pg_url(database, "postgresql+asyncpg")
    else:
        database = await create_mariadb_database()
        dsn = mariadb_url(database)
    try:
        await load_ddl(app, database)
        env = app.upper()
        if proxy is not None:
            host, port = proxy.target
            monkeypatch.setenv(f"{env}_DSN", dsn.replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/"))
        else:
            monkeypatch.setenv(f"{env}_DSN", dsn)
        monkeypatch.setenv(f"{env}_SCIM_TOKEN", "the-mapping's-own-token")
        settings = GatewaySettings(
            mappings=[ROOT / "mappings" / f"{app}.yaml"], data_dir=tmp_path, extra_tokens={app: [SecretStr(TOKEN)]}
        )
        client = await aiohttp_client(create_app(settings))
        yield Legacy(app, dsn, Scim(client, base=f"/apps/{app}/scim/v2"))
        await client.close()
    finally:
        await (drop_pg_database if app == "legacy_pg" else drop_mariadb_database)(database)


@pytest.fixture(params=["legacy_pg", "legacy_mariadb"])
async def legacy(
    request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Legacy]:
    async with serve_legacy(str(request.param), aiohttp_client, tmp_path, monkeypatch) as served:
        yield served


@pytest.mark.parametrize("app", ["legacy_pg", "legacy_mariadb"])
async def test_the_database_going_away_is_503_and_loses_nothing_acknowledged(
    app: str, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = TcpProxy((PG_HOST, PG_PORT) if app == "legacy_pg" else (MARIADB_HOST, MARIADB_PORT))
    await proxy.start()
    try:
        async with serve_legacy(app, aiohttp_client, tmp_path, monkeypatch, proxy) as legacy:
            scim = legacy.scim
            resp, kept = await scim.post("/Users", entra_user("kept@contoso.com", "Kept", "Safe"))
            assert resp.status == 201, kept
            await proxy.stop()
            for method, path, body in (
                ("POST", "/Users", entra_user("lost@contoso.com", "Lost", "Never")),
                ("GET", f"/Users/{kept['id']}", None),
                (
                    "PATCH",
                    f"/Users/{kept['id']}",
                    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "X"}]},
                ),
                ("DELETE", f"/Users/{kept['id']}", None),
            ):
                resp, err = await scim.request(method, path, body)
                assert resp.status == 503, (method, path, err)
                assert int(resp.headers["Retry-After"]) > 0 and err["schemas"] == [ERROR_URN], err
            await proxy.start()  # the server is back: the pool heals, the IdP's retries go through
            resp, got = await scim.get(f"/Users/{kept['id']}")
            assert resp.status == 200 and got["title"] == "Engineer", got
            resp, lost = await scim.post("/Users", entra_user("lost@contoso.com", "Lost", "Never"))
            assert resp.status == 201, lost
            _, listed = await scim.get("/Users")
            assert sorted(u["userName"] for u in listed["Resources"]) == ["kept@contoso.com", "lost@contoso.com"]
            assert await legacy.user("kept@contoso.com") is not None and await legacy.user("lost@contoso.com") is not None
    finally:
        if proxy.serving:
            await proxy.stop()


# ---------------------------------------------------------------- Entra ID


async def test_entra_sequence(legacy: Legacy) -> None:
    scim, pg = legacy.scim, legacy.app == "legacy_pg"

    # Entra looks the user up first: nothing, as an empty list.
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Alice.Smith@Contoso.com"'))
    assert (resp.status, data["totalResults"]) == (200, 0)

    resp, alice = await scim.post("/Users", entra_user("Alice.Smith@Contoso.com", "Alice", "Smith"))
    assert resp.status == 201, alice
    row = await legacy.user("Alice.Smith@Contoso.com")
    assert row is not None
    assert {k: row[k] for k in ("login", "given", "family", "display", "email", "title", "active")} == {
        "login": "Alice.Smith@Contoso.com", "given": "Alice", "family": "Smith", "display": "Alice Smith",
        "email": "alice.smith@contoso.com", "title": "Engineer", "active": True,
    }  # fmt: skip
    if pg:
        assert row["key"] >= 10000  # drawn from hr_person_seq
        assert await legacy.rows("SELECT department FROM hr_person") == [("R&D",)]
        assert await legacy.rows("SELECT email_type, email_address FROM hr_person_email") == [("WORK", "alice.smith@contoso.com")]

    resp, found = await scim.get("/Users?filter=" + q('userName eq "alice.smith@contoso.com"'))
    assert resp.status == 200 and [r["id"] for r in found["Resources"]] == [alice["id"]]

    # Capitalised ops, a value-path email, the manager as a plain id string.
    resp, boss = await scim.post("/Users", entra_user("boss@contoso.com", "Big", "Boss"))
    assert resp.status == 201, boss
    operations = [
        {"op": "Replace", "path": "displayName", "value": "Alice S."},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "Alice.New@Contoso.com"},
    ]
    if pg:
        operations.append({"op": "Add", "path": f"{ENTERPRISE_URN}:manager", "value": boss["id"]})
    resp, data = await scim.patch(f"/Users/{alice['id']}", operations)
    assert resp.status == 200, data
    row = await legacy.user("Alice.Smith@Contoso.com")
    assert row is not None and (row["display"], row["email"], row["given"]) == ("Alice S.", "alice.new@contoso.com", "Alice")
    if pg:
        assert row["manager"] == "boss@contoso.com"
        # The work address was updated in place: still one WORK row for Alice.
        assert await legacy.rows("SELECT count(*) FROM hr_person_email WHERE person_id = :p", p=row["key"]) == [(1,)]

    # Entra disables with a string boolean.
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "False"}])
    assert resp.status == 200 and data["active"] is False, data
    assert (await legacy.user("Alice.Smith@Contoso.com") or {})["active"] is False
    resp, data = await scim.patch(f"/Users/{alice['id']}", [{"op": "Replace", "path": "active", "value": "True"}])
    assert resp.status == 200 and (await legacy.user("Alice.Smith@Contoso.com") or {})["active"] is True

    # Groups: created with a member (and Microsoft's schema URN), then Add / Remove by value list, then renamed.
    resp, group = await scim.post("/Groups", {
        "schemas": [GROUP_URN, MS_GROUP_URN], "externalId": "ext-eng", "displayName": "Engineering",
        "members": [{"value": alice["id"]}],
    })  # fmt: skip
    assert resp.status == 201, group
    assert await legacy.pairs() == {("Engineering", "Alice.Smith@Contoso.com")}
    resp, data = await scim.patch(f"/Groups/{group['id']}", [
        {"op": "Add", "path": "members", "value": [{"value": boss["id"]}]},
        {"op": "Remove", "path": "members", "value": [{"value": alice["id"]}]},
    ])  # fmt: skip
    assert resp.status == 200, data
    assert await legacy.pairs() == {("Engineering", "boss@contoso.com")}
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Replace", "path": "displayName", "value": "Platform"}])
    assert resp.status == 200, data
    assert await legacy.groups() == ["Platform"]

    # A duplicate group name is the app's unique key: 409 uniqueness, nothing written.
    resp, data = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "PLATFORM"})
    assert resp.status == 409 and data["scimType"] == "uniqueness", data
    assert await legacy.groups() == ["Platform"]

    # Deleting a user: PostgreSQL marks the row (soft delete), MariaDB removes it and its membership rows.
    resp, data = await scim.patch(f"/Groups/{group['id']}", [{"op": "Add", "path": "members", "value": [{"value": alice["id"]}]}])
    assert resp.status == 200, data
    resp, _ = await scim.delete(f"/Users/{alice['id']}")
    assert resp.status == 204
    assert await legacy.user("Alice.Smith@Contoso.com") is None
    assert await legacy.pairs() == {("Platform", "boss@contoso.com")} | (
        {("Platform", "Alice.Smith@Contoso.com")} if pg else set()
    )  # the app's own rows stay behind a soft delete ...
    resp, data = await scim.get(f"/Groups/{group['id']}")
    assert [m["value"] for m in data.get("members", [])] == [boss["id"]]  # ... but she is no member any more
    if pg:
        assert await legacy.rows("SELECT count(*) FROM hr_person WHERE deleted_at IS NOT NULL") == [(1,)]
        assert await legacy.rows("SELECT count(*) FROM hr_person_email WHERE email_address = 'alice.new@contoso.com'") == [(1,)]
    resp, data = await scim.get(f"/Users/{alice['id']}")
    assert resp.status == 404
    resp, data = await scim.get("/Users?filter=" + q('userName eq "Alice.Smith@Contoso.com"'))
    assert data["totalResults"] == 0

    # She comes back: a new account (on PostgreSQL the unique index covers the living only).
    resp, again = await scim.post("/Users", entra_user("Alice.Smith@Contoso.com", "Alice", "Smith"))
    assert resp.status == 201, again
    assert again["id"] != alice["id"]
    row = await legacy.user("Alice.Smith@Contoso.com")
    assert row is not None and row["active"] is True

    resp, _ = await scim.delete(f"/Groups/{group['id']}")
    assert resp.status == 204
    assert await legacy.groups() == [] and await legacy.pairs() == set()


# ---------------------------------------------------------------- Okta


async def test_okta_sequence(legacy: Legacy) -> None:
    scim, pg = legacy.scim, legacy.app == "legacy_pg"

    resp, data = await scim.get("/Users?filter=" + q('userName eq "isaac.brock@okta.example"') + "&startIndex=1&count=100")
    assert (resp.status, data["totalResults"]) == (200, 0)

    resp, user = await scim.post("/Users", okta_user("Isaac.Brock@Okta.example", "Isaac", "Brock"))
    assert resp.status == 201, user
    assert "password" not in user
    row = await legacy.user("isaac.brock@okta.example")
    assert row is not None
    assert (row["login"], row["given"], row["family"], row["display"], row["email"], row["active"]) == (
        "Isaac.Brock@Okta.example", "Isaac", "Brock", "Isaac Brock", "isaac.brock@okta.example", True)  # fmt: skip
    dump = repr(await legacy.rows("SELECT * FROM hr_person" if pg else "SELECT * FROM usr"))
    assert PASSWORD not in dump

    # PUT replaces the whole user: new values written, what the body leaves out cleared.
    body = okta_user("Isaac.Brock@Okta.example", "Isaac", "Brocke", title="Director", id=user["id"])
    body["emails"] = [{"primary": True, "value": "Isaac.B@Okta.example", "type": "work"}]
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    row = await legacy.user("isaac.brock@okta.example")
    assert row is not None and (row["family"], row["title"], row["email"]) == ("Brocke", "Director", "isaac.b@okta.example")
    body = {"schemas": [USER_URN], "id": user["id"], "userName": "Isaac.Brock@Okta.example", "active": True,
            "name": {"givenName": "Only"}, "password": PASSWORD}  # fmt: skip
    resp, data = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status == 200, data
    row = await legacy.user("isaac.brock@okta.example")
    assert row is not None and (row["given"], row["family"], row["title"], row["email"]) == ("Only", None, None, None)
    if pg:  # a cleared child field is a deleted child row
        assert await legacy.rows("SELECT count(*) FROM hr_person_email") == [(0,)]

    # Okta deactivates with a path-less PATCH, and reactivates the same way.
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": False}}])
    assert resp.status == 200 and data["active"] is False, data
    assert (await legacy.user("isaac.brock@okta.example") or {})["active"] is False
    if not pg:
        assert await legacy.rows("SELECT usr_active FROM usr") == [("N",)]
    resp, data = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "value": {"active": True}}])
    assert resp.status == 200 and (await legacy.user("isaac.brock@okta.example") or {})["active"] is True

    # A second account with the same login, in another case, is the app's unique key: 409.
    resp, data = await scim.post("/Users", okta_user("ISAAC.BROCK@okta.example", "Dup", "Licate"))
    assert resp.status == 409 and data["scimType"] == "uniqueness", data

    # Group Push: POST with members, replace members, add, remove by value filter, rename, PUT.
    others = []
    for name in ("b", "c", "d"):
        resp, other = await scim.post("/Users", okta_user(f"{name}@okta.example", name.upper(), "Member"))
        assert resp.status == 201, other
        others.append(other)
    b, c, d = others
    resp, group = await scim.post("/Groups", {"schemas": [GROUP_URN], "displayName": "Okta Push",
                                              "members": [{"value": user["id"], "display": "isaac"}]})  # fmt: skip
    assert resp.status == 201, group
    gid = group["id"]
    assert await legacy.pairs() == {("Okta Push", "Isaac.Brock@Okta.example")}
    resp, data = await scim.patch(f"/Groups/{gid}", [
        {"op": "replace", "path": "members", "value": [{"value": b["id"], "display": "b"}, {"value": c["id"], "display": "c"}]},
    ])  # fmt: skip
    assert resp.status == 200, data
    assert await legacy.pairs() == {("Okta Push", "b@okta.example"), ("Okta Push", "c@okta.example")}
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "add", "path": "members", "value": [{"value": d["id"]}]}])
    assert resp.status == 200, data
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "remove", "path": f'members[value eq "{c["id"]}"]'}])
    assert resp.status == 200, data
    assert await legacy.pairs() == {("Okta Push", "b@okta.example"), ("Okta Push", "d@okta.example")}
    resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "value": {"id": gid, "displayName": "Okta Renamed"}}])
    assert resp.status == 200, data
    assert await legacy.groups() == ["Okta Renamed"]
    resp, data = await scim.put(f"/Groups/{gid}", {"schemas": [GROUP_URN], "id": gid, "displayName": "Okta Renamed",
                                                    "members": [{"value": user["id"]}]})  # fmt: skip
    assert resp.status == 200, data
    assert await legacy.pairs() == {("Okta Renamed", "Isaac.Brock@Okta.example")}

    resp, _ = await scim.delete(f"/Groups/{gid}")
    assert resp.status == 204
    assert await legacy.groups() == [] and await legacy.pairs() == set()
    resp, _ = await scim.delete(f"/Users/{user['id']}")
    assert resp.status == 204
    assert await legacy.user("isaac.brock@okta.example") is None


# ---------------------------------------------------------------- the named statements of the PostgreSQL example


@pytest.mark.parametrize("legacy", ["legacy_pg"], indirect=True)  # the MariaDB example declares no statements
async def test_pg_example_statements_call_the_apps_procedures(legacy: Legacy, tmp_path: Path) -> None:
    from gateway.connectors import AppContext, load_registry
    from gateway.mapping.compile import load_mapping

    resp, user = await legacy.scim.post("/Users", okta_user("locked@okta.example", "Lock", "Ed"))
    assert resp.status == 201, user
    key = (await legacy.user("locked@okta.example") or {})["key"]
    compiled = load_mapping(ROOT / "mappings" / "legacy_pg.yaml", load_registry())
    connector = compiled.connector_cls(compiled.connector_config, AppContext("legacy_pg", tmp_path))
    assert connector.caps.actions == {"lock", "unlock"}
    await connector.open()
    try:
        await connector.action("User", str(key), "lock")
        assert await legacy.rows("SELECT locked_flag FROM hr_person") == [("Y",)]
        await connector.action("User", str(key), "unlock")
    finally:
        await connector.close()
    assert await legacy.rows("SELECT locked_flag FROM hr_person") == [("N",)]
    assert await legacy.rows("SELECT what FROM hr_audit ORDER BY audit_id") == [("locked",), ("unlocked",)]
