"""Bulk (RFC 7644 §3.7) over real HTTP: bulkId references in any order, failOnErrors,
maxOperations, PUT / PATCH / DELETE operations, versions, per-operation statuses and
locations; the demo HR database's rows asserted after each request."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import LimitsConfig
from tests.conftest import BASE, ENTERPRISE_URN, GROUP_URN, PATCH_URN, USER_URN, Scim, demo_settings, user_body
from tests.demo_rows import count, employee, logins, team_pairs

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store

BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_TYPE = "application/scim+json"


def bulk(*operations: dict[str, Any], fail_on_errors: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [BULK_REQUEST], "Operations": list(operations)}
    if fail_on_errors is not None:
        body["failOnErrors"] = fail_on_errors
    return body


async def post_bulk(scim: Scim, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp, data = await scim.post("/Bulk", body)
    assert resp.status == 200, data
    assert resp.content_type == SCIM_TYPE
    assert data["schemas"] == [BULK_RESPONSE]
    for op in data["Operations"]:
        assert isinstance(op["status"], str), op  # RFC 7644 §3.7.3: a string
    return list(data["Operations"])


def rid(location: str) -> str:
    return location.rsplit("/", 1)[1]


async def test_bulk_creates_with_bulkid_references(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "u1",
                "data": user_body("bulk1@example.com", name={"givenName": "Bea"}),
            },
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "u2",
                "data": {
                    **user_body("bulk2@example.com"),
                    "schemas": [USER_URN, ENTERPRISE_URN],
                    ENTERPRISE_URN: {"manager": {"value": "bulkId:u1"}},
                },
            },
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g1",
                "data": {
                    "schemas": [GROUP_URN],
                    "displayName": "Bulk Team",
                    "members": [{"type": "User", "value": "bulkId:u1"}, {"type": "User", "value": "bulkId:u2"}],
                },
            },
        ),
    )
    assert [(o["method"], o["bulkId"], o["status"]) for o in ops] == [
        ("POST", "u1", "201"),
        ("POST", "u2", "201"),
        ("POST", "g1", "201"),
    ]
    u1, u2, g1 = (rid(o["location"]) for o in ops)
    assert ops[0]["location"].endswith(f"{BASE}/Users/{u1}")
    assert ops[2]["location"].endswith(f"{BASE}/Groups/{g1}")
    assert all(o["version"] for o in ops)

    # The locations answer, and versions are the resources' ETags.
    resp, user1 = await scim.get(f"/Users/{u1}")
    assert resp.status == 200
    assert user1["userName"] == "bulk1@example.com"
    assert resp.headers["ETag"] == ops[0]["version"]
    resp, user2 = await scim.get(f"/Users/{u2}")
    assert user2[ENTERPRISE_URN]["manager"]["value"] == u1
    resp, group = await scim.get(f"/Groups/{g1}")
    assert {m["value"] for m in group["members"]} == {u1, u2}

    assert logins(demo_db) == {"bulk1@example.com", "bulk2@example.com"}
    assert employee(demo_db, "bulk1@example.com")["first_nm"] == "Bea"
    assert employee(demo_db, "bulk2@example.com")["mgr_emp_no"] == employee(demo_db, "bulk1@example.com")["emp_no"]
    assert team_pairs(demo_db) == {("Bulk Team", "bulk1@example.com"), ("Bulk Team", "bulk2@example.com")}


async def test_bulk_forward_reference_is_resolved(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """The group comes first in the request and refers to a user created later in it (RFC 7644 §3.7.1)."""
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g",
                "data": {"schemas": [GROUP_URN], "displayName": "Forward", "members": [{"value": "bulkId:later"}]},
            },
            {"method": "POST", "path": "/Users", "bulkId": "later", "data": user_body("later@example.com")},
        ),
    )
    # Responses are in request order whatever order the operations ran in.
    assert [(o["bulkId"], o["status"]) for o in ops] == [("g", "201"), ("later", "201")]
    resp, group = await scim.get(f"/Groups/{rid(ops[0]['location'])}")
    assert [m["value"] for m in group["members"]] == [rid(ops[1]["location"])]
    assert team_pairs(demo_db) == {("Forward", "later@example.com")}


async def test_bulk_patch_put_delete_operations(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, keep = await scim.post("/Users", user_body("keep@example.com", title="Old"))
    resp, replace = await scim.post("/Users", user_body("replace@example.com", title="Old"))
    resp, drop = await scim.post("/Users", user_body("drop@example.com"))
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Bulk G", "members": [{"value": drop["id"]}]}
    )
    assert team_pairs(demo_db) == {("Bulk G", "drop@example.com")}
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "PATCH",
                "path": f"/Users/{keep['id']}",
                "data": {
                    "schemas": [PATCH_URN],
                    "Operations": [
                        {"op": "replace", "path": "title", "value": "Patched"},
                        {"op": "Replace", "path": "active", "value": "False"},
                    ],
                },
            },
            {
                "method": "PUT",
                "path": f"/Users/{replace['id']}",
                "data": user_body("replace@example.com", title="Put", name={"givenName": "Rex"}),
            },
            {
                "method": "PATCH",
                "path": f"/Groups/{group['id']}",
                "data": {
                    "schemas": [PATCH_URN],
                    "Operations": [{"op": "add", "path": "members", "value": [{"value": keep["id"]}]}],
                },
            },
            {"method": "DELETE", "path": f"/Users/{drop['id']}"},
        ),
    )
    assert [(o["method"], o["status"]) for o in ops] == [("PATCH", "200"), ("PUT", "200"), ("PATCH", "200"), ("DELETE", "204")]
    assert ops[0]["location"].endswith(f"/Users/{keep['id']}")
    assert ops[1]["location"].endswith(f"/Users/{replace['id']}")
    assert ops[2]["location"].endswith(f"/Groups/{group['id']}")
    assert "response" not in ops[3]

    row = employee(demo_db, "keep@example.com")
    assert (row["job_title"], row["status"]) == ("Patched", "I")
    row = employee(demo_db, "replace@example.com")
    assert (row["job_title"], row["first_nm"]) == ("Put", "Rex")
    assert employee(demo_db, "drop@example.com") is None
    assert team_pairs(demo_db) == {("Bulk G", "keep@example.com")}
    resp, _ = await scim.get(f"/Users/{drop['id']}")
    assert resp.status == 404


async def test_bulk_operations_on_resources_created_in_the_same_request(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": user_body("a@example.com")},
            {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"schemas": [GROUP_URN], "displayName": "Same Request"}},
            {
                "method": "PATCH",
                "path": "/Groups/bulkId:g",
                "data": {
                    "schemas": [PATCH_URN],
                    "Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:a"}]}],
                },
            },
            {
                "method": "PATCH",
                "path": "/Users/bulkId:a",
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Via bulkId path"}]},
            },
        ),
    )
    assert [o["status"] for o in ops] == ["201", "201", "200", "200"], ops
    assert team_pairs(demo_db) == {("Same Request", "a@example.com")}
    assert employee(demo_db, "a@example.com")["job_title"] == "Via bulkId path"


async def test_bulk_path_reference_to_a_later_operation(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """A bulkId in an operation's path is a reference too: it must run after the POST that defines it."""
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "PATCH",
                "path": "/Users/bulkId:late",
                "data": {
                    "schemas": [PATCH_URN],
                    "Operations": [{"op": "replace", "path": "title", "value": "Patched before defined"}],
                },
            },
            {"method": "POST", "path": "/Users", "bulkId": "late", "data": user_body("late@example.com")},
        ),
    )
    assert [o["status"] for o in ops] == ["200", "201"], ops
    assert employee(demo_db, "late@example.com")["job_title"] == "Patched before defined"


