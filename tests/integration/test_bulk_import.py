"""A Bulk import: runs of user creates go to the store and the app at once, answered exactly as one by one.

Each test sends the same operations once as a run (no failOnErrors) and once
one by one (failOnErrors, which makes the gateway count each result before the
next), and compares the answers and the state left in the store and the app.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.connectors.errors import AppUnavailable
from gateway.http.keys import APPS
from tests.conftest import USER_URN, Scim, user_body
from tests.demo_rows import logins
from tests.integration.test_bulk import bulk, post_bulk

pytestmark = pytest.mark.both_stores


def post(bulk_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"method": "POST", "path": "/Users", "bulkId": bulk_id, "data": body}


def mixed(prefix: str) -> list[dict[str, Any]]:
    """Creates with every way one can fail: a name taken earlier in the request, no userName, a name the app holds."""
    return [
        post("a", user_body(f"{prefix}.one", title="T1")),
        post("b", user_body(f"{prefix}.two")),
        post("c", user_body(f"{prefix}.ONE")),  # taken by "a", case-insensitively: 409
        post("d", {"schemas": [USER_URN], "displayName": "no name"}),  # 400
        post("e", user_body(f"{prefix}.inapp")),  # the app has this login already, unlinked: the app's 409
        post("f", user_body(f"{prefix}.off", active=False)),  # inactive: the one-by-one path inside the run
        post("g", user_body(f"{prefix}.three", emails=[{"value": f"{prefix}.Three@Example.org", "type": "work"}])),
    ]


def summary(results: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(r["bulkId"], r["status"], r.get("response", {}).get("scimType")) for r in results]


async def journal_states(client: TestClient) -> Counter[str]:
    store = client.app[APPS]["demo"].provisioner.store
    if hasattr(store, "db"):
        rows = await (await store.db.execute("SELECT state FROM journal")).fetchall()
        return Counter(r[0] for r in rows)
    async with store.pool.acquire() as conn:
        return Counter(r["state"] for r in await conn.fetch("SELECT state FROM journal"))


async def test_a_run_of_creates_answers_as_one_by_one(client: TestClient, scim: Scim, demo_db: sqlite3.Connection) -> None:
    for prefix in ("run", "seq"):
        demo_db.execute("INSERT INTO employees (login) VALUES (?)", (f"{prefix}.inapp",))
    demo_db.commit()
    connector = client.app[APPS]["demo"].connector
    calls: Counter[str] = Counter()
    for name in ("create", "create_many"):
        original = getattr(connector, name)

        async def counted(*args: Any, _name: str = name, _fn: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _fn(*args, **kwargs)

        setattr(connector, name, counted)

    as_run = await post_bulk(scim, bulk(*mixed("run")))
    assert calls["create_many"] == 2, calls  # the runs before and after the inactive user
    calls.clear()
    one_by_one = await post_bulk(scim, bulk(*mixed("seq"), fail_on_errors=100))
    assert calls["create_many"] == 0, calls

    assert (
        summary(as_run)
        == summary(one_by_one)
        == [
            ("a", "201", None),
            ("b", "201", None),
            ("c", "409", "uniqueness"),
            ("d", "400", "invalidValue"),
            ("e", "409", "uniqueness"),
            ("f", "201", None),
            ("g", "201", None),
        ]
    )
    for results, prefix in ((as_run, "run"), (one_by_one, "seq")):
        by_id = {r["bulkId"]: r for r in results}
        resp, user = await scim.get(by_id["g"]["location"].split("/v2", 1)[1])
        # Read back from the app: the demo lower-cases mail, and the answer shows what the app stored.
        assert resp.status == 200 and user["emails"][0]["value"] == f"{prefix}.three@example.org"
        assert by_id["g"]["version"] == resp.headers["ETag"] == 'W/"1"'
        _, listed = await scim.get(f'/Users?filter=userName sw "{prefix}."')
        assert sorted(u["userName"] for u in listed["Resources"]) == sorted(
            f"{prefix}.{n}" for n in ("one", "two", "off", "three")
        )
        assert {f"{prefix}.{n}" for n in ("one", "two", "off", "three", "inapp")} <= logins(demo_db)
    states = await journal_states(client)
    assert set(states) <= {"done", "aborted"}, states  # nothing left pending
    assert states["aborted"] == 2  # the app's refusal of ".inapp", once per request


async def test_an_app_that_is_down_fails_the_whole_run_and_records_nothing(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection
) -> None:
    connector = client.app[APPS]["demo"].connector

    async def down(kind: str, records: list[Any]) -> Any:
        raise AppUnavailable("the database is unreachable: ConnectionRefusedError", retry_after=5)

    connector.create_many = down  # type: ignore[method-assign]
    results = await post_bulk(scim, bulk(*[post(str(i), user_body(f"down{i}")) for i in range(5)]))
    assert [r["status"] for r in results] == ["503"] * 5
    assert all("unreachable" in r["response"]["detail"] for r in results)
    _, listed = await scim.get('/Users?filter=userName sw "down"')
    assert listed["totalResults"] == 0
    assert not [login for login in logins(demo_db) if login.startswith("down")]
    states = await journal_states(client)
    assert states["pending"] == 0 and states["aborted"] == 5


async def test_a_run_and_single_creates_leave_the_same_rows(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection, tmp_path: Path
) -> None:
    await post_bulk(
        scim,
        bulk(
            *[
                post(f"r{i}", user_body(f"same.r{i}", title=f"T{i}", name={"givenName": "G", "familyName": f"F{i}"}))
                for i in range(30)
            ]
        ),
    )
    for i in range(30):
        resp, _ = await scim.post(
            "/Users", user_body(f"same.s{i}", title=f"T{i}", name={"givenName": "G", "familyName": f"F{i}"})
        )
        assert resp.status == 201

    def rows(kind: str) -> list[tuple[Any, ...]]:
        return [
            tuple(r)[2:]  # all but emp_no and login
            for r in demo_db.execute(
                "SELECT emp_no, login, first_nm, last_nm, display_nm, mail, job_title, status FROM employees WHERE login LIKE ? ORDER BY emp_no",
                (f"same.{kind}%",),
            )
        ]

    assert rows("r") == rows("s") and len(rows("r")) == 30
