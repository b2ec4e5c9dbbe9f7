"""The store's governance tables on both back ends: reconcile reports, leases, fix entries, journal by resource."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.schema import DISPLAY_ATTRIBUTES
from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.reports import KEEP_REPORTS
from gateway.store.sqlite import SqliteStore
from tests.services import create_pg_database, drop_pg_database, pg_url

NOW = "2026-01-01T00:00:00.000000Z"


@pytest.fixture(params=["sqlite", "postgresql"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    if request.param == "sqlite":
        yield lambda: SqliteStore(tmp_path / "store.db", labels=DISPLAY_ATTRIBUTES)
        return
    name = await create_pg_database()
    try:
        yield lambda: PostgresStore(pg_url(name), pool_size=4, labels=DISPLAY_ATTRIBUTES)
    finally:
        await drop_pg_database(name)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


async def test_reports_newest_first_per_app_and_only_the_last_kept(store: Store) -> None:
    assert await store.last_report("hr") is None and await store.last_reports() == {}
    for i in range(KEEP_REPORTS + 3):
        await store.save_report("hr", {"found": i, "orphans": [{"native_id": str(i)}]}, f"2026-01-01T00:00:{i:02d}Z")
    await store.save_report("demo", {"found": 0}, "2026-01-02T00:00:00Z")
    last = await store.last_report("hr")
    assert last is not None and (last.app, last.found, last.ran_at) == (
        "hr",
        KEEP_REPORTS + 2,
        f"2026-01-01T00:00:{KEEP_REPORTS + 2}Z",
    )
    assert last.report["orphans"] == [{"native_id": str(KEEP_REPORTS + 2)}]
    kept = await store.reports("hr", 100)
    assert len(kept) == KEEP_REPORTS and [r.found for r in kept] == list(range(KEEP_REPORTS + 2, 2, -1))
    everyone = await store.last_reports()
    assert sorted(everyone) == ["demo", "hr"] and everyone["demo"].found == 0 and everyone["hr"].found == KEEP_REPORTS + 2


async def test_a_lease_has_one_holder_until_it_runs_out(new_store: Callable[[], Store], store: Store) -> None:
    other = new_store()  # another process on the same database
    await other.open()
    try:
        assert await store.take_lease("reconcile:hr", "a", 0.6)
        assert not await other.take_lease("reconcile:hr", "b", 10)
        assert not await store.take_lease("reconcile:hr", "a", 10), "a lease is one turn, even for its holder"
        assert await other.take_lease("reconcile:demo", "b", 10), "leases are by name"
        await asyncio.sleep(0.8)
        assert await other.take_lease("reconcile:hr", "b", 10)
        assert not await store.take_lease("reconcile:hr", "a", 10)
        await store.release_lease("reconcile:hr", "a")  # not its lease: nothing happens
        assert not await store.take_lease("reconcile:hr", "a", 10)
        await other.release_lease("reconcile:hr", "b")
        assert await store.take_lease("reconcile:hr", "a", 10)
    finally:
        await other.close()


async def test_concurrent_takers_of_one_lease_one_wins(new_store: Callable[[], Store], store: Store) -> None:
    stores = [new_store() for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(*(s.take_lease("job", f"h{i}", 30) for i, s in enumerate([store, *stores])))
        assert sorted(results) == [False, False, False, True]
    finally:
        for s in stores:
            await s.close()


async def test_fix_entries_are_pending_until_ended_and_the_journal_reads_by_resource(store: Store) -> None:
    seq = await store.begin_fix("hr", "User", "native:7", "deactivate", {"native_id": "7"})
    [pending] = await store.pending("hr")
    assert (pending.seq, pending.op, pending.resource_id, pending.payload) == (
        seq,
        "reconcile",
        "native:7",
        {"native_id": "7", "fix": "deactivate"},
    )
    await store.end_fix(seq, False, "app refused: 403")
    assert await store.pending("hr") == []
    [entry] = await store.writes_of("hr", "native:7")
    assert (entry.op, entry.state, entry.detail) == ("reconcile", "aborted", "app refused: 403")
    await store.end_fix(seq, True)  # an ended entry stays as it ended
    assert (await store.writes_of("hr", "native:7"))[0].state == "aborted"


async def test_apps_and_writes_of_a_resource(store: Store) -> None:
    seq = await store.begin_create("hr", "User", "u1", "ann", {"userName": "Ann"}, NOW)
    await store.settle_create(seq, "1", {"userName": "Ann"}, [])
    seq2, _row = await store.begin_write("hr", "User", "u1", "update")
    await store.abort(seq2, "app refused: no")
    seq3 = await store.begin_create("demo", "User", "u2", "ann", {"userName": "ann"}, NOW)
    assert await store.apps() == ["demo", "hr"]
    writes = await store.writes_of("hr", "u1")
    assert [(w.op, w.state, w.detail) for w in writes] == [("update", "aborted", "app refused: no"), ("create", "done", None)]
    assert writes[0].at >= writes[1].at > 0
    assert [(w.seq, w.state) for w in await store.writes_of("demo", "u2")] == [(seq3, "pending")]


def test_a_kept_report_holds_at_most_so_many_of_each_finding() -> None:
    from gateway.provisioning.reconcile import for_keeping

    report = {"app": "hr", "found": 7, "orphans": [{"n": i} for i in range(5)], "drift": [{"n": 0}], "skipped": []}
    kept = for_keeping(report, limit=3)
    assert kept["orphans"] == [{"n": 0}, {"n": 1}, {"n": 2}] and kept["drift"] == [{"n": 0}]
    assert kept["truncated"] == {"orphans": 5} and kept["found"] == 7
    assert len(report["orphans"]) == 5, "the report itself is left whole"
    assert "truncated" not in for_keeping(report, limit=10)
