"""A batch's claims and settles in set statements (gateway/store/bulk.py), on both back ends: each create has the
outcome it would have one by one (a name taken refuses that create alone, a native id linked that settle alone),
and the rows and journal entries are the ones `begin_create` and `settle_create` write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import Gone, NativeConflict, Store, UniqueConflict
from gateway.store.bulk import NewCreate
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.services import create_pg_database, drop_pg_database, pg_url

NOW = "2026-01-01T00:00:00.000000Z"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "store.db")
        await s.open()
        yield s
        await s.close()
        return
    name = await create_pg_database()
    s = PostgresStore(pg_url(name), pool_size=4)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        await drop_pg_database(name)


def _new(i: int, key: str | None = None) -> NewCreate:
    data = {"userName": key or f"user{i}", "n": i}
    return NewCreate(f"r{i}", key or f"user{i}", data, {"data": data, "members": [], "secret": False, "keyed": False})


async def test_claims_in_one_transaction_refuse_only_the_taken_names(store: Store) -> None:
    await store.begin_create("app", "User", "old", "taken", {"userName": "taken"}, NOW)
    creates = [_new(0), _new(1, "taken"), _new(2), _new(3, "user2"), _new(4)]
    outcomes = await store.begin_create_many("app", "User", creates, NOW)
    assert [type(o) for o in outcomes] == [int, UniqueConflict, int, UniqueConflict, int]
    pending = {e.resource_id: e for e in await store.pending_entries("app")}
    assert set(pending) == {"old", "r0", "r2", "r4"}
    assert pending["r2"].op == "create" and pending["r2"].payload["unique_key"] == "user2"
    assert pending["r2"].payload["data"] == {"userName": "user2", "n": 2}
    assert await store.get("app", "User", "r0") is None  # invisible until settled
    row = await store.get_any("r0")
    assert row is not None and row.state == "creating" and row.data == {"userName": "user0", "n": 0}


async def test_settles_in_one_transaction_refuse_only_a_linked_native_id(store: Store) -> None:
    old = await store.begin_create("app", "User", "old", "old", {"userName": "old"}, NOW)
    await store.settle_create(old, "n-old", {"userName": "old"}, [])
    seqs = await store.begin_create_many("app", "User", [_new(i) for i in range(4)], NOW)
    settles = [
        (seq, native, {"userName": f"user{i}", "settled": True})
        for i, (seq, native) in enumerate(zip(seqs, ["a", "n-old", "b", "b"], strict=True))
    ]
    rows = await store.settle_create_many(settles)  # type: ignore[arg-type]
    assert [type(r).__name__ for r in rows] == ["Row", "NativeConflict", "Row", "NativeConflict"]
    for i in (0, 2):
        got = await store.get("app", "User", f"r{i}")
        assert got is not None and got.native_id == "ab"[i // 2] and got.data == {"userName": f"user{i}", "settled": True}
        assert got == rows[i]
    assert {e.resource_id for e in await store.pending_entries("app")} == {"r1", "r3"}  # the refused stay pending
    assert isinstance(rows[1], NativeConflict)


async def test_a_settle_of_an_entry_not_pending_settles_none(store: Store) -> None:
    seqs = await store.begin_create_many("app", "User", [_new(i) for i in range(3)], NOW)
    await store.abort(seqs[1], "test")  # type: ignore[arg-type]
    with pytest.raises(Gone):
        await store.settle_create_many([(seq, f"n{i}", {}) for i, seq in enumerate(seqs)])  # type: ignore[misc]
    assert {e.resource_id for e in await store.pending_entries("app")} == {"r0", "r2"}