async def test_bulk_errors_are_per_operation(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, existing = await scim.post("/Users", user_body("exists@example.com"))
    ops = await post_bulk(
        scim,
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "ok1", "data": user_body("ok1@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "dup", "data": user_body("EXISTS@example.com")},
            {
                "method": "POST",
                "path": "/Users",
                "bulkId": "bad",
                "data": {"schemas": [USER_URN], "active": "maybe", "userName": "bad@example.com"},
            },
            {
                "method": "PATCH",
                "path": "/Users/no-such-id",
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "x"}]},
            },
            {"method": "DELETE", "path": "/Users/no-such-id"},
            {"method": "POST", "path": "/Users", "data": user_body("nobulkid@example.com")},
            {"method": "EXPLODE", "path": "/Users", "bulkId": "weird", "data": user_body("weird@example.com")},
            {"method": "POST", "path": "/Widgets", "bulkId": "w", "data": {}},
            {"method": "POST", "path": "/Users", "bulkId": "ok2", "data": user_body("ok2@example.com")},
        ),
    )
    assert [o["status"] for o in ops] == ["201", "409", "400", "404", "404", "400", "400", "400", "201"], ops
    for op in ops:
        if int(op["status"]) >= 400:
            assert op["response"]["schemas"] == [ERROR_URN], op
            assert op["response"]["status"] == op["status"], op
            assert op["response"]["detail"], op
            assert "location" not in op, op
    assert ops[1]["response"]["scimType"] == "uniqueness"
    assert ops[2]["response"]["scimType"] == "invalidValue"
    assert "active" in ops[2]["response"]["detail"]
    assert logins(demo_db) == {"exists@example.com", "ok1@example.com", "ok2@example.com"}


