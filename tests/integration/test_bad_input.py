"""Bad requests, table-driven: each gets the right status, scimType and a detail naming the
problem, never a 500, and NOTHING changes: not the legacy rows, not the gateway's view."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import LimitsConfig
from tests.conftest import BASE, ENTERPRISE_URN, GROUP_URN, PATCH_URN, TOKEN, USER_URN, Scim, demo_settings, user_body
from tests.demo_rows import count, q

pytestmark = pytest.mark.both_stores  # the same gateway tests on the SQLite and the PostgreSQL store

ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
SCIM_TYPE = "application/scim+json"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"


@dataclass
class Case:
    """One bad request. `path` may hold {uid} (the victim user) and {gid} (the victim group).
    `body` is JSON unless `raw` is given (bytes sent as they are)."""

    id: str
    method: str
    path: str
    status: int
    scim_type: str | None
    mentions: list[str] = field(default_factory=list)
    body: Any = None
    raw: bytes | None = None
    content_type: str = SCIM_TYPE


def patch(*operations: Any) -> dict[str, Any]:
    return {"schemas": [PATCH_URN], "Operations": list(operations)}


CASES: list[Case] = [
    # ---- POST /Users
    Case("create-malformed-json", "POST", "/Users", 400, "invalidSyntax", ["JSON"], raw=b'{"schemas": ["x"], "userName": '),
    Case("create-json-array", "POST", "/Users", 400, "invalidSyntax", ["object"], body=[user_body("arr@example.com")]),
    Case("create-json-string", "POST", "/Users", 400, "invalidSyntax", ["object"], body="userName"),
    Case("create-empty-body", "POST", "/Users", 400, "invalidSyntax", ["empty"], raw=b""),
    Case("create-not-utf8", "POST", "/Users", 400, "invalidSyntax", [], raw=b'{"userName": "\xff\xfe"}'),
    Case(
        "create-active-maybe",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["active", "maybe"],
        body=user_body("m@example.com", active="maybe"),
    ),
    Case("create-active-number", "POST", "/Users", 400, "invalidValue", ["active"], body=user_body("m@example.com", active=2)),
    Case(
        "create-username-number", "POST", "/Users", 400, "invalidValue", ["userName"], body={"schemas": [USER_URN], "userName": 5}
    ),
    Case(
        "create-emails-string",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["emails"],
        body=user_body("m@example.com", emails="m@example.com"),
    ),
    Case("create-emails-number", "POST", "/Users", 400, "invalidValue", ["emails"], body=user_body("m@example.com", emails=5)),
    Case(
        "create-emails-two-primaries",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["primary"],
        body=user_body(
            "m@example.com", emails=[{"value": "a@example.com", "primary": True}, {"value": "b@example.com", "primary": True}]
        ),
    ),
    Case(
        "create-name-string", "POST", "/Users", 400, "invalidValue", ["name"], body=user_body("m@example.com", name="Alice Smith")
    ),
    Case(
        "create-title-object", "POST", "/Users", 400, "invalidValue", ["title"], body=user_body("m@example.com", title={"x": 1})
    ),
    Case(
        "create-missing-username",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["userName"],
        body={"schemas": [USER_URN], "active": True},
    ),
    Case("create-blank-username", "POST", "/Users", 400, "invalidValue", ["userName"], body=user_body("   ")),
    Case(
        "create-null-username",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["userName"],
        body={"schemas": [USER_URN], "userName": None},
    ),
    Case(
        "create-enterprise-not-object",
        "POST",
        "/Users",
        400,
        "invalidValue",
        [ENTERPRISE_URN],
        body={**user_body("m@example.com"), ENTERPRISE_URN: "Eng"},
    ),
    Case(
        "create-unknown-manager",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["manager"],
        body={**user_body("m@example.com"), ENTERPRISE_URN: {"manager": {"value": "no-such-user"}}},
    ),
    Case("create-duplicate-username", "POST", "/Users", 409, "uniqueness", ["userName"], body=user_body("VICTIM@example.com")),
    Case(
        "create-text-plain",
        "POST",
        "/Users",
        415,
        None,
        ["text/plain"],
        raw=json.dumps(user_body("t@example.com")).encode(),
        content_type="text/plain",
    ),
    # ---- POST /Groups
    Case("group-missing-displayname", "POST", "/Groups", 400, "invalidValue", ["displayName"], body={"schemas": [GROUP_URN]}),
    Case(
        "group-members-string",
        "POST",
        "/Groups",
        400,
        "invalidValue",
        ["members"],
        body={"schemas": [GROUP_URN], "displayName": "G2", "members": "x"},
    ),
    Case(
        "group-duplicate-name",
        "POST",
        "/Groups",
        409,
        "uniqueness",
        ["displayName"],
        body={"schemas": [GROUP_URN], "displayName": "victims"},
    ),
    # ---- PATCH /Users/{uid}
    Case("patch-malformed-json", "PATCH", "/Users/{uid}", 400, "invalidSyntax", ["JSON"], raw=b'{"schemas": ['),
    Case(
        "patch-json-array",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidSyntax",
        [],
        body=[{"op": "replace", "path": "title", "value": "x"}],
    ),
    Case(
        "patch-no-schemas",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidSyntax",
        ["schemas"],
        body={"Operations": [{"op": "replace", "path": "title", "value": "x"}]},
    ),
    Case("patch-no-operations", "PATCH", "/Users/{uid}", 400, "invalidSyntax", ["Operations"], body={"schemas": [PATCH_URN]}),
    Case("patch-empty-operations", "PATCH", "/Users/{uid}", 400, "invalidSyntax", ["Operations"], body=patch()),
    Case("patch-operation-not-object", "PATCH", "/Users/{uid}", 400, "invalidSyntax", [], body=patch("replace")),
    Case(
        "patch-op-explode",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidSyntax",
        ["explode"],
        body=patch({"op": "explode", "path": "title", "value": "x"}),
    ),
    Case("patch-op-missing", "PATCH", "/Users/{uid}", 400, "invalidSyntax", ["op"], body=patch({"path": "title", "value": "x"})),
    Case("patch-remove-without-path", "PATCH", "/Users/{uid}", 400, "noTarget", ["path"], body=patch({"op": "remove"})),
    Case(
        "patch-replace-id",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["id"],
        body=patch({"op": "replace", "path": "id", "value": "new-id"}),
    ),
    Case(
        "patch-replace-meta",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["meta"],
        body=patch({"op": "replace", "path": "meta.created", "value": "2001-01-01T00:00:00Z"}),
    ),
    # The same readOnly attribute as a key of a path-less value: the same answer as its path (it was 200, ignored).
    Case(
        "patch-pathless-id",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["id"],
        body=patch({"op": "replace", "value": {"id": "new-id", "title": "x"}}),
    ),
    Case(
        "patch-pathless-meta",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["meta.created"],
        body=patch({"op": "replace", "value": {"meta.created": "2001-01-01T00:00:00Z", "title": "x"}}),
    ),
    Case(
        "patch-pathless-groups",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["groups"],
        body=patch({"op": "add", "value": {"groups": [{"value": "g"}]}}),
    ),
    Case(
        "patch-add-groups",
        "PATCH",
        "/Users/{uid}",
        400,
        "mutability",
        ["groups"],
        body=patch({"op": "add", "path": "groups", "value": [{"value": "g"}]}),
    ),
    Case(
        "patch-unknown-attribute",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        ["shoeSize"],
        body=patch({"op": "replace", "path": "shoeSize", "value": 42}),
    ),
    Case(
        "patch-unknown-sub-attribute",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        ["nickname"],
        body=patch({"op": "replace", "path": "name.nickname", "value": "x"}),
    ),
    Case(
        "patch-unterminated-filter",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        ["emails"],
        body=patch({"op": "replace", "path": 'emails[type eq "work"', "value": "x"}),
    ),
    Case(
        "patch-filter-on-single-valued",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        ["title"],
        body=patch({"op": "replace", "path": 'title[value eq "x"]', "value": "x"}),
    ),
    Case(
        "patch-path-not-string",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        [],
        body=patch({"op": "replace", "path": 5, "value": "x"}),
    ),
    Case(
        "patch-unknown-schema",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        [],
        body=patch({"op": "replace", "path": "urn:example:nope:attr", "value": "x"}),
    ),
    Case(
        "patch-add-without-value",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidSyntax",
        ["value"],
        body=patch({"op": "add", "path": "title"}),
    ),
    Case(
        "patch-active-maybe",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["active"],
        body=patch({"op": "replace", "path": "active", "value": "maybe"}),
    ),
    Case(
        "patch-pathless-not-object", "PATCH", "/Users/{uid}", 400, "invalidValue", [], body=patch({"op": "replace", "value": "x"})
    ),
    Case(
        "patch-remove-username",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["userName"],
        body=patch({"op": "remove", "path": "userName"}),
    ),
    Case(
        "patch-username-null",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["userName"],
        body=patch({"op": "replace", "path": "userName", "value": None}),
    ),
    Case(
        "patch-username-onto-other",
        "PATCH",
        "/Users/{uid}",
        409,
        "uniqueness",
        ["userName"],
        body=patch({"op": "replace", "path": "userName", "value": "BYSTANDER@example.com"}),
    ),
    # All or nothing: a valid first operation does not survive an invalid second one.
    Case(
        "patch-second-op-invalid",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidPath",
        ["shoeSize"],
        body=patch({"op": "replace", "path": "title", "value": "Half done"}, {"op": "replace", "path": "shoeSize", "value": 1}),
    ),
    Case(
        "patch-second-op-bad-value",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["active"],
        body=patch(
            {"op": "replace", "path": "displayName", "value": "Half done"},
            {"op": "replace", "path": "active", "value": "sometimes"},
        ),
    ),
    Case(
        "patch-unknown-manager",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["manager"],
        body=patch({"op": "replace", "path": f"{ENTERPRISE_URN}:manager", "value": "no-such-user"}),
    ),
    # ---- PUT /Users/{uid}
    Case(
        "put-id-mismatch",
        "PUT",
        "/Users/{uid}",
        400,
        "mutability",
        ["id"],
        body={**user_body("victim@example.com"), "id": "someone-else"},
    ),
    Case(
        "put-missing-username",
        "PUT",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["userName"],
        body={"schemas": [USER_URN], "title": "x"},
    ),
    Case(
        "put-active-maybe",
        "PUT",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["active"],
        body=user_body("victim@example.com", active="maybe"),
    ),
    Case("put-json-array", "PUT", "/Users/{uid}", 400, "invalidSyntax", [], body=[user_body("victim@example.com")]),
    Case(
        "put-username-onto-other", "PUT", "/Users/{uid}", 409, "uniqueness", ["userName"], body=user_body("bystander@example.com")
    ),
    # ---- PATCH / PUT /Groups/{gid}
    Case(
        "group-patch-members-not-list-of-objects",
        "PATCH",
        "/Groups/{gid}",
        400,
        "invalidValue",
        ["members"],
        body=patch({"op": "add", "path": "members", "value": ["just-a-string"]}),
    ),
    Case(
        "group-patch-remove-displayname",
        "PATCH",
        "/Groups/{gid}",
        400,
        "invalidValue",
        ["displayName"],
        body=patch({"op": "remove", "path": "displayName"}),
    ),
    Case(
        "group-patch-bad-member-filter",
        "PATCH",
        "/Groups/{gid}",
        400,
        "invalidPath",
        ["members"],
        body=patch({"op": "remove", "path": 'members[value eq "x"'}),
    ),
    Case(
        "group-patch-member-filter-unknown-sub",
        "PATCH",
        "/Groups/{gid}",
        400,
        "invalidPath",
        ["colour"],
        body=patch({"op": "remove", "path": 'members[colour eq "x"]'}),
    ),
    Case(
        "group-put-no-displayname",
        "PUT",
        "/Groups/{gid}",
        400,
        "invalidValue",
        ["displayName"],
        body={"schemas": [GROUP_URN], "members": []},
    ),
    # ---- search and lists
    Case("search-body-array", "POST", "/Users/.search", 400, None, [], body=[]),
    Case("search-bad-filter", "POST", "/Users/.search", 400, "invalidFilter", ["nope"], body={"filter": 'nope eq "x"'}),
    Case("search-count-not-int", "POST", "/Users/.search", 400, "invalidValue", ["count"], body={"count": "many"}),
    Case("list-bad-sortorder", "GET", "/Users?sortOrder=sideways", 400, "invalidValue", ["sortOrder"]),
    Case("list-bad-startindex", "GET", "/Users?startIndex=first", 400, "invalidValue", ["startIndex"]),
    # ---- bulk bodies
    Case("bulk-not-object", "POST", "/Bulk", 400, "invalidSyntax", [], body=[]),
    Case("bulk-no-schemas", "POST", "/Bulk", 400, "invalidSyntax", ["schemas"], body={"Operations": []}),
    Case(
        "bulk-operations-not-list",
        "POST",
        "/Bulk",
        400,
        "invalidSyntax",
        ["Operations"],
        body={"schemas": [BULK_URN], "Operations": {}},
    ),
    Case(
        "bulk-fail-on-errors-zero",
        "POST",
        "/Bulk",
        400,
        "invalidValue",
        ["failOnErrors"],
        body={"schemas": [BULK_URN], "failOnErrors": 0, "Operations": []},
    ),
    Case(
        "bulk-duplicate-bulkid",
        "POST",
        "/Bulk",
        400,
        "invalidValue",
        ["bulkId"],
        body={
            "schemas": [BULK_URN],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": user_body("b1@example.com")},
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": user_body("b2@example.com")},
            ],
        },
    ),
]


async def setup_victims(scim: Scim) -> dict[str, str]:
    resp, victim = await scim.post(
        "/Users",
        user_body(
            "victim@example.com",
            title="Original",
            displayName="Victim",
            name={"givenName": "Vic", "familyName": "Tim"},
            emails=[{"type": "work", "value": "victim@example.com", "primary": True}],
            **{ENTERPRISE_URN: {"department": "Dept"}},
        ),
    )
    assert resp.status == 201, victim
    resp, bystander = await scim.post("/Users", user_body("bystander@example.com"))
    assert resp.status == 201, bystander
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Victims", "members": [{"value": victim["id"]}]}
    )
    assert resp.status == 201, group
    return {"uid": victim["id"], "gid": group["id"], "bystander": bystander["id"]}


def snapshot_db(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
        for table in ("employees", "teams", "team_members")
    }


async def snapshot_scim(scim: Scim, ids: dict[str, str]) -> dict[str, Any]:
    out = {}
    for key, path in (
        ("user", f"/Users/{ids['uid']}"),
        ("group", f"/Groups/{ids['gid']}"),
        ("users", "/Users"),
        ("groups", "/Groups"),
    ):
        resp, data = await scim.get(path)
        assert resp.status == 200, data
        out[key] = data
    return out


async def send(client: TestClient, case: Case, ids: dict[str, str]) -> tuple[Any, Any]:
    path = BASE + case.path.format(**ids)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": case.content_type}
    if case.raw is not None:
        data: bytes | None = case.raw
    elif case.body is not None:
        data = json.dumps(case.body).encode()
    else:
        data = None
    resp = await client.request(case.method, path, data=data, headers=headers)
    text = await resp.text()
    return resp, (json.loads(text) if text else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input(case: Case, client: TestClient, scim: Scim, demo_db: sqlite3.Connection) -> None:
    ids = await setup_victims(scim)
    rows_before = snapshot_db(demo_db)
    scim_before = await snapshot_scim(scim, ids)

    resp, data = await send(client, case, ids)

    assert resp.status != 500, data
    assert resp.status == case.status, data
    assert resp.content_type == SCIM_TYPE
    assert data["schemas"] == [ERROR_URN], data
    assert data["status"] == str(case.status), data
    if case.scim_type is not None:
        assert data.get("scimType") == case.scim_type, data
    for word in case.mentions:
        assert word.lower() in data["detail"].lower(), (word, data)

    assert snapshot_db(demo_db) == rows_before, "the app's rows changed"
    assert await snapshot_scim(scim, ids) == scim_before, "the gateway's view changed"


# ---------------------------------------------------------------- size limit


@pytest.fixture
async def small_client(aiohttp_client: Any, data_dir: Path) -> TestClient:
    settings = demo_settings(data_dir, limits=LimitsConfig(max_body_bytes=10_000, max_string_chars=10_000))
    return await aiohttp_client(create_app(settings))


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/Users"), ("PATCH", "/Users/{uid}"), ("PUT", "/Users/{uid}"), ("POST", "/Bulk"), ("POST", "/Users/.search")],
)
async def test_body_over_the_size_limit_is_413(
    small_client: TestClient, demo_db: sqlite3.Connection, method: str, path: str
) -> None:
    scim = Scim(small_client)
    resp, user = await scim.post("/Users", user_body("small@example.com", title="Kept"))
    assert resp.status == 201, user
    rows_before = snapshot_db(demo_db)
    padding = "x" * 12_000
    bodies = {
        "/Users": user_body("big@example.com", title=padding),
        "/Users/{uid}": user_body("small@example.com", title=padding)
        if method == "PUT"
        else {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": padding}]},
        "/Bulk": {
            "schemas": [BULK_URN],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "b", "data": user_body("big@example.com", title=padding)}
            ],
        },
        "/Users/.search": {"filter": f'userName eq "{padding}"'},
    }
    resp = await small_client.request(
        method,
        BASE + path.format(uid=user["id"]),
        data=json.dumps(bodies[path]).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE},
    )
    text = await resp.text()
    assert resp.status == 413, text
    data = json.loads(text)
    assert resp.content_type == SCIM_TYPE
    assert data["schemas"] == [ERROR_URN]
    assert data["status"] == "413"
    assert "10000" in data["detail"].replace(",", "").replace("_", ""), data
    assert snapshot_db(demo_db) == rows_before
    resp, got = await scim.get(f"/Users/{user['id']}")
    assert got["title"] == "Kept"
    # Just under the limit is fine.
    resp, data = await scim.post("/Users", user_body("fits@example.com", title="y" * 9_000))
    assert resp.status == 201, data


async def test_spc_advertises_the_configured_limit(small_client: TestClient) -> None:
    resp, data = await Scim(small_client).get("/ServiceProviderConfig")
    assert data["bulk"]["maxPayloadSize"] == 10_000


# ---------------------------------------------------------------- never a 500


WEIRD_BODIES: list[Any] = [
    None,
    0,
    1.5,
    True,
    "",
    [],
    {},
    [[]],
    {"schemas": None},
    {"schemas": "x"},
    {"userName": []},
    {"userName": {"a": 1}},
    {"userName": "ok@example.com", "name": []},
    {"userName": "ok@example.com", "emails": [None, 5]},
    {"userName": "ok@example.com", "emails": [{"value": 5}]},
    {"userName": "ok@example.com", "emails": [{"primary": "yes", "value": "a@b"}]},
    {"userName": "ok@example.com", ENTERPRISE_URN: []},
    {"userName": "ok@example.com", ENTERPRISE_URN: {"manager": 5}},
    {"userName": "ok@example.com", ENTERPRISE_URN: {"manager": []}},
    {"userName": "ok@example.com", "meta": "x", "id": 5},
    {"userName": "x" * 5000},
    {"userName": "\u0000nul@example.com"},
    {"Operations": None},
    {"Operations": [None]},
    {"schemas": [PATCH_URN], "Operations": [{"op": None}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "add", "value": None}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "", "value": {}}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "emails", "value": 5}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "emails[type eq 5].value", "value": "a"}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": {"value": None}}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "name", "value": [1]}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {"name.givenName": 5}}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "value": {ENTERPRISE_URN: 5}}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": ENTERPRISE_URN, "value": "x"}]},
    {"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": USER_URN}]},
]


@pytest.mark.parametrize("target", ["/Users", "/Users/{uid}", "/Groups", "/Groups/{gid}", "/Bulk", "/Users/.search"])
async def test_never_a_500(client: TestClient, scim: Scim, demo_db: sqlite3.Connection, target: str) -> None:
    ids = await setup_victims(scim)
    methods = ["PATCH", "PUT"] if "{" in target else ["POST"]
    for method in methods:
        for body in WEIRD_BODIES:
            rows_before = snapshot_db(demo_db)
            resp = await client.request(
                method,
                BASE + target.format(**ids),
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE},
            )
            text = await resp.text()
            assert resp.status < 500, (method, target, body, text)
            assert resp.content_type == SCIM_TYPE, (method, target, body)
            if resp.status >= 400:
                assert json.loads(text)["schemas"] == [ERROR_URN], text
                assert snapshot_db(demo_db) == rows_before, (method, target, body)


async def test_weird_query_strings_never_500(scim: Scim) -> None:
    await setup_victims(scim)
    for query in (
        "filter=%ff%fe",
        "filter=" + "(" * 200 + 'userName eq "x"' + ")" * 200,
        "filter=" + "a" * 5000,
        "count=-5",
        "startIndex=-1",
        "count=1e3",
        "sortBy=",
        "attributes=,,,",
        "excludedAttributes=urn:x:y",
        "filter=userName%20eq%20%22a%5C%22b%22",
        "filter=emails[type%20eq%20%22work%22]].value",
    ):
        resp, data = await scim.get(f"/Users?{query}")
        assert resp.status < 500, (query, data)
        assert resp.content_type == SCIM_TYPE, query
        if resp.status >= 400:
            assert data["schemas"] == [ERROR_URN]


async def test_a_nul_character_is_a_clear_400_on_every_store(scim: Scim, demo_db: sqlite3.Connection) -> None:
    """PostgreSQL cannot keep U+0000 in text (found by running these tests on the PostgreSQL store): refused at the edge."""
    resp, err = await scim.post("/Users", {"schemas": [USER_URN], "userName": "nul\u0000byte"})
    assert resp.status == 400 and err["scimType"] == "invalidValue" and "userName" in err["detail"] and "NUL" in err["detail"]
    resp, err = await scim.get("/Users/abc%00def")
    assert resp.status == 400 and "NUL" in err["detail"]
    resp, err = await scim.get("/Users?filter=userName%20eq%20%22a%00%22")
    assert resp.status == 400 and "NUL" in err["detail"]
    assert count(demo_db, "employees") == 0


async def test_own_id_echoed_in_a_patch_is_accepted_with_or_without_a_path(scim: Scim) -> None:
    """The id a client addresses may come back in the value (Okta does); any other id is refused in both forms."""
    ids = await setup_victims(scim)
    uid = ids["uid"]
    for n, operation in enumerate(
        [{"op": "replace", "value": {"id": uid, "title": "t0"}}, {"op": "replace", "path": "id", "value": uid}]
    ):
        resp, data = await scim.patch(f"/Users/{uid}", [operation, {"op": "replace", "path": "title", "value": f"t{n}"}])
        assert resp.status == 200 and data["id"] == uid and data["title"] == f"t{n}", data
    for operation in [{"op": "replace", "value": {"id": "other"}}, {"op": "replace", "path": "id", "value": "other"}]:
        resp, data = await scim.patch(f"/Users/{uid}", [operation])
        assert resp.status == 400 and data["scimType"] == "mutability" and "id" in data["detail"], data
    resp, data = await scim.get(f"/Users/{uid}")
    assert data["title"] == "t1", data


async def test_a_5000_digit_integer_is_refused_naming_the_attribute_not_the_implementation(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection
) -> None:
    """It named a Python setting (int max str digits); an ETag of that many digits was a 500."""
    ids = await setup_victims(scim)
    uid, big = ids["uid"], "9" * 5000
    rows_before = snapshot_db(demo_db)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE}
    raw = f'{{"schemas": ["{USER_URN}"], "userName": "big@example.com", "title": {big}}}'
    answers = []
    for method, path, data in [
        ("POST", "/Users", raw),
        (
            "PATCH",
            f"/Users/{uid}",
            f'{{"schemas": ["{PATCH_URN}"], "Operations": [{{"op": "add", "value": {{"title": {big}}}}}]}}',
        ),
        ("POST", "/Users/.search", f'{{"schemas": ["{SEARCH_URN}"], "count": {big}}}'),
        (
            "POST",
            "/Bulk",
            f'{{"schemas": ["{BULK_URN}"], "Operations": [{{"method": "POST", "path": "/Users", "data": {raw}}}]}}',
        ),
    ]:
        resp = await client.request(method, BASE + path, data=data, headers=headers)
        answers.append((resp.status, resp.content_type, json.loads(await resp.text()), "title" if "title" in data else "count"))
    for status, content_type, data, attribute in answers:
        assert (status, content_type, data["scimType"]) == (400, SCIM_TYPE, "invalidValue"), data
        assert attribute in data["detail"] and "5000 digits" in data["detail"], data
    resp, data = await scim.get("/Users?filter=" + q(f"title eq {'9' * 1001}"))
    assert resp.status == 400 and data["scimType"] == "invalidFilter" and "1001 digits" in data["detail"], data
    resp, data = await scim.patch(f"/Users/{uid}", [{"op": "remove", "path": f"emails[value eq {big}]"}])
    assert resp.status == 400 and data["scimType"] == "invalidPath" and "5000 digits" in data["detail"], data
    # An ETag the gateway never issued, however long, matches no version; a count past any page is clamped.
    resp, data = await scim.patch(
        f"/Users/{uid}", [{"op": "add", "path": "title", "value": "x"}], headers={"If-Match": f'W/"{big}"'}
    )
    assert resp.status == 412, data
    resp, data = await scim.get(f"/Users/{uid}", headers={"If-None-Match": f'W/"{big}"'})
    assert resp.status == 200, data
    resp, data = await scim.get(f"/Users?count={big}&startIndex={big}")
    assert resp.status == 200 and data["Resources"] == [], data
    bulk = {"schemas": [BULK_URN], "Operations": [{"method": "PATCH", "path": f"/Users/{uid}", "version": f'W/"{big}"',
            "data": {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "title", "value": "x"}]}}]}  # fmt: skip
    resp, data = await scim.post("/Bulk", bulk)
    assert resp.status == 200 and data["Operations"][0]["status"] == "412", data
    for text in [json.dumps(a[2]) for a in answers]:
        assert "sys." not in text and "digits" in text and "4300" not in text and "str_digits" not in text, text
    assert snapshot_db(demo_db) == rows_before
