"""The correlation store, the same suite on both back ends: SQLite on real files, PostgreSQL on a real server.

Uniqueness, claims, the journal, and filters in SQL (checked against the
in-memory evaluator). PostgreSQL-only tests at the end: two stores (two pools,
as two processes would have) on one database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.schema import DISPLAY_ATTRIBUTES, ENTERPRISE_USER, user_resource_type
from gateway.scim.filter import matches, parse_filter
from gateway.scim.search import store_condition, store_sort
from gateway.store import Busy, Member, NativeConflict, Query, Store, UniqueConflict, VersionMismatch
from gateway.store.postgres import MIGRATIONS, PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.proxy import TcpProxy
from tests.services import create_pg_database, drop_pg_database, pg_url

NOW = "2026-01-01T00:00:00.000000Z"
USERS = user_resource_type()

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes unopened stores over one backing database: each is what one more process would open."""
    if request.param == "sqlite":
        yield lambda: SqliteStore(tmp_path / "store.db", labels=DISPLAY_ATTRIBUTES)
        return
    name = await create_pg_database()
    try:
        yield lambda: PostgresStore(pg_url(name), pool_size=4, labels=DISPLAY_ATTRIBUTES)
    finally:
        await drop_pg_database(name)


@pytest.fixture
async def store(new_store: StoreFactory) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


async def make(store: Store, rid: str, user_name: str, native: str, **data: Any) -> None:
    seq = await store.begin_create("app", "User", rid, user_name.lower(), {"userName": user_name, **data}, NOW)
    await store.settle_create(seq, native, {"userName": user_name, **data}, [])


async def test_create_is_invisible_until_settled(store: Store) -> None:
    seq = await store.begin_create("app", "User", "u1", "bob", {"userName": "Bob"}, NOW)
    assert await store.get("app", "User", "u1") is None
    row = await store.settle_create(seq, "17", {"userName": "Bob"}, [])
    assert (row.native_id, row.version, row.state) == ("17", 1, "active")
    assert (await store.get("app", "User", "u1")).data == {"userName": "Bob"}  # type: ignore[union-attr]
    assert (await store.by_native("app", "User", "17")).id == "u1"  # type: ignore[union-attr]


async def test_unique_key_is_enforced_per_app_and_type(store: Store) -> None:
    await make(store, "u1", "Bob", "1")
    with pytest.raises(UniqueConflict):
        await store.begin_create("app", "User", "u2", "bob", {"userName": "BOB"}, NOW)
    # Same name in another app, or as a group, is fine.
    await store.begin_create("other", "User", "u3", "bob", {"userName": "bob"}, NOW)
    await store.begin_create("app", "Group", "g1", "bob", {"displayName": "bob"}, NOW)


async def test_concurrent_creates_of_one_key_yield_exactly_one(store: Store) -> None:
    async def attempt(i: int) -> bool:
        try:
            await store.begin_create("app", "User", f"u{i}", "same", {"userName": "same"}, NOW)
            return True
        except UniqueConflict:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert results.count(True) == 1


async def test_native_id_links_one_resource_only(store: Store) -> None:
    await make(store, "u1", "a", "1")
    seq = await store.begin_create("app", "User", "u2", "b", {"userName": "b"}, NOW)
    with pytest.raises(NativeConflict):
        await store.settle_create(seq, "1", {"userName": "b"}, [])


async def test_claim_blocks_a_second_writer_and_abort_restores(store: Store) -> None:
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


async def test_version_check(store: Store) -> None:
    await make(store, "u1", "a", "1")
    seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=1)
    row = await store.settle_update(seq, {"userName": "a", "title": "x"}, NOW, "a")
    assert row.version == 2
    with pytest.raises(VersionMismatch):
        await store.begin_write("app", "User", "u1", "update", if_match=1)


