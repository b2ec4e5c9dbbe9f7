"""The journal's recovery state (gateway/store/journal.py) on both back ends: postponed entries, their backoff,
the names given up together, notes, and the rolled-back creates the sweep looks for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.schema import DISPLAY_ATTRIBUTES
from gateway.store import PARKED, ROLLED_BACK, Store, UniqueConflict
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.services import create_pg_database, drop_pg_database, pg_url

NOW = "2026-01-01T00:00:00.000000Z"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "store.db", labels=DISPLAY_ATTRIBUTES)
        await s.open()
        yield s
        await s.close()
        return
    name = await create_pg_database()
    s = PostgresStore(pg_url(name), pool_size=2, labels=DISPLAY_ATTRIBUTES)
    try:
        await s.open()
        yield s
        await s.close()
    finally:
        await drop_pg_database(name)


async def test_a_postponed_entry_waits_for_its_time_and_is_listed_as_undecided(store: Store) -> None:
    seq = await store.begin_create("app", "User", "u1", "ann", {"userName": "ann"}, NOW, {"data": {"userName": "ann"}})
    other = await store.begin_create("app", "User", "u2", "bob", {"userName": "bob"}, NOW)
    assert await store.undecided("app") == []
    assert await store.postpone(seq, "the app failed", 60.0) == 1
    assert await store.postpone(seq, "the app failed again", 60.0) == 2
    [entry] = await store.undecided("app")
    assert (entry.seq, entry.op, entry.type, entry.resource_id, entry.attempts) == (seq, "create", "User", "u1", 2)
    assert entry.reason == "the app failed again" and entry.state == "pending"
    assert entry.next_in is not None and 55 < entry.next_in <= 60 and entry.age >= 0
    assert entry.payload["data"] == {"userName": "ann"}
    # The sweep takes only what is due; start-up recovery takes all.
    assert [p.seq for p in await store.pending("app", due=True)] == [other]
    assert [(p.seq, p.attempts) for p in await store.pending("app")] == [(seq, 2), (other, 0)]
    assert [e.seq for e in await store.pending_entries()] == [seq, other]
    assert await store.pending_entries("elsewhere") == []
    await store.postpone(seq, "due now", 0.0)
    await asyncio.sleep(0.01)
    assert [p.seq for p in await store.pending("app", due=True)] == [seq, other]
    # Settled meanwhile (by another process): postponing it counts nothing.
    await store.abort(seq, ROLLED_BACK)
    assert await store.postpone(seq, "late", 1.0) == 0
    assert (await store.journal_entry(seq)).state == "aborted"  # type: ignore[union-attr]
    assert await store.journal_entry(10_000) is None


async def test_names_given_up_by_pending_entries_let_each_settle_to_the_others(store: Store) -> None:
    for rid, name in (("a", "alpha"), ("b", "beta")):
        seq = await store.begin_create("app", "User", rid, name, {"userName": name}, NOW)
        await store.settle_create(seq, f"n-{rid}", {"userName": name}, [])
    sa, _ = await store.begin_write("app", "User", "a", "update", new_unique_key="a.next")
    sb, _ = await store.begin_write("app", "User", "b", "update", new_unique_key="b.next")
    with pytest.raises(UniqueConflict):  # each to the name the other holds
        await store.settle_update(sa, {"userName": "b.next"}, NOW, "b.next")
    await store.release_name(sa)
    await store.release_name(sb)
    row = await store.get_any("a")
    assert row is not None and row.unique_key == f"{PARKED}{sa}"
    await store.settle_update(sa, {"userName": "b.next"}, NOW, "b.next")
    await store.abort(sb, "recovery: did not happen")  # back to its old name, which nobody holds
    assert (await store.get("app", "User", "a")).unique_key == "b.next"  # type: ignore[union-attr]
    assert (await store.get("app", "User", "b")).unique_key == "beta"  # type: ignore[union-attr]


async def test_rolled_back_creates_are_listed_until_noted(store: Store) -> None:
    seq = await store.begin_create("app", "User", "u1", "ann", {"userName": "ann"}, NOW, {"data": {"userName": "ann"}})
    plain = await store.begin_create("app", "User", "u2", "bob", {"userName": "bob"}, NOW)
    await store.abort(seq, ROLLED_BACK)
    await store.abort(plain, "app refused: no")  # refused by the app when it answered: nothing to look for
    assert [e.seq for e in await store.rolled_back_creates("app", 3600)] == [seq]
    await store.note(seq, f"{ROLLED_BACK}; the app created it late as 7: linked by recovery")
    assert await store.rolled_back_creates("app", 3600) == []
    entry = await store.journal_entry(seq)
    assert entry is not None and entry.detail is not None and entry.detail.endswith("linked by recovery")
