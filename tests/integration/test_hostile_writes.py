"""Hostile PATCH, POST and PUT bodies against the live demo app (the harness: tests/integration/hostile.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.hostile import (
    Gateway,
    assert_reads_back,
    attack,
    etags,
    gw,
    hostile,
    patch_bodies,
    resource_bodies,
    scalars,
)

__all__ = ["gw"]  # the fixtures, for this module's tests


# ---------------------------------------------------------------- property: PATCH


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=600)
@given(data=st.data())
def test_patch_never_5xx_and_refusals_change_nothing(gw: Gateway, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(["uid", "gid", "bystander"]), label="target")
    body = data.draw(patch_bodies(gw.ids), label="body")
    etag = data.draw(etags, label="If-Match")
    headers = {} if etag is None else {"If-Match": etag}
    kind = "Groups" if target == "gid" else "Users"
    rid = gw.ids[target]
    reply = attack(gw, lambda: gw.request("PATCH", f"/{kind}/{rid}", body, headers=headers))
    if reply.status == 200:
        assert reply.data["id"] == rid, reply
        assert_reads_back(gw, kind, reply)


@pytest.mark.both_stores  # the same attacks on the SQLite and the PostgreSQL store
@hostile(max_examples=500)
@given(data=st.data())
def test_post_and_put_bodies_never_5xx(gw: Gateway, data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(["POST Users", "POST Groups", "PUT uid", "PUT gid", "PUT bystander"]), label="how")
    method, what = how.split()
    kind = "Groups" if what in ("Groups", "gid") else "Users"
    body = data.draw(resource_bodies(kind, gw.ids), label="body")
    if method == "PUT" and isinstance(body, dict) and data.draw(st.booleans(), label="with id"):
        body = {**body, "id": data.draw(st.one_of(st.just(gw.ids[what]), scalars), label="id")}
    headers = (
        {} if method == "POST" else {k: v for k, v in {"If-Match": data.draw(etags, label="If-Match")}.items() if v is not None}
    )
    path = f"/{kind}" if method == "POST" else f"/{kind}/{gw.ids[what]}"
    reply = attack(gw, lambda: gw.request(method, path, body, headers=headers))
    if reply.status in (200, 201):
        assert isinstance(reply.data.get("id"), str), reply
        assert_reads_back(gw, kind, reply)
