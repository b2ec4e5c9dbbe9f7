"""SQL injection: classic payloads in every mapped string attribute land verbatim, filters match only verbatim.

For the SQL apps on SQLite (demo), PostgreSQL (legacy_pg) and MariaDB (legacy_mariadb), each on the
SQLite and the PostgreSQL correlation store (`both_stores`): users and groups are created (POST) with
every mapped string attribute set to a payload, then changed (PATCH) to another payload; after each
step the app's rows, read straight from its database, hold the values verbatim. Filters (eq, and
co / sw / ew with `%` and `_`) are answered both by the store and by the app (the mapping copies
here push userName and title down to the app) and match exactly the rows whose value matches
verbatim, case-insensitively as SCIM says. Every table is intact at the end, in the app and the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.settings import GatewaySettings
from tests.conftest import ENTERPRISE_URN, GROUP_URN, TOKEN, USER_URN, Scim
from tests.demo_rows import q
from tests.integration.test_sql_legacy import load_ddl
from tests.services import (
    create_mariadb_database,
    create_pg_database,
    drop_mariadb_database,
    drop_pg_database,
    mariadb_url,
    pg_url,
    read_rows,
)

pytestmark = pytest.mark.both_stores

ROOT = Path(__file__).resolve().parents[2]
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"

PAYLOADS = [
    "'; DROP TABLE {table}; --",
    "'; DROP TABLE resources; --",
    "x' OR 1=1 --",
    "' OR '1'='1",
    '" OR "1"="1',
    "\\'",
    "\\\\",
    "\\%",
    "%",
    "_",
    "a%b_c",
    "$1",
    ":name",
    "%(x)s",
    "?",
    "{{7*7}}",
    "’ OR ‘1’=‘1 «»",
    "`usr`; /* */ --",
]


@dataclass(frozen=True)
class Column:
    attr: str  # a name of ours, see scim_body / patch_ops
    column: str
    width: int
    lowered: bool = False  # the mapping's to_app lowers it (e-mail addresses)


@dataclass(frozen=True)
class AppSpec:
    users: str  # SELECT the user columns, login first, in Column order
    groups: str
    table: str
    tables: tuple[str, ...]
    columns: tuple[Column, ...]


SPECS = {
    "demo": AppSpec(
        "SELECT login, first_nm, last_nm, display_nm, mail, phone, job_title, dept, emp_code FROM employees",
        "SELECT team_name FROM teams",
        "employees",
        ("employees", "teams", "team_members"),
        (
            Column("userName", "login", 200),
            Column("givenName", "first_nm", 200),
            Column("familyName", "last_nm", 200),
            Column("displayName", "display_nm", 200),
            Column("workEmail", "mail", 200, True),
            Column("workPhone", "phone", 200),
            Column("title", "job_title", 200),
            Column("department", "dept", 200),
            Column("employeeNumber", "emp_code", 200),
        ),
    ),
    "legacy_pg": AppSpec(
        """SELECT p.account_name, p.given_name, p.surname, p.full_name, w.email_address, h.email_address, p.job_title, p.department,
                  p.employee_no FROM hr_person p
           LEFT JOIN hr_person_email w ON w.person_id = p.person_id AND w.email_type = 'WORK'
           LEFT JOIN hr_person_email h ON h.person_id = p.person_id AND h.email_type = 'HOME'""",
        "SELECT unit_name FROM hr_org_unit",
        "hr_person",
        ("hr_person", "hr_person_email", "hr_org_unit", "hr_unit_member", "hr_audit"),
        (
            Column("userName", "account_name", 64),
            Column("givenName", "given_name", 80),
            Column("familyName", "surname", 80),
            Column("displayName", "full_name", 160),
            Column("workEmail", "work", 254, True),
            Column("homeEmail", "home", 254),
            Column("title", "job_title", 120),
            Column("department", "department", 120),
            Column("employeeNumber", "employee_no", 20),
        ),
    ),
    "legacy_mariadb": AppSpec(
        "SELECT usr_login, usr_fname, usr_lname, usr_display, usr_email, usr_phone, usr_title FROM usr",
        "SELECT grp_name FROM grp",
        "usr",
        ("usr", "grp", "usr_grp"),
        (
            Column("userName", "usr_login", 80),
            Column("givenName", "usr_fname", 60),
            Column("familyName", "usr_lname", 60),
            Column("displayName", "usr_display", 120),
            Column("workEmail", "usr_email", 190, True),
            Column("workPhone", "usr_phone", 40),
            Column("title", "usr_title", 100),
        ),
    ),
}

PATHS = {
    "givenName": "name.givenName",
    "familyName": "name.familyName",
    "displayName": "displayName",
    "title": "title",
    "workEmail": 'emails[type eq "work"].value',
    "homeEmail": 'emails[type eq "home"].value',
    "workPhone": 'phoneNumbers[type eq "work"].value',
    "department": f"{ENTERPRISE_URN}:department",
    "employeeNumber": f"{ENTERPRISE_URN}:employeeNumber",
    "userName": "userName",
}


def values_for(spec: AppSpec, payload: str, i: int) -> dict[str, str]:
    """Each column's value: the payload, made unique per user where the app keeps it unique, cut to the column's width."""
    text = payload.format(table=spec.table)
    out = {}
    for col in spec.columns:
        value = f"{text}#{i}" if col.attr == "userName" else text
        out[col.attr] = value[: col.width]
    return out


def scim_body(values: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [USER_URN, ENTERPRISE_URN], "userName": values["userName"], "active": True}
    body["name"] = {"givenName": values["givenName"], "familyName": values["familyName"]}
    body["displayName"] = values["displayName"]
    body["title"] = values["title"]
    body["emails"] = [{"type": "work", "value": values["workEmail"], "primary": True}]
    if "homeEmail" in values:
        body["emails"].append({"type": "home", "value": values["homeEmail"]})
    if "workPhone" in values:
        body["phoneNumbers"] = [{"type": "work", "value": values["workPhone"]}]
    enterprise = {k: values[k] for k in ("department", "employeeNumber") if k in values}
    if enterprise:
        body[ENTERPRISE_URN] = enterprise
    return body


def patch_ops(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"op": "replace", "path": PATHS[attr], "value": value} for attr, value in values.items()]


def with_pushdown(source: Path, target: Path) -> Path:
    """The shipped mapping, with userName and title filters asked of the app too (pushdown): the app's SQL sees the values."""
    text = source.read_text()
    marker = "    match: userName\n"
    assert text.count(marker) == 1
    target.write_text(text.replace(marker, marker + "    pushdown: [userName, title]\n"))
    return target


