"""The hub's store on real SQLite files and a real PostgreSQL database: the outbox rows a hub write commits with
it, generations, back-off and dead letters, replay, and two takers sharing the outbox without double delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.config import compile_hub
from gateway.hub.runtime import create_hub_store
from gateway.mapping.loader import parse_yaml
from gateway.runtime import create_runtime
from gateway.schema import DISPLAY_ATTRIBUTES
from gateway.scim.service import ScimService
from gateway.settings import GatewaySettings
from gateway.store import PostgresStore, SqliteStore, Store
from gateway.store.outbox import HubStore, LinkedElsewhere
from tests.conftest import ENTERPRISE_URN, GROUP_URN, PATCH_URN, USER_URN
from tests.services import create_pg_database, drop_pg_database, pg_url

HUB_YAML = """
apps:
  sales:
    users: {when: "user.department == 'Sales'"}
    groups: none
  eng:
    users: {member_of: [Engineering]}
    groups: [Engineering]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database (as two processes have): each its own connection(s)."""
    database = None
    if request.param == "sqlite":
        made: list[Store] = [SqliteStore(tmp_path / "gateway.db", labels=DISPLAY_ATTRIBUTES) for _ in range(2)]
    else:
        database = await create_pg_database()
        made = [PostgresStore(pg_url(database), pool_size=4, labels=DISPLAY_ATTRIBUTES) for _ in range(2)]
    for store in made:
        await store.open()
    try:
        yield made[0], made[1]
    finally:
        for store in made:
            await store.close()
        if database is not None:
            await drop_pg_database(database)


class Hub:
    def __init__(self, store: Store, tmp_path: Path) -> None:
        compiled = compile_hub(parse_yaml(HUB_YAML, "hub.yaml"))
        self.store: HubStore = create_hub_store(compiled, store)
        runtime = create_runtime(compiled.mapping, GatewaySettings(mappings=[], data_dir=tmp_path), self.store, [])
        self.service: ScimService = runtime.service

    async def write(self, method: str, kind: str, rid: str | None, body: Any) -> str | None:
        written = await self.service.write(method, self.service.rtypes[kind], rid, body)
        return None if written is None else written.id

    async def user(self, name: str, department: str) -> str:
        rid = await self.write(
            "POST", "User", None, {"schemas": [USER_URN], "userName": name, ENTERPRISE_URN: {"department": department}}
        )
        assert rid is not None
        return rid

    async def rows(self) -> dict[tuple[str, str], tuple[str, int]]:
        """(app, hub id) -> (state, generation)."""
        out = {}
        async with self.store.dialect.access() as conn:
            for r in await conn.fetch("SELECT app, resource_id, state, generation FROM hub_outbox"):
                out[(r["app"], r["resource_id"])] = (r["state"], r["generation"])
        return out


async def test_a_hub_write_commits_its_outbox_rows_for_the_apps_it_affects(stores: tuple[Store, Store], tmp_path: Path) -> None:
    hub = Hub(stores[0], tmp_path)
    ann = await hub.user("ann", "Sales")
    bob = await hub.user("bob", "R&D")
    # Committed with the resource: ann's row for sales; bob is in no app, so no row at all.
    assert await hub.rows() == {("sales", ann): ("pending", 1)}
    group = await hub.write(
        "POST", "Group", None, {"schemas": [GROUP_URN], "displayName": "Engineering", "members": [{"value": bob}]}
    )
    assert group is not None
    # The group is pushed to eng; bob, now a member of Engineering, goes to eng too.
    assert await hub.rows() == {("sales", ann): ("pending", 1), ("eng", group): ("pending", 1), ("eng", bob): ("pending", 1)}
    # A change while undelivered bumps the generation: one row, "bring it to its latest state".
    await hub.write(
        "PATCH", "User", ann, {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "X"}]}
    )
    assert (await hub.rows())[("sales", ann)] == ("pending", 2)
    # Leaving: bob out of the group is still queued for eng (it held him before); a delete of the group queues
    # its members too (their assignment followed it).
    await hub.write(
        "PATCH", "Group", group, {"schemas": [PATCH_URN], "Operations": [{"op": "remove", "path": f'members[value eq "{bob}"]'}]}
    )
    assert (await hub.rows())[("eng", bob)] == ("pending", 2)
    await hub.write(
        "PATCH",
        "Group",
        group,
        {"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": bob}]}]},
    )
    await hub.write("DELETE", "Group", group, None)
    rows = await hub.rows()
    assert rows[("eng", group)][0] == "pending" and rows[("eng", bob)] == ("pending", 4)


async def test_renaming_a_group_queues_its_members_whose_assignment_follows_the_name(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    hub = Hub(stores[0], tmp_path)
    bob = await hub.user("bob", "R&D")
    group = await hub.write(
        "POST", "Group", None, {"schemas": [GROUP_URN], "displayName": "Platform", "members": [{"value": bob}]}
    )
    assert group is not None
    assert await hub.rows() == {}  # Platform: no app's group, no app's member rule
    rename = {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "displayName", "value": "Engineering"}]}
    await hub.write("PATCH", "Group", group, rename)
    # Now eng's group, and bob a member of it: both queued for eng, in the rename's transaction.
    assert await hub.rows() == {("eng", group): ("pending", 1), ("eng", bob): ("pending", 1)}


async def test_generations_backoff_dead_letters_and_replay(stores: tuple[Store, Store], tmp_path: Path) -> None:
    hub = Hub(stores[0], tmp_path)
    ann = await hub.user("ann", "Sales")
    [entry] = await hub.store.take("sales", 10, lease=60)
    assert await hub.store.take("sales", 10, lease=60) == []  # leased: nobody else takes it
    # A change lands while it is being delivered: the older state's delivery does not mark it delivered.
    await hub.write(
        "PATCH", "User", ann, {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "X"}]}
    )
    assert await hub.store.delivered(entry) is False
    [entry] = await hub.store.take("sales", 10, lease=60)
    assert entry.generation == 2
    assert await hub.store.delivered(entry) is True
    assert (await hub.rows())[("sales", ann)] == ("done", 2)

    await hub.write(
        "PATCH", "User", ann, {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Y"}]}
    )
    for attempt in range(3):
        [entry] = await hub.store.take("sales", 10, lease=60)
        assert entry.attempts == attempt
        dead = await hub.store.failed(entry, f"refused #{attempt}", max_attempts=3, backoff=0.01, max_backoff=0.02)
        assert dead is (attempt == 2)
        await asyncio.sleep(0.03)  # past the back-off
    assert await hub.store.take("sales", 10, lease=60) == []
    [state] = await hub.store.status("ANN")  # by userName, any case
    assert (state.state, state.attempts, state.last_error) == ("dead", 3, "refused #2")
    assert await hub.store.replay("sales", "ann") == 1
    [entry] = await hub.store.take("sales", 10, lease=60)
    assert entry.attempts == 0


async def test_two_takers_share_the_outbox_without_taking_one_entry_twice(stores: tuple[Store, Store], tmp_path: Path) -> None:
    hub = Hub(stores[0], tmp_path)
    other = create_hub_store(compile_hub(parse_yaml(HUB_YAML, "hub.yaml")), stores[1])  # another process's
    ids = {await hub.user(f"user{i}", "Sales") for i in range(40)}
    taken: list[list[str]] = [[], []]

    async def taker(store: HubStore, into: list[str]) -> None:
        while True:
            batch = await store.take("sales", 3, lease=60)
            if not batch:
                return
            into.extend(e.resource_id for e in batch)
            await asyncio.sleep(0)

    await asyncio.gather(taker(hub.store, taken[0]), taker(other, taken[1]))
    assert sorted(taken[0] + taken[1]) == sorted(ids)  # every entry taken, none twice
    if isinstance(stores[0], PostgresStore):
        # Row locks (SKIP LOCKED) let both take at once. On SQLite the file's write lock serializes the takes, and
        # which taker gets how many is the lock's timing (one may get all): only "none twice" is asserted there.
        assert taken[0] and taken[1], "both takers got a share"


async def test_a_live_process_keeps_its_leases_and_a_dead_ones_lapse(stores: tuple[Store, Store], tmp_path: Path) -> None:
    hub = Hub(stores[0], tmp_path)
    other = create_hub_store(compile_hub(parse_yaml(HUB_YAML, "hub.yaml")), stores[1])
    await hub.user("ann", "Sales")
    await hub.user("amy", "Sales")
    kept, dropped = await hub.store.take("sales", 10, lease=0.5)
    await asyncio.sleep(0.3)
    await hub.store.renew([kept], lease=60)  # still delivering it: renewed; the other one is left to lapse
    await asyncio.sleep(0.4)
    assert [e.resource_id for e in await other.take("sales", 10, lease=60)] == [dropped.resource_id]


async def test_a_link_is_one_to_one_and_a_create_in_doubt_is_forgotten_once_linked(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    """An app record linked to a second hub resource is refused with a clear reason (not the database's unique
    violation); linking forgets the name of the create in doubt."""
    hub = Hub(stores[0], tmp_path)
    ann = await hub.user("ann", "Sales")
    bob = await hub.user("bob", "Sales")
    await hub.store.set_creating("sales", "User", ann, "ann")
    assert await hub.store.creating_of("sales", "User", ann) == "ann"
    await hub.store.set_link("sales", "User", ann, "app-1")
    assert await hub.store.creating_of("sales", "User", ann) is None
    assert await hub.store.hub_id_of("sales", "User", "app-1") == ann
    with pytest.raises(LinkedElsewhere, match=f"linked to hub resource {ann} already"):
        await hub.store.set_link("sales", "User", bob, "app-1")
    assert await hub.store.link_of("sales", "User", bob) is None
    await hub.store.set_link("sales", "User", ann, "app-1")  # the same link again: no conflict