async def test_bulk_fail_on_errors_stops_after_n_errors(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": user_body("first@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "b", "data": {"schemas": [USER_URN]}},
            {"method": "POST", "path": "/Users", "bulkId": "c", "data": user_body("second@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "d", "data": user_body("FIRST@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "e", "data": user_body("never1@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "f", "data": user_body("never2@example.com")},
            fail_on_errors=2,
        ),
    )
    # Two errors reached: what follows is not run and not reported.
    assert [(o["bulkId"], o["status"]) for o in ops] == [("a", "201"), ("b", "400"), ("c", "201"), ("d", "409")]
    assert logins(demo_db) == {"first@example.com", "second@example.com"}


async def test_bulk_fail_on_errors_one(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"schemas": [USER_URN], "userName": 5}},
            {"method": "POST", "path": "/Users", "bulkId": "b", "data": user_body("not.run@example.com")},
            fail_on_errors=1,
        ),
    )
    assert [(o["bulkId"], o["status"]) for o in ops] == [("a", "400")]
    assert count(demo_db, "employees") == 0


async def test_bulk_reference_to_a_failed_operation(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {"method": "POST", "path": "/Users", "bulkId": "broken", "data": {"schemas": [USER_URN], "userName": ""}},
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g",
                "data": {"schemas": [GROUP_URN], "displayName": "Depends", "members": [{"value": "bulkId:broken"}]},
            },
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "h",
                "data": {"schemas": [GROUP_URN], "displayName": "Unresolved", "members": [{"value": "bulkId:ghost"}]},
            },
        ),
    )
    statuses = {o["bulkId"]: o for o in ops}
    assert statuses["broken"]["status"] == "400"
    assert statuses["g"]["status"] == "409"
    assert "broken" in statuses["g"]["response"]["detail"]
    assert statuses["h"]["status"] == "409"
    assert "ghost" in statuses["h"]["response"]["detail"]
    assert count(demo_db, "teams") == 0
    assert count(demo_db, "employees") == 0


async def test_bulk_circular_references_are_refused(scim: Scim, demo_db: sqlite3.Connection) -> None:
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "x",
                "data": {"schemas": [GROUP_URN], "displayName": "X", "members": [{"value": "bulkId:y"}]},
            },
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "y",
                "data": {"schemas": [GROUP_URN], "displayName": "Y", "members": [{"value": "bulkId:x"}]},
            },
        ),
    )
    assert [o["status"] for o in ops] == ["409", "409"]
    assert count(demo_db, "teams") == 0


