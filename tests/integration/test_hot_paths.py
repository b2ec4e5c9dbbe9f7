"""Costs that must not grow with the directory: what each request asks of the store and the app.

Counted, not timed (the benchmark in bench/ times them): a list of users asks
for their groups once per page, not once per user; a membership PATCH asks the
store about the members it names and the app to add or remove just those,
whatever the group's size; and it leaves exactly the state the general PATCH
path leaves.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import APPS
from gateway.scim.patchop import member_changes
from tests.conftest import GROUP_URN, PATCH_URN, Scim, user_body
from tests.demo_rows import q, team_pairs

pytestmark = pytest.mark.both_stores


def spy(obj: Any, names: list[str], calls: Counter[str], sizes: dict[str, list[int]]) -> None:
    """Count calls of `obj`'s async methods (and the size of their list arguments) on the instance."""
    for name in names:
        original = getattr(obj, name)

        def wrap(fn: Callable[..., Any], name: str = name) -> Callable[..., Any]:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                sizes.setdefault(name, []).extend(len(a) for a in args if isinstance(a, list))
                return await fn(*args, **kwargs)

            return counted

        setattr(obj, name, wrap(original))


async def make_users(scim: Scim, prefix: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        resp, body = await scim.post("/Users", user_body(f"{prefix}{i}"))
        assert resp.status == 201
        ids.append(body["id"])
    return ids


async def test_a_page_of_users_reads_their_groups_in_one_query(client: TestClient, scim: Scim) -> None:
    ids = await make_users(scim, "pager", 12)
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": "Pagers", "members": [{"value": i} for i in ids[:5]]}
    )
    assert resp.status == 201
    store = client.app[APPS]["demo"].provisioner.store
    calls: Counter[str] = Counter()
    spy(store, ["groups_of", "groups_of_many", "members", "members_of_many"], calls, {})
    resp, page = await scim.get("/Users?count=12&filter=" + q('userName sw "pager"'))
    assert resp.status == 200 and len(page["Resources"]) == 12
    assert calls == Counter({"groups_of_many": 1}), calls
    with_groups = [
        u["id"]
        for u in page["Resources"]
        if [(g["value"], g["display"]) for g in u.get("groups", [])] == [(group["id"], "Pagers")]
    ]
    assert sorted(with_groups) == sorted(ids[:5])
    calls.clear()
    resp, groups = await scim.get("/Groups?filter=" + q('displayName eq "Pagers"'))
    assert calls == Counter({"members_of_many": 1}), calls
    assert sorted(m["value"] for m in groups["Resources"][0]["members"]) == sorted(ids[:5])


@pytest.mark.parametrize("size", [3, 60])
async def test_adding_one_member_costs_the_same_whatever_the_group_size(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection, size: int
) -> None:
    ids = await make_users(scim, f"m{size}-", size + 1)
    resp, group = await scim.post(
        "/Groups", {"schemas": [GROUP_URN], "displayName": f"Big{size}", "members": [{"value": i} for i in ids[:size]]}
    )
    assert resp.status == 201
    runtime = client.app[APPS]["demo"]
    calls: Counter[str] = Counter()
    sizes: dict[str, list[int]] = {}
    spy(runtime.provisioner.store, ["members", "members_of_many", "member_ids_among"], calls, sizes)
    spy(runtime.connector, ["write", "list_members", "add_members", "get"], calls, sizes)
    resp, body = await scim.patch(
        f"/Groups/{group['id']}?excludedAttributes=members", [{"op": "add", "path": "members", "value": [{"value": ids[size]}]}]
    )
    assert resp.status == 200 and "members" not in body and body["meta"]["version"] == 'W/"2"'
    # The same calls for 3 members or 60: one membership lookup of the one id, one app write adding one member.
    assert calls == Counter({"member_ids_among": 1, "write": 1, "get": 1}), calls
    assert sizes["member_ids_among"] == [1]
    assert [n for n in sizes["write"]] == [1, 0]  # add one, remove none
    assert (f"Big{size}", f"m{size}-{size}") in team_pairs(demo_db)
    _, full = await scim.get(f"/Groups/{group['id']}")
    assert len(full["members"]) == size + 1


async def test_membership_patches_leave_the_state_the_general_path_leaves(
    client: TestClient, scim: Scim, demo_db: sqlite3.Connection
) -> None:
    ids = await make_users(scim, "eq", 6)
    groups = []
    for name in ("Fast", "General"):
        resp, g = await scim.post(
            "/Groups", {"schemas": [GROUP_URN], "displayName": name, "members": [{"value": i} for i in ids[:3]]}
        )
        groups.append(g["id"])
    steps: list[list[dict[str, Any]]] = [
        [{"op": "add", "path": "members", "value": [{"value": ids[3]}, {"value": ids[4], "display": "Four"}]}],
        [{"op": "Remove", "path": f'members[value eq "{ids[0]}"]'}],
        [
            {"op": "remove", "path": "members", "value": [{"value": ids[1]}, {"value": "not-a-member"}]}
        ],  # Entra's removal by value list
        [
            {"op": "add", "path": "members", "value": [{"value": ids[0]}]},
            {"op": "remove", "path": f'members[value eq "{ids[0]}"]'},
        ],
        [{"op": "add", "path": "members", "value": [{"value": ids[5]}, {"value": "unknown-id"}]}],
        [{"op": "add", "path": "members", "value": [{"value": ids[5]}]}],  # already a member: no change, no new version
    ]
    for operations in steps:
        assert member_changes({"schemas": [PATCH_URN], "Operations": operations}) is not None
        resp_fast, fast = await scim.patch(f"/Groups/{groups[0]}", operations)
        # The general path: the same operations behind a harmless no-op on another attribute.
        general_ops = [*operations, {"op": "replace", "path": "displayName", "value": "General"}]
        assert member_changes({"schemas": [PATCH_URN], "Operations": general_ops}) is None
        resp_general, general = await scim.patch(f"/Groups/{groups[1]}", general_ops)
        assert resp_fast.status == resp_general.status == 200
        assert fast.get("members") == general.get("members"), operations
        assert fast["meta"]["version"] == general["meta"]["version"], operations
    pairs = team_pairs(demo_db)
    assert (
        {login for team, login in pairs if team == "Fast"}
        == {login for team, login in pairs if team == "General"}
        == {"eq2", "eq3", "eq4", "eq5"}
    )


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "replace", "path": "members", "value": [{"value": "a"}]}],
        [{"op": "remove", "path": "members"}],
        [{"op": "add", "path": "members", "value": []}],
        [{"op": "add", "value": {"members": [{"value": "a"}]}}],
        [{"op": "add", "path": "members", "value": [{"value": "a", "extra": 1}]}],
        [{"op": "add", "path": "members", "value": [{"value": 7}]}],
        [{"op": "remove", "path": 'members[value eq "a" or value eq "b"]'}],
        [{"op": "remove", "path": 'members[value eq "\\x"]'}],
        [{"op": "add", "path": "members", "value": [{"value": "a"}]}, {"op": "replace", "path": "displayName", "value": "x"}],
    ],
)
def test_anything_but_adding_or_removing_members_by_id_takes_the_general_path(operations: list[dict[str, Any]]) -> None:
    assert member_changes({"schemas": [PATCH_URN], "Operations": operations}) is None
