"""Accounts that already exist in the app are adopted when an IdP looks them up, not duplicated."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.connectors import AppUnavailable
from gateway.http.keys import APPS
from tests.conftest import PATCH_URN, Scim, user_body
from tests.demo_rows import count, employee, q

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store


def insert_employee(db: sqlite3.Connection, login: str, **cols: str) -> int:
    names = ["login", *cols]
    cur = db.execute(
        f"INSERT INTO employees ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", (login, *cols.values())
    )
    db.commit()
    return int(cur.lastrowid or 0)


async def test_entra_lookup_adopts_an_existing_account_and_takes_it_over(scim: Scim, demo_db: sqlite3.Connection) -> None:
    emp = insert_employee(demo_db, "Legacy@Contoso.com", first_nm="Lee", job_title="Clerk", status="A")
    # Entra: does the user exist? (any case)
    resp, data = await scim.get("/Users?filter=" + q('userName eq "legacy@contoso.com"'))
    assert resp.status == 200 and data["totalResults"] == 1
    user = data["Resources"][0]
    assert (user["userName"], user["name"]["givenName"], user["title"], user["active"]) == (
        "Legacy@Contoso.com",
        "Lee",
        "Clerk",
        True,
    )
    # ...then updates it instead of creating a duplicate.
    resp, patched = await scim.patch(f"/Users/{user['id']}", [{"op": "Replace", "path": "title", "value": "Manager"}])
    assert resp.status == 200 and patched["title"] == "Manager"
    assert employee(demo_db, "legacy@contoso.com")["emp_no"] == emp
    assert employee(demo_db, "legacy@contoso.com")["job_title"] == "Manager"
    assert count(demo_db, "employees") == 1
    # The same lookup again finds the same resource.
    _, again = await scim.get("/Users?filter=" + q('userName eq "LEGACY@contoso.com"'))
    assert [r["id"] for r in again["Resources"]] == [user["id"]]


async def test_okta_group_lookup_adopts_an_existing_team_with_its_members(scim: Scim, demo_db: sqlite3.Connection) -> None:
    _, user = await scim.post("/Users", user_body("member@example.com"))
    team_id = demo_db.execute("INSERT INTO teams (team_name) VALUES ('Old Team')").lastrowid
    demo_db.execute(
        "INSERT INTO team_members (team_id, emp_no) SELECT ?, emp_no FROM employees WHERE login = 'member@example.com'",
        (team_id,),
    )
    demo_db.commit()
    resp, data = await scim.get("/Groups?filter=" + q('displayName eq "old team"'))
    assert data["totalResults"] == 1
    group = data["Resources"][0]
    assert [m["value"] for m in group["members"]] == [user["id"]]
    resp, _ = await scim.request(
        "PATCH", f"/Groups/{group['id']}", {"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": "members"}]}
    )
    assert resp.status == 200
    assert count(demo_db, "team_members") == 0


async def test_only_an_exact_lookup_by_the_match_attribute_adopts(scim: Scim, demo_db: sqlite3.Connection) -> None:
    insert_employee(demo_db, "quiet@example.com", job_title="Clerk")
    for text in ['userName sw "quiet"', 'title eq "Clerk"', 'userName eq "quiet@example.com" and title eq "Clerk"']:
        _, data = await scim.get("/Users?filter=" + q(text))
        assert data["totalResults"] == 0, text
    # Creating it through SCIM still refuses the duplicate the app would get.
    resp, body = await scim.post("/Users", user_body("quiet@example.com"))
    assert resp.status == 409 and body["scimType"] == "uniqueness"
    assert count(demo_db, "employees") == 1


async def test_a_group_whose_members_the_app_cannot_list_is_503_and_adopted_on_retry(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection
) -> None:
    demo_db.execute("INSERT INTO teams (team_name) VALUES ('Flaky Team')")
    demo_db.commit()
    connector = client.app[APPS]["demo"].connector
    list_members = connector.list_members

    async def down(kind: str, group_id: str) -> Any:
        raise AppUnavailable("the database is unreachable: ConnectionRefusedError", retry_after=7)

    connector.list_members = down  # type: ignore[method-assign]
    resp, data = await scim.get("/Groups?filter=" + q('displayName eq "Flaky Team"'))
    assert resp.status == 503 and resp.headers["Retry-After"] == "7" and "members" in data["detail"]
    connector.list_members = list_members  # type: ignore[method-assign]
    resp, data = await scim.get("/Groups?filter=" + q('displayName eq "Flaky Team"'))
    assert resp.status == 200 and data["totalResults"] == 1