async def test_an_update_can_relink_the_native_id(store: Store) -> None:
    """deactivate: {via: delete}: the native link is dropped, later set to the re-created record; it stays one-to-one."""
    await make(store, "u1", "ann", "10")
    await make(store, "u2", "bob", "20")
    seq, row = await store.begin_write("app", "User", "u1", "update", if_match=1, payload={"relink": "drop"})
    row = await store.settle_update(seq, {"userName": "ann", "active": False}, NOW, "ann", relink=True, native_id=None)
    assert (row.native_id, row.version) == (None, 2)
    assert await store.by_native("app", "User", "10") is None
    assert await store.native_ids("app", "User", ["u1"]) == {"u1": ("User", None)}
    seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=2)
    with pytest.raises(NativeConflict):
        await store.settle_update(seq, {"userName": "ann"}, NOW, "ann", relink=True, native_id="20")  # bob's record
    await store.abort(seq, "the app answered with another resource's id")
    seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=2)
    row = await store.settle_update(seq, {"userName": "ann", "active": True}, NOW, "ann", relink=True, native_id="11")
    assert row.native_id == "11" and (await store.by_native("app", "User", "11")).id == "u1"  # type: ignore[union-attr]


async def test_unsettled_writes_survive_a_restart_as_pending(new_store: StoreFactory) -> None:
    first = new_store()
    await first.open()
    await make(first, "u1", "a", "1")
    await first.begin_create("app", "User", "u2", "b", {"userName": "b"}, NOW)
    await first.begin_write("app", "User", "u1", "delete")
    await first.close()  # the "crash": nothing settled

    second = new_store()
    await second.open()
    pending = await second.pending("app")
    assert [(p.op, p.resource_id) for p in pending] == [("create", "u2"), ("delete", "u1")]
    await second.close()


async def test_members_and_delete_cascade(store: Store) -> None:
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
    {
        "userName": "alice",
        "name": {"givenName": "Alice", "familyName": "Smith"},
        "active": True,
        "title": "Engineer",
        "emails": [
            {"type": "work", "value": "alice@corp.example", "primary": True},
            {"type": "home", "value": "al@home.example"},
        ],
        "externalId": "EXT-1",
        ENTERPRISE_USER: {"department": "R&D", "employeeNumber": "100"},
    },
    {
        "userName": "Bob_O'Neil",
        "name": {"givenName": "Bob"},
        "active": False,
        "title": "100% sales",
        "emails": [{"type": "work", "value": "bob@corp.example"}],
        "externalId": "ext-2",
        ENTERPRISE_USER: {"department": "Sales"},
    },
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
    "id pr",
]


@pytest.mark.parametrize("text", FILTERS)
async def test_sql_filters_agree_with_the_in_memory_evaluator(store: Store, text: str) -> None:
    for i, person in enumerate(PEOPLE):
        await make(store, f"u{i}", person["userName"], str(i), **{k: v for k, v in person.items() if k != "userName"})
    node = parse_filter(text, USERS)
    _total, rows = await store.query("app", "User", Query(where=store_condition(node, USERS)))
    meta = {"created": NOW, "lastModified": NOW, "resourceType": "User"}
    expected = sorted(f"u{i}" for i, p in enumerate(PEOPLE) if matches(node, {"id": f"u{i}", **p, "meta": meta}, USERS))
    assert sorted(r.id for r in rows) == expected


async def test_sorting_and_paging_are_stable(store: Store) -> None:
    for i, name in enumerate(["delta", "Alpha", "charlie", "bravo", "echo"]):
        await make(store, f"u{i}", name, str(i))
    total, rows = await store.query("app", "User", Query(sort=store_sort("userName", USERS, False), start_index=2, count=2))
    assert total == 5
    assert [r.data["userName"] for r in rows] == ["bravo", "charlie"]
    _, rows = await store.query("app", "User", Query(sort=store_sort("userName", USERS, True), count=1))
    assert rows[0].data["userName"] == "echo"
    _, rows = await store.query("app", "User", Query(count=0))
    assert rows == []


async def test_resources_without_the_sort_attribute_come_last_ascending_first_descending(store: Store) -> None:
    await make(store, "u1", "b", "1", title="B")
    await make(store, "u2", "none", "2")
    await make(store, "u3", "a", "3", title="a")
    _, rows = await store.query("app", "User", Query(sort=store_sort("title", USERS, False)))
    assert [r.id for r in rows] == ["u3", "u1", "u2"]
    _, rows = await store.query("app", "User", Query(sort=store_sort("title", USERS, True)))
    assert [r.id for r in rows] == ["u2", "u1", "u3"]


