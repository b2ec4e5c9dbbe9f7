"""Hostile input near the limits, and the plain regression tests that pin each bug the property tests found
(the harness and the other property tests: tests/integration/hostile.py and the test_hostile_*.py beside it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import event, given
from hypothesis import strategies as st

from tests.conftest import BASE, PATCH_URN, TOKEN, USER_URN, user_body
from tests.integration.hostile import (
    BULK_URN,
    ERROR_URN,
    SEARCH_URN,
    SURROGATE_BODIES,
    Gateway,
    _limit_request,
    all_rows,
    assert_scim_error,
    attack,
    gw,
    hostile,
    send_raw,
    small_gw,
)

__all__ = ["gw", "small_gw"]  # the fixtures, for this module's tests


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=400)
@given(data=st.data())
def test_limits_never_5xx_and_refusals_change_nothing(small_gw: Gateway, data: st.DataObject) -> None:
    gw = small_gw
    method, path, body, query, over, what = _limit_request(gw, data)
    reply = attack(gw, lambda: gw.request(method, path, body, params=query or None))
    event(f"limit {what}: {'over' if over else 'within'}")
    if what == "bulk-ops" and over is None and reply.status == 200:
        results = reply.data["Operations"]
        assert all(int(r["status"]) < 500 for r in results), reply
    if over is not None:
        # Over the limit: that limit's error.
        # (What a body's JSON breaks, syntax or a NUL character, is refused before: a 400 invalidSyntax or invalidValue.)
        assert reply.status == over or (
            reply.status == 400 and reply.data.get("scimType") in ("invalidSyntax", "invalidValue")
        ), (what, reply)
        if reply.status != over:
            return
        limit_names = {
            413: ("max_patch", "maxOperations", "max_body_bytes"),
            414: ("max_url_bytes",),
            400: ("max_attribute_names",),
        }[over]
        assert any(name in reply.data["detail"] for name in limit_names), reply
    else:
        assert not (reply.status in (413, 414) or "max_attribute_names" in reply.text), (what, reply)


# ---------------------------------------------------------------- regressions: bugs these tests found
#
# Plain tests on the ordinary fixtures (tests/conftest.py), one per bug, each pinning the
# input that gave a 500 before the fix: the answer is a SCIM 400 naming the problem,
# and the app's and the store's rows are as they were.


@pytest.mark.both_stores
@pytest.mark.parametrize("attribute", ["userName", "addresses.postalCode", 'emails[value eq "\\u0000"].type', "displayName"])
async def test_regression_nul_escape_in_a_filter_value_is_invalid_filter(scim: Any, attribute: str) -> None:
    # Was: 500 on the PostgreSQL store (CharacterNotInRepertoireError): the filter's "\u0000" escape decodes to NUL,
    # which the URL's and the body's NUL checks cannot see. Found by test_filters_never_5xx.
    text = f'{attribute} eq "a\\u0000"' if "[" not in attribute else f'{attribute} eq "work"'
    resp, data = await scim.get("/Users", params={"filter": text})
    assert_scim_error(resp.status, resp.content_type, data, 400, "invalidFilter", "NUL")
    resp, data = await scim.post("/Users/.search", {"schemas": [SEARCH_URN], "filter": text})
    assert_scim_error(resp.status, resp.content_type, data, 400, "invalidFilter", "NUL")


async def test_regression_create_asking_only_for_id_answers_201(scim: Any, data_dir: Path) -> None:
    # Was: 500 after the user was created (KeyError: the Location header was read from the projected body,
    # which `attributes=id` leaves without meta). Found by test_limits_never_5xx_and_refusals_change_nothing.
    resp, data = await scim.post("/Users?attributes=id", user_body("only-id@example.com"))
    assert resp.status == 201, data
    assert set(data) == {"schemas", "id"} and resp.headers["Location"].endswith(f"/Users/{data['id']}"), (
        data,
        dict(resp.headers),
    )
    resp, got = await scim.get(resp.headers["Location"].partition("/scim/v2")[2])
    assert resp.status == 200 and got["userName"] == "only-id@example.com", got


async def test_regression_huge_start_index_is_an_empty_page(scim: Any) -> None:
    # Was: 500, OverflowError (Python int too large to convert to SQLite INTEGER) from the OFFSET.
    resp, user = await scim.post("/Users", user_body("page@example.com"))
    assert resp.status == 201, user
    for start in (str(10**30), str(2**63), str(2**63 - 1)):
        resp, data = await scim.get(f"/Users?startIndex={start}")
        assert resp.status == 200, data
        assert data["totalResults"] == 1 and data["Resources"] == [], data
        resp, data = await scim.post("/Users/.search", {"schemas": [SEARCH_URN], "startIndex": int(start)})
        assert resp.status == 200, data
        assert data["Resources"] == [], data


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"])
async def test_regression_datetime_out_of_range_in_utc_is_invalid_filter(scim: Any, value: str) -> None:
    # Was: 500, OverflowError (date value out of range) converting the value to UTC for SQL.
    for path in ("/Users", "/Groups"):
        resp, data = await scim.get(path, params={"filter": f'meta.lastModified gt "{value}"'})
        assert_scim_error(resp.status, resp.content_type, data, 400, "invalidFilter", "dateTime", value[:10])


@pytest.mark.parametrize("op", ["co", "sw", "ew"])
async def test_regression_string_operator_on_datetime_is_invalid_filter(scim: Any, op: str) -> None:
    # Was: 500, KeyError in the SQL translation (no SQL operator for co/sw/ew on a dateTime).
    resp, data = await scim.get("/Users", params={"filter": f'meta.created {op} "2024-01-01T00:00:00Z"'})
    assert_scim_error(resp.status, resp.content_type, data, 400, "invalidFilter", "meta.created", op)
    resp, data = await scim.post("/Groups/.search", {"filter": f'meta.lastModified {op} "2024"'})
    assert_scim_error(resp.status, resp.content_type, data, 400, "invalidFilter", "meta.lastModified", op)


@pytest.mark.parametrize("target", ["POST /Users", "PUT /Users/{uid}", "PATCH /Users/{uid}", "POST /Bulk", "POST /Users/.search"])
@pytest.mark.parametrize("depth", [500, 990, 100_000])
async def test_regression_deeply_nested_body_is_invalid_syntax(
    client: TestClient, scim: Any, data_dir: Path, target: str, depth: int
) -> None:
    # Was: 500, RecursionError: json.loads past ~1000 levels, the gateway's own recursive code (Bulk from ~500 levels, the rest ~990).
    resp, user = await scim.post("/Users", user_body("deep@example.com", title="Kept"))
    assert resp.status == 201, user
    before = all_rows(data_dir)
    method, path = target.split()
    nest = "[" * depth + "]" * depth
    bodies = {
        "/Users": f'{{"schemas": ["{USER_URN}"], "userName": "deeper@example.com", "title": {nest}}}',
        "/Users/{uid}": f'{{"schemas": ["{USER_URN}"], "userName": "deep@example.com", "title": {nest}}}'
        if method == "PUT"
        else f'{{"schemas": ["{PATCH_URN}"], "Operations": [{{"op": "replace", "path": "title", "value": {nest}}}]}}',
        "/Bulk": f'{{"schemas": ["{BULK_URN}"], "Operations": [{{"method": "POST", "path": "/Users", "bulkId": "a", "data": {nest}}}]}}',
        "/Users/.search": f'{{"filter": {nest}}}',
    }
    status, ctype, data = await send_raw(client, method, path.format(uid=user["id"]), bodies[path].encode())
    assert_scim_error(status, ctype, data, 400, "invalidSyntax", "nests deeper")
    assert all_rows(data_dir) == before


@pytest.mark.parametrize("case", sorted(SURROGATE_BODIES))
async def test_regression_lone_surrogate_is_invalid_syntax(client: TestClient, scim: Any, data_dir: Path, case: str) -> None:
    # Was: 500, UnicodeEncodeError (surrogates not allowed) writing the text to SQLite.
    resp, user = await scim.post("/Users", user_body("surrogate@example.com", title="Kept"))
    assert resp.status == 201, user
    before = all_rows(data_dir)
    method, path, raw = SURROGATE_BODIES[case]
    status, ctype, data = await send_raw(client, method, path.format(uid=user["id"]), raw)
    assert_scim_error(status, ctype, data, 400, "invalidSyntax", "surrogate")
    assert all_rows(data_dir) == before
    # A paired surrogate escape is ordinary Unicode and fine.
    status, ctype, data = await send_raw(client, "POST", "/Users", b'{"userName": "smile\\ud83d\\ude00@example.com"}')
    assert status == 201, data
    assert data["userName"] == "smile\U0001f600@example.com"


@pytest.mark.parametrize("header", ["Authorization", "Content-Type"])
async def test_regression_header_bytes_that_are_not_utf8(client: TestClient, data_dir: Path, header: str) -> None:
    # Was: 500. aiohttp decodes such bytes with surrogateescape; hashing the token (UnicodeEncodeError) and
    # rendering a detail that quotes the Content-Type (the same, inside the error middleware) both failed.
    before = all_rows(data_dir)
    headers = [(b"Authorization", f"Bearer {TOKEN}".encode()), (b"Content-Type", b"application/scim+json")]
    headers = [
        (name, (b"Bearer tok\xff\xfe" if name == b"Authorization" else b"text/\xff\xfe"))
        if name.decode() == header
        else (name, value)
        for name, value in headers
    ]
    body = json.dumps(user_body("bytes@example.com")).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = [
        f"POST {BASE}/Users HTTP/1.1".encode(),
        b"Host: gateway",
        b"Connection: close",
        b"Content-Length: %d" % len(body),
        *(name + b": " + value for name, value in headers),
    ]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    fields, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1])
    expected = 401 if header == "Authorization" else 415
    assert status == expected, answer
    assert b"content-type: application/scim+json" in fields.lower(), answer
    data = json.loads(payload)
    assert data["schemas"] == [ERROR_URN] and data["status"] == str(expected), data
    if header == "Content-Type":
        # The detail names the media type it refused, its undecodable bytes as escapes.
        assert "text/" in data["detail"] and "scimType" not in data, data
    assert all_rows(data_dir) == before
