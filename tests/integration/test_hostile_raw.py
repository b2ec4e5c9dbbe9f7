"""Hostile Bulk requests, raw paths and raw header bytes against the live demo app (the harness:
tests/integration/hostile.py)."""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.conftest import BASE, PATCH_URN, TOKEN, user_body
from tests.integration.hostile import (
    ERROR_URN,
    Gateway,
    attack,
    bulk_bodies,
    gw,
    header_bytes,
    hostile,
    patch_bodies,
    segment,
    to_json,
    values,
    weighted,
)

__all__ = ["gw"]  # the fixtures, for this module's tests


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=500)
@given(data=st.data())
def test_bulk_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    body = data.draw(bulk_bodies(gw.ids), label="body")
    # Every operation refused: nothing may have changed (each refused operation is all-or-nothing on its own).
    reply = attack(
        gw,
        lambda: gw.request("POST", "/Bulk", body),
        refused=lambda r: r.status == 200 and all(int(o["status"]) >= 400 for o in r.data["Operations"]),
    )
    if reply.status == 200:
        results = reply.data["Operations"]
        assert isinstance(results, list), reply
        for result in results:
            event(f"bulk op -> {result['status']}")
            assert isinstance(result["status"], str) and result["status"].isdigit(), reply
            assert int(result["status"]) < 500, reply
            if int(result["status"]) >= 400:
                assert result["response"]["schemas"] == [ERROR_URN], reply
                assert result["response"]["status"] == result["status"], reply
                assert isinstance(result["response"].get("detail"), str), reply


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=400)
@given(data=st.data())
def test_raw_paths_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    prefix = data.draw(
        st.sampled_from(
            [BASE] * 5
            + ["/apps/nope/scim/v2", "/apps/demo/scim/v2x", "", "/apps/demo", "/apps/%64emo/scim/v2", "/APPS/demo/scim/v2"]
        ),
        label="prefix",
    )
    parts = data.draw(st.lists(segment, max_size=3), label="segments")
    trailing = data.draw(st.sampled_from(["", "", "/", "//", "?x=%ff", "?attributes=userName"]), label="trailing")
    method = data.draw(
        st.sampled_from(["GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]), label="method"
    )
    body = data.draw(st.one_of(st.none(), st.just(user_body("raw@example.com")), patch_bodies(gw.ids), values), label="body")
    path = prefix + "".join("/" + p.format(**gw.ids) for p in parts) + trailing
    if not path.startswith("/"):
        path = "/" + path
    if len(path) > 60_000:
        return  # over aiohttp's 64 KiB request line its HTTP parser answers (text/plain) before the gateway sees it
    attack(gw, lambda: gw.request_encoded(method, path, body if method not in ("GET", "HEAD") else None))


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=200)
@given(data=st.data())
def test_raw_header_bytes_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    token = f"Bearer {TOKEN}".encode()
    auth = data.draw(
        weighted(
            (70, st.just(token)),
            (10, header_bytes),
            (10, header_bytes.map(lambda b: b"Bearer " + b)),
            (10, header_bytes.map(lambda b: token + b)),
        ),
        label="Authorization",
    )
    ctype = data.draw(
        weighted(
            (60, st.sampled_from([b"application/scim+json", b"application/json; charset=utf-8"])),
            (40, st.one_of(header_bytes, header_bytes.map(lambda b: b"application/" + b))),
        ),
        label="Content-Type",
    )
    extra = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"If-Match", b"If-None-Match", b"Accept", b"Accept-Charset", b"X-Forwarded-Host"]), header_bytes
            ),
            max_size=2,
        ),
        label="more headers",
    )
    what = data.draw(
        st.sampled_from(
            ["POST /Users", "PATCH /Users/{uid}", "PUT /Users/{uid}", "GET /Users/{uid}", "DELETE /Users/{bystander}"]
        ),
        label="request",
    )
    method, path = what.split()
    path = path.format(**gw.ids)
    bodies = {
        "POST": to_json(user_body(f"header{len(gw.ids)}-{data.draw(st.integers(0, 10**6), label='n')}@example.com")),
        "PUT": to_json(user_body("victim@example.com", title="Put")),
        "PATCH": to_json({"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Patched"}]}),
    }
    body = bodies.get(method, "").encode()
    attack(gw, lambda: gw.request_bytes(method, path, [(b"Authorization", auth), (b"Content-Type", ctype), *extra], body))