@dataclass
class Served:
    app: str
    spec: AppSpec
    scim: Scim
    app_dsn: str  # SQLAlchemy async URL of the app's database
    store_url: str | None  # None: SQLite store at store_file
    store_file: Path

    async def user_rows(self) -> dict[str, tuple[Any, ...]]:
        return {r[0]: tuple(r) for r in await read_rows(self.app_dsn, self.spec.users)}

    async def group_names(self) -> list[str]:
        return sorted(r[0] for r in await read_rows(self.app_dsn, self.spec.groups))

    async def store_rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.store_url is None:
            with sqlite3.connect(self.store_file) as db:
                return [tuple(r) for r in db.execute(sql)]
        import asyncpg

        conn = await asyncpg.connect(self.store_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()


@pytest.fixture(params=["demo", "legacy_pg", "legacy_mariadb"])
async def served(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store_overrides: dict[str, Any],
) -> AsyncIterator[Served]:
    app = str(request.param)
    data_dir = tmp_path / "data"
    database = None
    if app == "demo":
        ensure_demo_database(data_dir)
        mapping = with_pushdown(demo_mapping_path(), tmp_path / "demo.yaml")
        dsn = f"sqlite+aiosqlite:///{data_dir / 'demo.db'}"
    else:
        database = await (create_pg_database() if app == "legacy_pg" else create_mariadb_database())
        dsn = pg_url(database, "postgresql+asyncpg") if app == "legacy_pg" else mariadb_url(database)
        await load_ddl(app, database)
        monkeypatch.setenv(f"{app.upper()}_DSN", dsn)
        monkeypatch.setenv(f"{app.upper()}_SCIM_TOKEN", "the-mapping's-own-token")
        mapping = with_pushdown(ROOT / "mappings" / f"{app}.yaml", tmp_path / f"{app}.yaml")
    try:
        settings = GatewaySettings(
            mappings=[mapping], data_dir=data_dir, extra_tokens={app: [SecretStr(TOKEN)]}, **store_overrides
        )
        client = await aiohttp_client(create_app(settings))
        url = store_overrides.get("store_url")
        yield Served(
            app,
            SPECS[app],
            Scim(client, base=f"/apps/{app}/scim/v2"),
            dsn,
            url.get_secret_value() if url is not None else None,
            settings.store_file,
        )
        await client.close()
    finally:
        if database is not None:
            await (drop_pg_database if app == "legacy_pg" else drop_mariadb_database)(database)


def expected_row(spec: AppSpec, values: dict[str, str]) -> tuple[Any, ...]:
    return tuple(values[c.attr].lower() if c.lowered else values[c.attr] for c in spec.columns)


def matches(op: str, value: str, needle: str) -> bool:
    value, needle = value.lower(), needle.lower()
    return {"eq": value == needle, "co": needle in value, "sw": value.startswith(needle), "ew": value.endswith(needle)}[op]


async def listed(scim: Scim, path: str, text: str, *, search: bool) -> set[str]:
    if search:
        resp, data = await scim.post(f"{path}/.search", {"schemas": [SEARCH_URN], "filter": text, "count": 1000})
    else:
        resp, data = await scim.get(f"{path}?count=1000&filter={q(text)}")
    assert resp.status == 200, (text, data)
    assert data["totalResults"] == len(data["Resources"]), data
    return {r["userName"] if "userName" in r else r["displayName"] for r in data["Resources"]}


async def assert_rows(served: Served, users: dict[str, dict[str, str]]) -> None:
    rows = await served.user_rows()
    assert set(rows) == {v["userName"] for v in users.values()}, "the app's users differ"
    for values in users.values():
        assert rows[values["userName"]] == expected_row(served.spec, values), values["userName"]


async def test_payloads_land_verbatim_and_filters_match_only_verbatim(served: Served) -> None:
    scim, spec = served.scim, served.spec
    n = len(PAYLOADS)
    users: dict[str, dict[str, str]] = {}  # id -> values now held
    for i, payload in enumerate(PAYLOADS):
        values = values_for(spec, payload, i)
        resp, data = await scim.post("/Users", scim_body(values))
        assert resp.status == 201, (payload, data)
        assert data["userName"] == values["userName"] and data["title"] == values["title"], data
        users[data["id"]] = values
    await assert_rows(served, users)

    groups: dict[str, str] = {}
    for i, payload in enumerate(PAYLOADS):
        name = f"{payload.format(table=spec.table)}#g{i}"
        resp, data = await scim.post(
            "/Groups", {"schemas": [GROUP_URN], "displayName": name, "members": [{"value": next(iter(users))}]}
        )
        assert resp.status == 201, (name, data)
        groups[data["id"]] = name
    assert await served.group_names() == sorted(groups.values())

    # Filters, on the store (displayName, a group's displayName) and pushed down to the app (userName, title).
    names = [v["userName"] for v in users.values()]
    for i, name in enumerate(names):
        search = bool(i % 2)
        assert await listed(scim, "/Users", f"userName eq {json.dumps(name)}", search=search) == {name}
        assert await listed(scim, "/Users", f"userName eq {json.dumps(name + chr(39) + ' OR 1=1 --')}", search=search) == set()
    for op in ("co", "sw", "ew"):
        for needle in ("%", "_", "\\", "'", "%(", "a%b_c", "\\%", "#1", "?", ":", "$1", "{{", "’"):
            filters = [
                (
                    f"userName {op} {json.dumps(needle)}",
                    {v["userName"] for v in users.values() if matches(op, v["userName"], needle)},
                ),
                (f"title {op} {json.dumps(needle)}", {v["userName"] for v in users.values() if matches(op, v["title"], needle)}),
                (
                    f"displayName {op} {json.dumps(needle)}",
                    {v["userName"] for v in users.values() if matches(op, v["displayName"], needle)},
                ),
            ]
            for text, want in filters:
                assert await listed(scim, "/Users", text, search=op == "co") == want, text
            want_groups = {g for g in groups.values() if matches(op, g, needle)}
            assert await listed(scim, "/Groups", f"displayName {op} {json.dumps(needle)}", search=op == "sw") == want_groups

    # PATCH every mapped attribute to the next payload.
    for i, rid in enumerate(list(users)):
        new = values_for(spec, PAYLOADS[(i + 1) % n], i)
        resp, data = await scim.patch(f"/Users/{rid}", patch_ops(new))
        assert resp.status == 200, (new, data)
        users[rid] = new
    await assert_rows(served, users)
    for i, gid in enumerate(list(groups)):
        new_name = f"{PAYLOADS[(i + 2) % n].format(table=spec.table)}#g{i}"
        resp, data = await scim.patch(f"/Groups/{gid}", [{"op": "replace", "path": "displayName", "value": new_name}])
        assert resp.status == 200, (new_name, data)
        groups[gid] = new_name
    assert await served.group_names() == sorted(groups.values())
    for values in users.values():
        assert await listed(scim, "/Users", f"userName eq {json.dumps(values['userName'])}", search=False) == {values["userName"]}

    # Every table intact: the app's and the store's, with exactly the rows written.
    for table in spec.tables:
        assert await read_rows(served.app_dsn, f"SELECT count(*) FROM {table}") is not None
    assert len(await served.user_rows()) == n and len(await served.group_names()) == n
    stored = await served.store_rows("SELECT type, unique_key FROM resources")
    assert sorted(k for t, k in stored if t == "User") == sorted(v["userName"].lower() for v in users.values())
    assert sorted(k for t, k in stored if t == "Group") == sorted(g.lower() for g in groups.values())
    for table in ("members", "journal"):
        assert await served.store_rows(f"SELECT count(*) FROM {table}")

    # The filters reach the app's SQL (pushdown): accounts made in the app, never provisioned, are found and adopted,
    # and only the one whose name holds the needle verbatim; a LIKE wildcard left unescaped would adopt the decoy too.
    direct, decoy = f"{PAYLOADS[0].format(table=spec.table)}%_#direct", "decoy-XY#direct"
    for login in (direct, decoy):
        await write_row(served.app_dsn, INSERT[served.app], login=login)
    assert await listed(scim, "/Users", f"userName ew {json.dumps('%_#DIRECT')}", search=False) == {direct}
    assert await listed(scim, "/Users", f"userName co {json.dumps('%_#')}", search=True) == {direct}
    linked = {k for t, k in await served.store_rows("SELECT type, unique_key FROM resources") if t == "User"}
    assert direct.lower() in linked
    assert decoy.lower() not in linked, "the app was asked with an unescaped wildcard"


INSERT = {
    "demo": "INSERT INTO employees (login) VALUES (:login)",
    "legacy_pg": "INSERT INTO hr_person (person_id, account_name) VALUES (nextval('hr_person_seq'), :login)",
    "legacy_mariadb": "INSERT INTO usr (usr_login) VALUES (:login)",
}


async def write_row(dsn: str, sql: str, **params: Any) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(dsn, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()