async def test_adding_a_member_keeps_the_others_in_order(store: Store) -> None:
    for i in range(3):
        await make(store, f"u{i}", f"user{i}", str(i))
    seq = await store.begin_create("app", "Group", "g1", "team", {"displayName": "Team"}, NOW)
    await store.settle_create(seq, "10", {"displayName": "Team"}, [Member("u0", "User"), Member("u1", "User")])
    seq, _ = await store.begin_write("app", "Group", "g1", "update")
    await store.settle_update(seq, {"displayName": "Team"}, NOW, "team", add_members=[Member("u2", "User"), Member("u0", "User")])
    assert [m.id for m in await store.members("app", "g1")] == ["u0", "u1", "u2"]
    seq, _ = await store.begin_write("app", "Group", "g1", "update")
    row = await store.settle_update(seq, {"displayName": "Team"}, NOW, "team", remove_members=["u1"])
    assert [m.id for m in await store.members("app", "g1")] == ["u0", "u2"]
    assert row.version == 3


async def test_pending_older_than_leaves_fresh_entries(store: Store) -> None:
    await store.begin_create("app", "User", "u1", "a", {"userName": "a"}, NOW)
    assert [p.resource_id for p in await store.pending("app")] == ["u1"]
    assert await store.pending("app", older_than=60) == []
    await asyncio.sleep(0.05)
    assert [p.resource_id for p in await store.pending("app", older_than=0.01)] == ["u1"]


async def test_refresh_skips_a_claimed_resource(store: Store) -> None:
    await make(store, "u1", "a", "1")
    row = await store.refresh("app", "User", "u1", {"userName": "a", "title": "t"}, NOW)
    assert row is not None and row.version == 2 and row.data["title"] == "t"
    seq, _ = await store.begin_write("app", "User", "u1", "update")
    assert await store.refresh("app", "User", "u1", {"userName": "a"}, NOW) is None
    await store.abort(seq, "test")
    assert (await store.get("app", "User", "u1")).version == 2  # type: ignore[union-attr]


async def test_ids_both_ways(store: Store) -> None:
    await make(store, "u1", "a", "1")
    await make(store, "u2", "b", "2")
    assert await store.native_ids("app", None, ["u1", "u2", "nope"]) == {"u1": ("User", "1"), "u2": ("User", "2")}
    assert await store.native_ids("app", "Group", ["u1"]) == {}
    assert await store.scim_ids("app", "User", ["2", "9"]) == {"2": "u2"}


# ---------------------------------------------------------------- PostgreSQL: several processes on one database


@pytest.fixture
async def pg_url_for_test(pg_database: str) -> str:
    return pg_url(pg_database)


