"""The SQLite correlation store on real files: uniqueness, claims, journal, and filters in SQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.scim.filter import matches, parse_filter
from gateway.scim.schema import ENTERPRISE_USER, user_resource_type
from gateway.store.base import Busy, Member, NativeConflict, Query, UniqueConflict, VersionMismatch
from gateway.store.sqlite import SqliteStore

NOW = "2026-01-01T00:00:00.000000Z"
USERS = user_resource_type()


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.close()


async def make(store: SqliteStore, rid: str, user_name: str, native: str, **data: Any) -> None:
    seq = await store.begin_create("app", "User", rid, user_name.lower(), {"userName": user_name, **data}, NOW)
    await store.settle_create(seq, native, {"userName": user_name, **data}, [])


async def test_create_is_invisible_until_settled(store: SqliteStore) -> None:
    seq = await store.begin_create("app", "User", "u1", "bob", {"userName": "Bob"}, NOW)
    assert await store.get("app", "User", "u1") is None
    row = await store.settle_create(seq, "17", {"userName": "Bob"}, [])
    assert (row.native_id, row.version, row.state) == ("17", 1, "active")
    assert (await store.get("app", "User", "u1")).data == {"userName": "Bob"}  # type: ignore[union-attr]
    assert (await store.by_native("app", "User", "17")).id == "u1"  # type: ignore[union-attr]


async def test_unique_key_is_enforced_per_app_and_type(store: SqliteStore) -> None:
    await make(store, "u1", "Bob", "1")
    with pytest.raises(UniqueConflict):
        await store.begin_create("app", "User", "u2", "bob", {"userName": "BOB"}, NOW)
    # Same name in another app, or as a group, is fine.
    await store.begin_create("other", "User", "u3", "bob", {"userName": "bob"}, NOW)
    await store.begin_create("app", "Group", "g1", "bob", {"displayName": "bob"}, NOW)


async def test_concurrent_creates_of_one_key_yield_exactly_one(store: SqliteStore) -> None:
    async def attempt(i: int) -> bool:
        try:
            await store.begin_create("app", "User", f"u{i}", "same", {"userName": "same"}, NOW)
            return True
        except UniqueConflict:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert results.count(True) == 1


async def test_native_id_links_one_resource_only(store: SqliteStore) -> None:
    await make(store, "u1", "a", "1")
    seq = await store.begin_create("app", "User", "u2", "b", {"userName": "b"}, NOW)
    with pytest.raises(NativeConflict):
        await store.settle_create(seq, "1", {"userName": "b"}, [])


async def test_claim_blocks_a_second_writer_and_abort_restores(store: SqliteStore) -> None:
    await make(store, "u1", "a", "1")
    seq, row = await store.begin_write("app", "User", "u1", "update", new_unique_key="renamed")
    assert row.version == 1
    with pytest.raises(Busy):
        await store.begin_write("app", "User", "u1", "update")
    # The new name is reserved while the write is in flight...
    with pytest.raises(UniqueConflict):
        await store.begin_create("app", "User", "u2", "renamed", {"userName": "renamed"}, NOW)
    await store.abort(seq, "app refused")
    # ...and released when it is aborted; the old one is back.
    await store.begin_create("app", "User", "u2", "renamed", {"userName": "renamed"}, NOW)
    assert (await store.get("app", "User", "u1")).unique_key == "a"  # type: ignore[union-attr]


async def test_version_check(store: SqliteStore) -> None:
    await make(store, "u1", "a", "1")
    seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=1)
    row = await store.settle_update(seq, {"userName": "a", "title": "x"}, NOW, "a")
    assert row.version == 2
    with pytest.raises(VersionMismatch):
        await store.begin_write("app", "User", "u1", "update", if_match=1)


async def test_unsettled_writes_survive_a_restart_as_pending(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SqliteStore(path)
    await first.open()
    await make(first, "u1", "a", "1")
    await first.begin_create("app", "User", "u2", "b", {"userName": "b"}, NOW)
    await first.begin_write("app", "User", "u1", "delete")
    await first.close()  # the "crash": nothing settled

    second = SqliteStore(path)
    await second.open()
    pending = await second.pending("app")
    assert [(p.op, p.resource_id) for p in pending] == [("create", "u2"), ("delete", "u1")]
    await second.close()


async def test_members_and_delete_cascade(store: SqliteStore) -> None:
    await make(store, "u1", "a", "1")
    await make(store, "u2", "b", "2")
    seq = await store.begin_create("app", "Group", "g1", "team", {"displayName": "Team"}, NOW)
    await store.settle_create(seq, "10", {"displayName": "Team"}, [Member("u1", "User"), Member("u2", "User", "Bee")])
    assert [(m.id, m.display) for m in await store.members("app", "g1")] == [("u1", "a"), ("u2", "Bee")]
    assert [g.id for g in await store.groups_of("app", "u1")] == ["g1"]
    seq, _ = await store.begin_write("app", "User", "u1", "delete")
    await store.settle_delete(seq)
    assert [m.id for m in await store.members("app", "g1")] == ["u2"]


PEOPLE: list[dict[str, Any]] = [
    {"userName": "alice", "name": {"givenName": "Alice", "familyName": "Smith"}, "active": True, "title": "Engineer",
     "emails": [{"type": "work", "value": "alice@corp.example", "primary": True}, {"type": "home", "value": "al@home.example"}],
     "externalId": "EXT-1", ENTERPRISE_USER: {"department": "R&D", "employeeNumber": "100"}},
    {"userName": "Bob_O'Neil", "name": {"givenName": "Bob"}, "active": False, "title": "100% sales",
     "emails": [{"type": "work", "value": "bob@corp.example"}], "externalId": "ext-2", ENTERPRISE_USER: {"department": "Sales"}},
    {"userName": "carol", "active": True, "emails": [{"type": "home", "value": "carol@else.example"}], "title": ""},
    {"userName": "dave;drop", "name": {"familyName": "Ünïcode"}, "nickName": "d_v"},
]

FILTERS = [
    'userName eq "ALICE"',
    'userName ne "alice"',
    'userName co "o"',
    'userName sw "b"',
    'userName ew "OL"',
    'userName gt "bob"',
    'userName le "carol"',
    "title pr",
    "not (title pr)",
    'externalId eq "ext-1"',
    'externalId eq "EXT-1"',
    "active eq true",
    "active eq false",
    "active ne true",
    'name.givenName sw "a" or name.familyName eq "ünïcode"',
    'emails[type eq "work" and value co "@corp"]',
    'emails[type eq "home"] and not (emails[type eq "work"])',
    'emails.value ew ".example"',
    'emails co "bob@"',
    'emails.type eq "home"',
    f'{ENTERPRISE_USER}:department eq "r&d"',
    f"{ENTERPRISE_USER}:employeeNumber pr",
    'title co "%"',
    'nickName co "_"',
    'userName co "\'"',
    'userName co ";"',
    '(userName eq "alice" or userName eq "carol") and active eq true',
    'meta.created ge "2026-01-01T00:00:00Z"',
    'meta.created lt "2025-01-01T00:00:00+01:00"',
    'id pr',
]


@pytest.mark.parametrize("text", FILTERS)
async def test_sql_filters_agree_with_the_in_memory_evaluator(store: SqliteStore, text: str) -> None:
    for i, person in enumerate(PEOPLE):
        await make(store, f"u{i}", person["userName"], str(i), **{k: v for k, v in person.items() if k != "userName"})
    node = parse_filter(text, USERS)
    _total, rows = await store.query("app", USERS, Query(filter=node))
    meta = {"created": NOW, "lastModified": NOW, "resourceType": "User"}
    expected = sorted(f"u{i}" for i, p in enumerate(PEOPLE) if matches(node, {"id": f"u{i}", **p, "meta": meta}, USERS))
    assert sorted(r.id for r in rows) == expected


async def test_sorting_and_paging_are_stable(store: SqliteStore) -> None:
    for i, name in enumerate(["delta", "Alpha", "charlie", "bravo", "echo"]):
        await make(store, f"u{i}", name, str(i))
    total, rows = await store.query("app", USERS, Query(sort_by="userName", start_index=2, count=2))
    assert total == 5
    assert [r.data["userName"] for r in rows] == ["bravo", "charlie"]
    _, rows = await store.query("app", USERS, Query(sort_by="userName", descending=True, count=1))
    assert rows[0].data["userName"] == "echo"
    _, rows = await store.query("app", USERS, Query(count=0))
    assert rows == []


async def test_resources_without_the_sort_attribute_come_last_ascending_first_descending(store: SqliteStore) -> None:
    await make(store, "u1", "b", "1", title="B")
    await make(store, "u2", "none", "2")
    await make(store, "u3", "a", "3", title="a")
    _, rows = await store.query("app", USERS, Query(sort_by="title"))
    assert [r.id for r in rows] == ["u3", "u1", "u2"]
    _, rows = await store.query("app", USERS, Query(sort_by="title", descending=True))
    assert [r.id for r in rows] == ["u2", "u1", "u3"]
