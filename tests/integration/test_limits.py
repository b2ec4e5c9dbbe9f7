"""Limits, table-driven: each over-limit request gets a clear SCIM error (its status, the scimType where
RFC 7644 defines one, a detail naming the limit and the value sent) and changes nothing: not the demo
app's rows, not the correlation store's (resources, members, journal).

The gateway under test runs with small limits (LIMITS) so the requests stay small; one test checks the
generous defaults that Entra's batched membership PATCHes need.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import LimitsConfig
from tests.conftest import BASE, GROUP_URN, PATCH_URN, TOKEN, Scim, demo_settings, user_body
from tests.demo_rows import q

ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
BULK_URN = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SCIM_TYPE = "application/scim+json"

LIMITS = LimitsConfig(
    max_body_bytes=20_000,
    bulk_max_operations=5,
    default_page_size=3,
    max_page_size=10,
    max_patch_operations=5,
    max_patch_values=20,
    max_attribute_names=5,
    max_url_bytes=8192,
    max_string_chars=256,
)


def patch(*operations: Any) -> dict[str, Any]:
    return {"schemas": [PATCH_URN], "Operations": list(operations)}


def bulk(*operations: Any) -> dict[str, Any]:
    return {"schemas": [BULK_URN], "Operations": list(operations)}


def bulk_post(i: int) -> dict[str, Any]:
    return {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": user_body(f"bulk{i}@example.com")}


def members(n: int) -> list[dict[str, str]]:
    return [{"value": f"no-such-member-{i}"} for i in range(n)]


def nested_not(depth: int) -> str:
    return "not (" * depth + 'displayName eq "x"' + ")" * depth


@dataclass
class Case:
    """One over-limit request; `path` may hold {uid} and {gid}; `mentions` must all appear in the detail."""

    id: str
    method: str
    path: str
    status: int
    scim_type: str | None
    mentions: list[str]
    body: Any = None
    raw: bytes | None = None
    chunked: bool = False
    inner: int | None = None  # a Bulk operation's own status (the Bulk request itself answers 200)


NAMES6 = "userName,title,emails,name,active,displayName"
BIG_TITLE = "x" * 25_000
BIG_CREATE = json.dumps(user_body("big@example.com", title=BIG_TITLE)).encode()
LONG_FILTER = 'userName eq "' + "a" * 5000 + '"'

CASES = [
    # ---- body size (max_body_bytes, advertised as Bulk maxPayloadSize): refused before the body is read
    Case(
        "body-size-create",
        "POST",
        "/Users",
        413,
        None,
        ["max_body_bytes", "20000", "maxPayloadSize", f"{len(BIG_CREATE)} bytes"],
        raw=BIG_CREATE,
    ),
    Case("body-size-chunked", "POST", "/Users", 413, None, ["max_body_bytes", "20000", "chunked"], raw=BIG_CREATE, chunked=True),
    Case(
        "body-size-put",
        "PUT",
        "/Users/{uid}",
        413,
        None,
        ["max_body_bytes", "20000"],
        body=user_body("victim@example.com", title=BIG_TITLE),
    ),
    Case(
        "body-size-patch",
        "PATCH",
        "/Users/{uid}",
        413,
        None,
        ["max_body_bytes", "20000"],
        body=patch({"op": "replace", "path": "title", "value": BIG_TITLE}),
    ),
    Case(
        "bulk-payload-size",
        "POST",
        "/Bulk",
        413,
        None,
        ["max_body_bytes", "20000", "maxPayloadSize"],
        body=bulk({**bulk_post(1), "data": user_body("b@example.com", title=BIG_TITLE)}),
    ),
    # ---- Bulk maxOperations (RFC 7644 §3.7.4: 413, no scimType)
    Case(
        "bulk-operations",
        "POST",
        "/Bulk",
        413,
        None,
        ["maxOperations", "5", "6 operations"],
        body=bulk(*(bulk_post(i) for i in range(6))),
    ),
    # ---- filters: length and nesting depth (gateway/scim/filter.py)
    Case(
        "filter-length-get",
        "GET",
        "/Users?filter=userName%20eq%20%22" + "a" * 5000 + "%22",
        400,
        "invalidFilter",
        ["limit of 4096", f"{len(LONG_FILTER)} characters"],
    ),
    Case(
        "filter-length-search",
        "POST",
        "/Users/.search",
        400,
        "invalidFilter",
        ["limit of 4096", f"{len(LONG_FILTER)} characters"],
        body={"schemas": [SEARCH_URN], "filter": LONG_FILTER},
    ),
    # scim2-models refuses the nesting itself; its detail quotes the filter sent.
    Case(
        "filter-depth",
        "POST",
        "/Groups/.search",
        400,
        "invalidFilter",
        ["more than 32", "not (not (not"],
        body={"schemas": [SEARCH_URN], "filter": nested_not(40)},
    ),
    # ---- PATCH: operations and values per request (413, like Bulk maxOperations)
    Case(
        "patch-operations",
        "PATCH",
        "/Users/{uid}",
        413,
        None,
        ["max_patch_operations", "5", "6 operations"],
        body=patch(*({"op": "replace", "path": "title", "value": f"t{i}"} for i in range(6))),
    ),
    Case(
        "patch-values",
        "PATCH",
        "/Groups/{gid}",
        413,
        None,
        ["max_patch_values", "20", "21 values"],
        body=patch({"op": "add", "path": "members", "value": members(21)}),
    ),
    Case(
        "patch-values-across-operations",
        "PATCH",
        "/Groups/{gid}",
        413,
        None,
        ["max_patch_values", "20", "22 values"],
        body=patch(
            {"op": "add", "path": "members", "value": members(11)}, {"op": "remove", "path": "members", "value": members(11)}
        ),
    ),
    Case(
        "patch-values-pathless",
        "PATCH",
        "/Groups/{gid}",
        413,
        None,
        ["max_patch_values", "20", "22 values"],
        body=patch({"op": "add", "value": {"displayName": "Renamed", "members": members(21)}}),
    ),
    Case(
        "bulk-patch-operations",
        "POST",
        "/Bulk",
        200,
        None,
        ["max_patch_operations", "6 operations"],
        body=bulk(
            {
                "method": "PATCH",
                "path": "/Users/{uid}",
                "data": patch(*({"op": "replace", "path": "title", "value": "t"} for _ in range(6))),
            }
        ),
    ),
    # ---- attributes / excludedAttributes: refused before the write, not after it
    Case(
        "attributes-get",
        "GET",
        f"/Users?attributes={NAMES6}",
        400,
        "invalidValue",
        ["attributes", "max_attribute_names", "5", "6 attributes"],
    ),
    Case(
        "excluded-attributes-get-one",
        "GET",
        f"/Users/{{uid}}?excludedAttributes={NAMES6}",
        400,
        "invalidValue",
        ["excludedAttributes", "max_attribute_names", "6 attributes"],
    ),
    Case(
        "attributes-create",
        "POST",
        f"/Users?attributes={NAMES6}",
        400,
        "invalidValue",
        ["attributes", "6 attributes"],
        body=user_body("created-anyway@example.com"),
    ),
    Case(
        "attributes-patch",
        "PATCH",
        f"/Users/{{uid}}?attributes={NAMES6}",
        400,
        "invalidValue",
        ["attributes", "6 attributes"],
        body=patch({"op": "replace", "path": "title", "value": "Changed anyway"}),
    ),
    Case(
        "attributes-search-list",
        "POST",
        "/Users/.search",
        400,
        "invalidValue",
        ["attributes", "6 attributes"],
        body={"schemas": [SEARCH_URN], "attributes": NAMES6.split(",")},
    ),
    Case(
        "excluded-attributes-search-root",
        "POST",
        "/.search",
        400,
        "invalidValue",
        ["excludedAttributes", "6 attributes"],
        body={"schemas": [SEARCH_URN], "excludedAttributes": NAMES6},
    ),
    # ---- JSON nesting (MAX_JSON_DEPTH in gateway/http/body.py)
    Case(
        "json-depth",
        "POST",
        "/Users",
        400,
        "invalidSyntax",
        ["deeper than 64 levels"],
        raw=('{"userName": "deep@example.com", "title": ' + "[" * 70 + "]" * 70 + "}").encode(),
    ),
    # ---- startIndex and count that are no integers
    Case("start-index-not-integer", "GET", "/Users?startIndex=1e3", 400, "invalidValue", ["startIndex", "1e3"]),
    Case("count-not-integer", "POST", "/Users/.search", 400, "invalidValue", ["count", "lots"], body={"count": "lots"}),
    # ---- string values (max_string_chars): 400 invalidValue naming the attribute, the limit and the length
    Case(
        "string-create",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["userName", "max_string_chars 256", "257 characters"],
        body=user_body("u" * 257),
    ),
    Case(
        "string-create-sub",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["name.givenName", "max_string_chars 256"],
        body=user_body("sub@example.com", name={"givenName": "g" * 300}),
    ),
    Case(
        "string-create-element",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["emails.value", "max_string_chars 256"],
        body=user_body("el@example.com", emails=[{"type": "work", "value": "e" * 300}]),
    ),
    Case(
        "string-password",
        "POST",
        "/Users",
        400,
        "invalidValue",
        ["password", "max_string_chars 256"],
        body=user_body("pw@example.com", password="p" * 300),
    ),
    Case(
        "string-put",
        "PUT",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["title", "max_string_chars 256"],
        body=user_body("victim@example.com", title="t" * 257),
    ),
    Case(
        "string-patch-path",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["title", "max_string_chars 256"],
        body=patch({"op": "replace", "path": "title", "value": "t" * 257}),
    ),
    Case(
        "string-patch-pathless",
        "PATCH",
        "/Users/{uid}",
        400,
        "invalidValue",
        ["name.familyName", "max_string_chars 256"],
        body=patch({"op": "replace", "value": {"name": {"familyName": "f" * 257}}}),
    ),
    Case(
        "string-patch-group",
        "PATCH",
        "/Groups/{gid}",
        400,
        "invalidValue",
        ["displayName", "max_string_chars 256"],
        body=patch({"op": "replace", "path": "displayName", "value": "d" * 257}),
    ),
    Case(
        "bulk-string-post",
        "POST",
        "/Bulk",
        200,
        "invalidValue",
        ["userName", "max_string_chars 256"],
        inner=400,
        body=bulk({**bulk_post(1), "data": user_body("b" * 300)}),
    ),
    Case(
        "bulk-string-patch",
        "POST",
        "/Bulk",
        200,
        "invalidValue",
        ["title", "max_string_chars 256"],
        inner=400,
        body=bulk({"method": "PATCH", "path": "/Users/{uid}", "data": patch({"op": "add", "path": "title", "value": "t" * 300})}),
    ),
    # ---- the URL (path and query string, percent-encoded): the gateway's SCIM 414 below aiohttp's own cap
    Case(
        "url-get",
        "GET",
        "/Users?filter=" + "a" * 9000,
        414,
        None,
        ["max_url_bytes", "8192", f"{len(BASE + '/Users?filter=') + 9000} bytes"],
    ),
    Case(
        "url-create",
        "POST",
        "/Users?aadOptscim062020=" + "a" * 9000,
        414,
        None,
        ["max_url_bytes", "8192"],
        body=user_body("long-url@example.com"),
    ),
    Case("url-delete", "DELETE", "/Users/{uid}?x=" + "a" * 9000, 414, None, ["max_url_bytes"]),
    Case("url-not-under-base", "GET", "!/nowhere?" + "a" * 9000, 414, None, ["max_url_bytes", "9009 bytes"]),
]


def all_rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for db_name, tables in (
        ("demo.db", ("employees", "teams", "team_members")),
        ("gateway.db", ("resources", "members", "journal")),
    ):
        db = sqlite3.connect(data_dir / db_name)
        try:
            for table in tables:
                out[f"{db_name}:{table}"] = sorted(map(tuple, db.execute(f"SELECT * FROM {table}")), key=repr)
        finally:
            db.close()
    return out


@pytest.fixture
async def small(aiohttp_client: Any, data_dir: Path) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(demo_settings(data_dir, limits=LIMITS)))


async def victims(scim: Scim) -> dict[str, str]:
    resp, victim = await scim.post("/Users", user_body("victim@example.com", title="Original"))
    assert resp.status == 201, victim
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Victims", "members": [{"value": victim["id"]}]}
    )
    assert resp.status == 201, group
    return {"uid": victim["id"], "gid": group["id"]}


async def _chunks(raw: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(raw), 4096):
        yield raw[i : i + 4096]


def assert_error(status: int, content_type: str, data: Any, case: Case, expected: int | None = None) -> None:
    expected = expected or case.status
    assert status == expected, data
    assert content_type == SCIM_TYPE
    assert data["schemas"] == [ERROR_URN], data
    assert data["status"] == str(expected), data
    assert data.get("scimType") == case.scim_type, data
    for word in case.mentions:
        assert word in data["detail"], (word, data)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_over_the_limit_is_refused_and_changes_nothing(case: Case, small: TestClient, data_dir: Path) -> None:
    ids = await victims(Scim(small))
    before = all_rows(data_dir)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": SCIM_TYPE}
    body = json.loads(json.dumps(case.body).replace("{uid}", ids["uid"])) if case.body is not None else None
    data: Any = case.raw if case.raw is not None else (json.dumps(body).encode() if body is not None else None)
    if case.chunked:
        data = _chunks(data)
    path = case.path.format(**ids)
    url = path[1:] if path.startswith("!") else BASE + path  # "!": a path outside the SCIM base
    resp = await asyncio.wait_for(small.request(case.method, url, data=data, headers=headers), 30)
    text = await resp.text()
    answer = json.loads(text)
    if case.id.startswith(("bulk-patch", "bulk-string")):
        # Bulk answers 200; the operation itself carries the limit's error.
        assert resp.status == 200, answer
        answer = answer["Operations"][0]["response"]
        assert_error(int(answer["status"]), SCIM_TYPE, answer, case, case.inner or 413)
    else:
        assert_error(resp.status, resp.content_type, answer, case)
    assert all_rows(data_dir) == before, "a refused request changed rows"


async def test_count_over_max_page_size_is_clamped(small: TestClient) -> None:
    # RFC 7644 §3.4.2.4 lets a provider return fewer than asked: count is clamped, not refused.
    scim = Scim(small)
    for i in range(12):
        resp, data = await scim.post("/Users", user_body(f"page{i}@example.com"))
        assert resp.status == 201, data
    for query in ("count=5000", f"count={10**30}"):
        resp, data = await scim.get(f"/Users?{query}")
        assert resp.status == 200, data
        assert data["itemsPerPage"] == 10 and len(data["Resources"]) == 10 and data["totalResults"] == 12, data
    resp, data = await scim.get("/Users")
    assert data["itemsPerPage"] == 3, data  # default_page_size
    resp, data = await scim.post("/Users/.search", {"schemas": [SEARCH_URN], "count": 99, "startIndex": -7})
    assert data["itemsPerPage"] == 10 and data["startIndex"] == 1, data  # startIndex below 1 is read as 1
    resp, data = await scim.get(f"/Users?startIndex={2**64}")
    assert resp.status == 200 and data["Resources"] == [] and data["totalResults"] == 12, data


async def test_just_under_each_limit_is_accepted(small: TestClient) -> None:
    """The limits are not off by one: at the limit, the request goes through."""
    scim = Scim(small)
    ids = await victims(scim)
    resp, data = await scim.patch(
        f"/Users/{ids['uid']}", [{"op": "replace", "path": "title", "value": f"t{i}"} for i in range(5)]
    )
    assert resp.status == 200 and data["title"] == "t4", data
    users = []
    for i in range(19):
        resp, user = await scim.post("/Users", user_body(f"m{i}@example.com"))
        users.append({"value": user["id"]})
    resp, data = await scim.patch(
        f"/Groups/{ids['gid']}",
        [{"op": "add", "path": "members", "value": users}, {"op": "replace", "path": "displayName", "value": "V2"}],
    )
    assert resp.status == 200 and len(data["members"]) == 20, data
    resp, data = await scim.post("/Bulk", bulk(*(bulk_post(i) for i in range(5))))
    assert resp.status == 200 and all(op["status"] == "201" for op in data["Operations"]), data
    resp, data = await scim.get(f"/Users?attributes={','.join(NAMES6.split(',')[:5])}")
    assert resp.status == 200, data
    resp, data = await scim.get("/Users?filter=" + 'userName eq "' + "a" * 4000 + '"')
    assert resp.status == 200, data
    resp, data = await scim.post("/Groups/.search", {"schemas": [SEARCH_URN], "filter": nested_not(31)})
    assert resp.status == 200, data
    resp, data = await scim.patch(f"/Users/{ids['uid']}", [{"op": "replace", "value": {"title": "t" * 256}}])
    assert resp.status == 200 and len(data["title"]) == 256, data
    resp, data = await scim.post("/Users", user_body("u" * 256))
    assert resp.status == 201, data


async def test_default_string_limit_refuses_a_900000_character_user_name(client: TestClient, data_dir: Path) -> None:
    """A name too long for any filter to find was accepted; the default (2048) refuses it, and keeps what fits."""
    scim = Scim(client)
    before = all_rows(data_dir)
    resp, data = await scim.post("/Users", user_body("n" * 900_000))
    assert resp.status == 400 and data["scimType"] == "invalidValue", data
    assert "userName" in data["detail"] and "max_string_chars 2048" in data["detail"] and "900000" in data["detail"], data
    assert all_rows(data_dir) == before
    name = "n" * 2048
    resp, data = await scim.post("/Users", user_body(name))
    assert resp.status == 201, data
    resp, found = await scim.get("/Users?filter=" + q(f'userName eq "{name}"'))
    assert resp.status == 200 and [u["id"] for u in found["Resources"]] == [data["id"]], found


async def test_service_provider_config_advertises_only_rfc_fields(small: TestClient) -> None:
    resp, spc = await Scim(small).get("/ServiceProviderConfig")
    assert spc["bulk"] == {"supported": True, "maxOperations": 5, "maxPayloadSize": 20_000}
    assert spc["filter"] == {"supported": True, "maxResults": 10}
    # RFC 7643 §5 has no field for PATCH sizes, attribute lists or URL length: none is invented.
    assert spc["patch"] == {"supported": True}


async def test_default_patch_limits_take_entra_sized_batches(client: TestClient, data_dir: Path) -> None:
    """Defaults: 1000 operations and 10000 values per PATCH pass; one more is a 413 naming the setting."""
    scim = Scim(client)
    ids = await victims(scim)
    ops = [{"op": "Replace", "path": "title", "value": f"t{i}"} for i in range(1000)]
    resp, data = await scim.patch(f"/Users/{ids['uid']}", ops)
    assert resp.status == 200 and data["title"] == "t999", data
    before = all_rows(data_dir)
    resp, data = await scim.patch(f"/Users/{ids['uid']}", [*ops, {"op": "Replace", "path": "title", "value": "too many"}])
    assert resp.status == 413 and "max_patch_operations 1000" in data["detail"] and "1001" in data["detail"], data
    resp, data = await scim.patch(f"/Groups/{ids['gid']}", [{"op": "Remove", "path": "members", "value": members(10_001)}])
    assert resp.status == 413 and "max_patch_values 10000" in data["detail"] and "10001" in data["detail"], data
    assert all_rows(data_dir) == before
