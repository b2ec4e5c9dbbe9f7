"""Hostile filters and query parameters against the live demo app (the harness: tests/integration/hostile.py)."""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import BASE, GROUP_URN, PATCH_URN, user_body
from tests.integration.hostile import (
    PARAM_NAMES,
    SEARCH_URN,
    Gateway,
    attack,
    filters,
    gw,
    hostile,
    names,
    params_strategy,
    values,
    weighted,
)

__all__ = ["gw"]  # the fixtures, for this module's tests


# ---------------------------------------------------------------- property: filters


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=600)
@given(data=st.data())
def test_filters_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    how = data.draw(
        weighted(
            (30, st.just("get-users")),
            (30, st.just("search-users")),
            (15, st.just("get-groups")),
            (15, st.just("search-groups")),
            (3, st.just("search-root")),
        ),
        label="how",
    )
    kind = "Groups" if "groups" in how else "Users"
    text = data.draw(filters(kind), label="filter")
    if how.startswith("get"):
        if len(quote(text.encode("utf-8"))) > 60_000:
            return  # over aiohttp's 64 KiB request line its HTTP parser answers (text/plain) before the gateway sees it
        reply = attack(gw, lambda: gw.request("GET", f"/{kind}", params={"filter": text}))
    elif how == "search-root":
        reply = attack(gw, lambda: gw.request("POST", "/.search", {"schemas": [SEARCH_URN], "filter": text}))
    else:
        reply = attack(gw, lambda: gw.request("POST", f"/{kind}/.search", {"schemas": [SEARCH_URN], "filter": text}))
    if reply.status == 200:
        assert reply.data["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], reply
        assert reply.data["totalResults"] >= len(reply.data["Resources"]), reply
    else:
        assert reply.status == 400, reply
        assert reply.data.get("scimType") == "invalidFilter", reply


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=400)
@given(data=st.data())
def test_query_parameters_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    target = data.draw(
        st.sampled_from(["/Users", "/Groups", "/Users/{uid}", "/Groups/{gid}", "search", "encoded", "write"]), label="target"
    )
    if target == "write":
        # Parameters on writes: refused before the write (a 4xx changes nothing), or the write answers in full.
        params = data.draw(params_strategy, label="params")
        method, path, body = data.draw(
            st.sampled_from(
                [
                    ("POST", "/Users", user_body(f"params{next(gw._serial)}@example.com")),
                    (
                        "PATCH",
                        "/Users/{uid}",
                        {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Params"}]},
                    ),
                    ("PUT", "/Groups/{gid}", {"schemas": [GROUP_URN], "displayName": "Victims", "members": [{"value": "{uid}"}]}),
                ]
            ),
            label="write",
        )
        body = json.loads(json.dumps(body).replace("{uid}", gw.ids["uid"]))
        reply = attack(gw, lambda: gw.request(method, path.format(**gw.ids), body, params=params))
        if reply.status == 201:
            assert reply.data is not None and reply.data.get("id"), reply
        return
    if target == "search":
        kind = data.draw(st.sampled_from(["/Users", "/Groups", ""]), label="kind")
        params = data.draw(params_strategy, label="params")
        body: dict[str, Any] = {"schemas": [SEARCH_URN], **params}
        for key in data.draw(st.lists(st.sampled_from(PARAM_NAMES + ["schemas"]), max_size=2), label="retyped"):
            body[key] = data.draw(
                st.one_of(values, st.integers(), st.lists(st.one_of(names, st.integers()), max_size=3)), label=key
            )
        attack(gw, lambda: gw.request("POST", f"{kind}/.search", body))
        return
    if target == "encoded":
        # Raw query strings: invalid percent-escapes and bytes that are not UTF-8.
        raw = data.draw(
            st.lists(
                st.one_of(
                    st.sampled_from(
                        [
                            "startIndex=",
                            "count=",
                            "sortBy=",
                            "attributes=",
                            "excludedAttributes=",
                            "filter=",
                            "&",
                            "=",
                            "%",
                            "%ff",
                            "%ED%A0%80",
                            "%00",
                            "%25",
                            "+",
                            "%2B",
                            "%C3%28",
                            "%E2%82",
                            ";",
                            "%%",
                            "count=%31",
                            "userName",
                            "%20eq%20",
                            "%22",
                        ]
                    ),
                    st.text(alphabet=string.ascii_letters + string.digits + "-._~", max_size=8),
                ),
                max_size=10,
            ),
            label="query",
        )
        attack(gw, lambda: gw.request_encoded("GET", f"{BASE}/Users?{''.join(raw)}"))
        return
    params = data.draw(params_strategy, label="params")
    reply = attack(gw, lambda: gw.request("GET", target.format(**gw.ids), params=params))
    if reply.status == 200 and "Resources" in reply.data:
        assert len(reply.data["Resources"]) == reply.data["itemsPerPage"], reply
