"""Group commit (gateway/store/group.py) on the SQLite store: concurrent transactions share a commit, each
member fails alone, and no waiter resumes before the commit that holds its work is durable.

Durable is checked from outside: as each waiter resumes, a second store on the same file (another process's
view: its own connection) must already see what that waiter's transaction wrote. (The PostgreSQL store does
not group: see PostgresDialect.transaction.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.store import Gone, Store, StoreUnavailable, UniqueConflict
from gateway.store.group import GroupCommit
from gateway.store.sqlite import SqliteStore

NOW = "2026-01-01T00:00:00.000000Z"
CLAIMS = 60  # claims in flight at once; every third takes a name another claim also takes

StoreFactory = Callable[[], Store]


@pytest.fixture
def new_store(tmp_path: Path) -> StoreFactory:
    return lambda: SqliteStore(tmp_path / "store.db")


@pytest.fixture
async def stores(new_store: StoreFactory) -> AsyncIterator[tuple[Store, Store]]:
    """The store under test and a second one on the same database, as another process would open it."""
    store, other = new_store(), new_store()
    await store.open()
    await other.open()
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


def _group(store: Store) -> GroupCommit[object]:
    group: GroupCommit[object] = store.dialect.group  # type: ignore[attr-defined]
    return group


def _name(i: int) -> str:
    return f"user{i - 1 if i % 3 == 2 else i}"  # 1 and 2 race for user1, 4 and 5 for user4, ...


async def test_concurrent_claims_share_commits_and_a_taken_name_fails_only_its_claim(stores: tuple[Store, Store]) -> None:
    store, other = stores
    group = _group(store)
    groups_before = group.groups
    seen_by_other: dict[str, bool] = {}

    async def claim(i: int) -> int | None:
        rid = f"r{i}"
        try:
            seq = await store.begin_create("app", "User", rid, _name(i), {"userName": _name(i)}, NOW)
        except UniqueConflict:
            return None
        # Resumed: the claim must be committed now (another connection sees it), before any app call could follow.
        entry = await other.journal_entry(seq)
        seen_by_other[rid] = entry is not None and entry.state == "pending" and entry.resource_id == rid
        return seq

    outcomes = await asyncio.gather(*(claim(i) for i in range(CLAIMS)))
    won = [i for i, seq in enumerate(outcomes) if seq is not None]
    names = [_name(i) for i in won]
    assert sorted(names) == sorted(set(_name(i) for i in range(CLAIMS))), "each name held by exactly one claim"
    assert len(won) == CLAIMS - CLAIMS // 3
    assert all(seen_by_other[f"r{i}"] for i in won), "a waiter resumed before its claim was visible to another process"
    assert group.groups - groups_before < len(won), "the claims in flight together shared no commit"
    # The refused claims left nothing: no journal entry of theirs, no row.
    pending = {e.resource_id for e in await other.pending_entries("app")}
    assert pending == {f"r{i}" for i in won}


async def test_concurrent_settles_share_commits_and_one_already_settled_fails_alone(stores: tuple[Store, Store]) -> None:
    store, other = stores
    seqs = [await store.begin_create("app", "User", f"r{i}", f"user{i}", {"userName": f"user{i}"}, NOW) for i in range(30)]
    aborted = set(seqs[::5])
    for seq in aborted:
        await store.abort(seq, "test: given up")
    group = _group(store)
    groups_before = group.groups
    active_when_answered: dict[int, bool] = {}

    async def settle(i: int, seq: int) -> str:
        try:
            await store.settle_create(seq, f"n{i}", {"userName": f"user{i}", "settled": True}, [])
        except Gone:
            return "gone"
        row = await other.get("app", "User", f"r{i}")
        active_when_answered[seq] = row is not None and row.native_id == f"n{i}" and row.data.get("settled") is True
        return "done"

    outcomes = await asyncio.gather(*(settle(i, seq) for i, seq in enumerate(seqs)))
    assert [o == "gone" for o in outcomes] == [seq in aborted for seq in seqs]
    assert all(active_when_answered.values()) and len(active_when_answered) == len(seqs) - len(aborted)
    assert group.groups - groups_before < len(active_when_answered)
    assert await other.pending_entries("app") == []


async def test_a_member_whose_statement_fails_fails_alone(stores: tuple[Store, Store]) -> None:
    """A database error in one member's statements (here a table that does not exist) rolls back that member's
    savepoint only (its waiter gets StoreUnavailable); the members before and after it in the group commit."""
    store, other = stores
    gate = asyncio.Event()

    async def broken(conn: object) -> None:
        await conn.execute("INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)", "broken", "test", 0.0)  # type: ignore[attr-defined]
        await conn.execute("UPDATE no_such_table SET x = 1")  # type: ignore[attr-defined]

    async def claim(i: int) -> int:
        await gate.wait()
        return await store.begin_create("app", "User", f"r{i}", f"user{i}", {"userName": f"user{i}"}, NOW)

    async def fail() -> BaseException | None:
        await gate.wait()
        try:
            await store.dialect.transaction(broken)
        except StoreUnavailable as exc:
            return exc
        return None

    tasks = [asyncio.create_task(claim(i)) for i in range(5)] + [asyncio.create_task(fail())]
    tasks += [asyncio.create_task(claim(i)) for i in range(5, 10)]
    gate.set()
    results = await asyncio.gather(*tasks)
    assert isinstance(results[5], Exception)
    seqs = [r for r in results if isinstance(r, int)]
    assert len(seqs) == 10
    assert {e.seq for e in await other.pending_entries("app")} == set(seqs)
    async with other.dialect.access() as conn:  # the broken member's first statement was rolled back with it
        assert await conn.fetch("SELECT name FROM leases") == []


async def test_a_waiter_cancelled_before_its_turn_writes_nothing(stores: tuple[Store, Store]) -> None:
    store, other = stores
    gate = asyncio.Event()

    async def claim(i: int) -> int:
        await gate.wait()
        return await store.begin_create("app", "User", f"r{i}", f"user{i}", {"userName": f"user{i}"}, NOW)

    # One group is being committed while the next waits; the waiter cancelled meanwhile is left out of the next.
    tasks = [asyncio.create_task(claim(i)) for i in range(4)]
    gate.set()
    await asyncio.sleep(0)  # the four queue and their group starts
    late = [asyncio.create_task(store.begin_create("app", "User", f"late{i}", f"late{i}", {}, NOW)) for i in range(3)]
    await asyncio.sleep(0)  # queued behind the running group
    late[1].cancel()
    await asyncio.gather(*tasks)
    done = await asyncio.gather(*late, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    pending = {e.resource_id for e in await other.pending_entries("app")}
    assert pending == {"r0", "r1", "r2", "r3", "late0", "late2"}


async def test_close_waits_for_the_group_in_flight(new_store: StoreFactory) -> None:
    store, other = new_store(), new_store()
    await store.open()
    await other.open()
    try:
        claims = [asyncio.create_task(store.begin_create("app", "User", f"r{i}", f"user{i}", {}, NOW)) for i in range(10)]
        await asyncio.sleep(0)
        await store.close()
        assert all(isinstance(seq, int) for seq in await asyncio.gather(*claims))
        assert len(await other.pending_entries("app")) == 10
    finally:
        await other.close()