@pytest.fixture
async def two_stores(pg_url_for_test: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores, two pools, one database: what two gateway processes see. Opened together (migrations race)."""
    a, b = PostgresStore(pg_url_for_test, pool_size=8), PostgresStore(pg_url_for_test, pool_size=8)
    await asyncio.gather(a.open(), b.open())
    yield a, b
    await asyncio.gather(a.close(), b.close())


async def test_pg_migrations_run_once_when_processes_start_together(two_stores: tuple[PostgresStore, PostgresStore]) -> None:
    a, _ = two_stores
    async with a.pool.acquire() as conn:
        # Each migration once, in order, though both processes ran them at the same moment.
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_pg_concurrent_creates_of_one_key_across_pools_yield_exactly_one(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    async def attempt(store: PostgresStore, i: int) -> bool:
        try:
            await store.begin_create("app", "User", f"u{i}", "same", {"userName": "same"}, NOW)
            return True
        except UniqueConflict:
            return False

    results = await asyncio.gather(*(attempt(two_stores[i % 2], i) for i in range(40)))
    assert results.count(True) == 1


async def test_pg_concurrent_writes_with_one_if_match_across_pools_let_one_through(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two_stores
    await make(a, "u1", "a", "1")

    async def attempt(store: PostgresStore) -> str:
        try:
            seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=1)
        except VersionMismatch:
            return "412"
        except Busy:
            return "busy"
        await asyncio.sleep(0.05)  # the app call
        await store.settle_update(seq, {"userName": "a"}, NOW, "a")
        return "ok"

    first = await asyncio.gather(attempt(a), attempt(b))
    assert first.count("ok") == 1, first  # the other saw the claim (busy) or, if late, the new version (412)
    # Once settled, the same If-Match is stale everywhere.
    assert await attempt(b) == "412"
    # And with no claim in flight, two writers racing on one version: exactly one wins, one mismatch.
    seq, _ = await a.begin_write("app", "User", "u1", "update", if_match=2)
    await a.abort(seq, "test")

    async def claim(store: PostgresStore) -> str:
        try:
            seq, _ = await store.begin_write("app", "User", "u1", "update", if_match=2)
        except (VersionMismatch, Busy) as exc:
            return type(exc).__name__
        await store.settle_update(seq, {"userName": "a"}, NOW, "a")
        return "ok"

    results = await asyncio.gather(*(claim(s) for s in (a, b, a, b)))
    assert results.count("ok") == 1
    assert (await b.get("app", "User", "u1")).version == 3  # type: ignore[union-attr]


async def test_pg_concurrent_member_adds_across_pools_lose_none(two_stores: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two_stores
    for i in range(20):
        await make(a, f"u{i}", f"user{i}", str(i))
    seq = await a.begin_create("app", "Group", "g1", "team", {"displayName": "Team"}, NOW)
    await a.settle_create(seq, "10", {"displayName": "Team"}, [])

    async def add(store: PostgresStore, member: str) -> None:
        while True:
            try:
                seq, _ = await store.begin_write("app", "Group", "g1", "update")
                break
            except Busy:
                await asyncio.sleep(0.01)
        await store.settle_update(seq, {"displayName": "Team"}, NOW, "team", add_members=[Member(member, "User")])

    await asyncio.gather(*(add(two_stores[i % 2], f"u{i}") for i in range(20)))
    assert sorted(m.id for m in await b.members("app", "g1")) == sorted(f"u{i}" for i in range(20))
    assert (await b.get("app", "Group", "g1")).version == 21  # type: ignore[union-attr]


async def test_pg_one_settle_wins_over_a_peer_recovering_the_same_entry(two_stores: tuple[PostgresStore, PostgresStore]) -> None:
    from gateway.store import Gone

    a, b = two_stores
    await make(a, "u1", "a", "1")
    seq, _ = await a.begin_write("app", "User", "u1", "update")
    outcomes = await asyncio.gather(
        a.settle_update(seq, {"userName": "a"}, NOW, "a"), b.abort(seq, "peer recovery"), return_exceptions=True
    )
    assert sum(isinstance(o, Gone) for o in outcomes) == 1


async def test_pg_server_unreachable_is_store_unavailable() -> None:
    from gateway.store import StoreUnavailable
    from tests.conftest import free_port

    store = PostgresStore(f"postgresql://someone:s3cret@127.0.0.1:{free_port()}/nothing", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


async def test_pg_server_going_away_is_store_unavailable_and_coming_back_heals(pg_database: str) -> None:
    from gateway.store import StoreUnavailable
    from tests.services import PG_HOST, PG_PORT, PG_USER

    proxy = TcpProxy((PG_HOST, PG_PORT))
    port = await proxy.start()
    store = PostgresStore(f"postgresql://{PG_USER}@127.0.0.1:{port}/{pg_database}", pool_size=2, connect_timeout=2)
    await store.open()
    try:
        await make(store, "u1", "a", "1")
        await proxy.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("app", "User", "u1")
        with pytest.raises(StoreUnavailable):
            await store.begin_create("app", "User", "u2", "b", {"userName": "b"}, NOW)
        await proxy.start()
        assert (await store.get("app", "User", "u1")) is not None
    finally:
        await store.close()
        await proxy.stop()


async def test_pg_a_terminated_connection_is_replaced_by_the_pool(pg_url_for_test: str, pg_database: str) -> None:
    import asyncpg

    store = PostgresStore(pg_url_for_test, pool_size=2)
    await store.open()
    try:
        await make(store, "u1", "a", "1")
        admin = await asyncpg.connect(pg_url("postgres"))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_database,
            )
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's goodbye reaches the idle connection
        assert (await store.get("app", "User", "u1")) is not None
    finally:
        await store.close()


def test_mask_url_hides_the_password() -> None:
    from gateway.store.postgres import mask_url

    assert (
        mask_url("postgresql://gw:p%40ss@db.example:5433/scim?sslmode=require")
        == "postgresql://gw:***@db.example:5433/scim?sslmode=require"
    )
    assert mask_url("postgresql://gw@db/scim") == "postgresql://gw@db/scim"