async def test_bulk_version_mismatch_is_412_for_that_operation(scim: Scim, demo_db: sqlite3.Connection) -> None:
    resp, user = await scim.post("/Users", user_body("versioned@example.com", title="Before"))
    etag = resp.headers["ETag"]
    ops = await post_bulk(
        scim,
        bulk(
            {
                "method": "PATCH",
                "path": f"/Users/{user['id']}",
                "version": 'W/"999"',
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Stale"}]},
            },
            {
                "method": "PATCH",
                "path": f"/Users/{user['id']}",
                "version": etag,
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Fresh"}]},
            },
        ),
    )
    assert [o["status"] for o in ops] == ["412", "200"]
    assert ops[1]["version"] != etag
    assert employee(demo_db, "versioned@example.com")["job_title"] == "Fresh"


async def test_bulk_empty_request(scim: Scim) -> None:
    ops = await post_bulk(scim, bulk())
    assert ops == []


async def test_bulk_get_is_405(scim: Scim) -> None:
    resp, data = await scim.get("/Bulk")
    assert resp.status == 405
    assert data["schemas"] == [ERROR_URN]


@pytest.fixture
async def small_bulk(aiohttp_client: Any, data_dir: Path) -> TestClient:
    return await aiohttp_client(create_app(demo_settings(data_dir, limits=LimitsConfig(bulk_max_operations=3))))


async def test_bulk_max_operations_exceeded_is_413(small_bulk: TestClient, demo_db: sqlite3.Connection) -> None:
    scim = Scim(small_bulk)
    resp, spc = await scim.get("/ServiceProviderConfig")
    assert spc["bulk"]["maxOperations"] == 3
    body = bulk(
        *({"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": user_body(f"over{i}@example.com")} for i in range(4))
    )
    resp, data = await scim.post("/Bulk", body)
    assert resp.status == 413, data
    assert resp.content_type == SCIM_TYPE
    assert data["schemas"] == [ERROR_URN]
    assert data["status"] == "413"
    assert "3" in data["detail"]
    assert count(demo_db, "employees") == 0
    # Exactly the limit is fine.
    body["Operations"] = body["Operations"][:3]
    ops = await post_bulk(scim, body)
    assert [o["status"] for o in ops] == ["201"] * 3
    assert count(demo_db, "employees") == 3


async def test_fail_on_errors_stops_in_request_order(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """RFC 7644 §3.7: reordering for bulkId references must not change the outcome of failOnErrors."""
    await scim.post("/Users", user_body("dup@example.com"))
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "failOnErrors": 1,
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "u1", "data": user_body("first@example.com")},
            {
                "method": "POST",
                "path": "/Groups",
                "bulkId": "g1",
                "data": {"schemas": [GROUP_URN], "displayName": "Bulk Team", "members": [{"value": "bulkId:u1"}]},
            },
            {
                "method": "PATCH",
                "path": "/Users/bulkId:u1",
                "data": {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Lead"}]},
            },
            {"method": "POST", "path": "/Users", "bulkId": "u2", "data": user_body("dup@example.com")},
            {"method": "POST", "path": "/Users", "bulkId": "u3", "data": user_body("never@example.com")},
        ],
    }
    resp, out = await scim.post("/Bulk", body)
    assert resp.status == 200
    assert [(o.get("bulkId"), o["status"]) for o in out["Operations"]] == [
        ("u1", "201"),
        ("g1", "201"),
        (None, "200"),
        ("u2", "409"),
    ]
    assert team_pairs(demo_db) == {("Bulk Team", "first@example.com")}
    assert employee(demo_db, "first@example.com")["job_title"] == "Lead"
    assert employee(demo_db, "never@example.com") is None
