"""Crash recovery: writes left unsettled in the journal are repaired when the gateway starts again.

The "crash" is reproduced by driving the store and the real demo connector
by hand up to the point of failure, then closing the app without settling,
and starting a new one on the same files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.http.keys import APPS
from gateway.provisioning.pipeline import utc_now
from tests.conftest import Scim, demo_settings, user_body


async def restart(aiohttp_client: Any, client: TestClient, data_dir: Path, store_overrides: dict[str, Any]) -> Scim:
    """A new gateway on the same files and store, as after a crash.

    On PostgreSQL (a store other processes may share) start-up recovery takes only
    entries older than two sweep intervals: the interval is made short and the
    restart waits it out, so the crash's entries count as stale.
    """
    await client.close()
    overrides = dict(store_overrides)
    if "store_url" in overrides:
        overrides["recovery_interval"] = 0.05
        await asyncio.sleep(0.15)
    return Scim(await aiohttp_client(create_app(demo_settings(data_dir, **overrides))))


@pytest.mark.both_stores
async def test_create_that_reached_the_app_is_linked(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path, demo_db: Any
) -> None:
    runtime = client.app[APPS]["demo"]
    store, connector = runtime.provisioner.store, runtime.connector
    seq = await store.begin_create(
        "demo",
        "User",
        "11111111-1111-4111-8111-111111111111",
        "crash.create",
        {"userName": "crash.create", "title": "kept"},
        utc_now(),
    )
    native = await connector.create("User", {"login": "crash.create", "job_title": "kept"})
    assert seq and native  # crash here: the app has the record, the store has a pending create

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    resp, body = await scim.get('/Users?filter=userName eq "crash.create"')
    assert resp.status == 200 and body["totalResults"] == 1
    user = body["Resources"][0]
    assert user["id"] == "11111111-1111-4111-8111-111111111111"
    assert user["title"] == "kept"
    # Linked to the one app record: a second create of the name is refused, and the app still has one row.
    resp, _ = await scim.post("/Users", user_body("crash.create"))
    assert resp.status == 409
    assert demo_db.execute("SELECT count(*) FROM employees WHERE login = 'crash.create'").fetchone()[0] == 1


@pytest.mark.both_stores
async def test_create_that_never_reached_the_app_is_rolled_back(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path, demo_db: Any
) -> None:
    store = client.app[APPS]["demo"].provisioner.store
    await store.begin_create("demo", "User", "22222222-2222-4222-8222-222222222222", "ghost", {"userName": "ghost"}, utc_now())

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    resp, body = await scim.get('/Users?filter=userName eq "ghost"')
    assert body["totalResults"] == 0
    resp, body = await scim.get("/Users/22222222-2222-4222-8222-222222222222")
    assert resp.status == 404
    # The name is free again.
    resp, body = await scim.post("/Users", user_body("ghost"))
    assert resp.status == 201
    assert demo_db.execute("SELECT count(*) FROM employees WHERE login = 'ghost'").fetchone()[0] == 1


@pytest.mark.both_stores
async def test_update_that_reached_the_app_is_settled_from_the_app(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path
) -> None:
    scim = Scim(client)
    _, user = await scim.post("/Users", user_body("upd", title="before"))
    runtime = client.app[APPS]["demo"]
    seq, row = await runtime.provisioner.store.begin_write("demo", "User", user["id"], "update", new_unique_key="upd")
    await runtime.connector.update("User", row.native_id, {"job_title": "after"})

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    resp, body = await scim.get(f"/Users/{user['id']}")
    assert body["title"] == "after"
    # The claim is gone: the resource takes writes again, and the list (served from the gateway copy) agrees.
    resp, body = await scim.patch(f"/Users/{user['id']}", [{"op": "replace", "path": "title", "value": "again"}])
    assert resp.status == 200 and body["title"] == "again"
    _, listed = await scim.get('/Users?filter=title eq "again"')
    assert listed["totalResults"] == 1


@pytest.mark.both_stores
async def test_delete_that_reached_the_app_is_finished(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path, demo_db: Any
) -> None:
    scim = Scim(client)
    _, user = await scim.post("/Users", user_body("gone"))
    runtime = client.app[APPS]["demo"]
    seq, row = await runtime.provisioner.store.begin_write("demo", "User", user["id"], "delete")
    await runtime.connector.delete("User", row.native_id)

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    resp, _ = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 404
    resp, _ = await scim.post("/Users", user_body("gone"))
    assert resp.status == 201


@pytest.mark.both_stores
async def test_delete_that_never_reached_the_app_keeps_the_resource(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path
) -> None:
    scim = Scim(client)
    _, user = await scim.post("/Users", user_body("stays"))
    await client.app[APPS]["demo"].provisioner.store.begin_write("demo", "User", user["id"], "delete")

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    resp, body = await scim.get(f"/Users/{user['id']}")
    assert resp.status == 200 and body["userName"] == "stays"
    resp, _ = await scim.delete(f"/Users/{user['id']}")
    assert resp.status == 204


async def test_a_write_left_pending_while_serving_is_settled_by_the_sweep(aiohttp_client: Any, data_dir: Path) -> None:
    import asyncio

    client = await aiohttp_client(create_app(demo_settings(data_dir, recovery_interval=0.05)))
    runtime = client.app[APPS]["demo"]
    store, connector = runtime.provisioner.store, runtime.connector
    # A create whose settle never happened (say the store failed right after the app answered).
    await store.begin_create("demo", "User", "33333333-3333-4333-8333-333333333333", "swept", {"userName": "swept"}, utc_now())
    await connector.create("User", {"login": "swept"})
    scim = Scim(client)
    for _ in range(100):
        _, body = await scim.get('/Users?filter=userName eq "swept"')
        if body["totalResults"] == 1:
            break
        await asyncio.sleep(0.02)
    assert body["totalResults"] == 1 and body["Resources"][0]["id"] == "33333333-3333-4333-8333-333333333333"
    assert await store.pending("demo") == []


async def test_the_sweep_leaves_writes_in_flight_alone(aiohttp_client: Any, data_dir: Path) -> None:
    client = await aiohttp_client(create_app(demo_settings(data_dir)))
    provisioner = client.app[APPS]["demo"].provisioner
    seq = await provisioner.store.begin_create(
        "demo", "User", "44444444-4444-4444-8444-444444444444", "busy", {"userName": "busy"}, utc_now()
    )
    with provisioner.pipeline.tracking([seq]):  # as while its app call runs
        assert await provisioner.recover(older_than=0) == 0
        assert [p.seq for p in await provisioner.store.pending("demo")] == [seq]
    assert await provisioner.recover(older_than=0) == 1


@pytest.mark.both_stores
async def test_recovery_does_not_steal_a_record_linked_to_another_resource(
    store_overrides: dict[str, Any], aiohttp_client: Any, client: TestClient, data_dir: Path
) -> None:
    scim = Scim(client)
    _, owner = await scim.post("/Users", user_body("taken"))
    store = client.app[APPS]["demo"].provisioner.store
    # A pending create of the same login in another app type slot cannot happen through the API (the
    # store's unique key refuses it); reproduce what a crash between two processes could leave behind.
    seq = await store.begin_create(
        "demo", "User", "55555555-5555-4555-8555-555555555555", "taken-2", {"userName": "TAKEN"}, utc_now()
    )

    scim = await restart(aiohttp_client, client, data_dir, store_overrides)
    assert await scim.client.app[APPS]["demo"].provisioner.store.pending("demo") == []
    resp, body = await scim.get(f"/Users/{owner['id']}")
    assert resp.status == 200 and body["userName"] == "taken"
    resp, _ = await scim.get("/Users/55555555-5555-4555-8555-555555555555")
    assert resp.status == 404
    assert seq


async def test_a_shared_store_leaves_a_peers_fresh_write_alone_at_start_up(
    aiohttp_client: Any, client: TestClient, data_dir: Path
) -> None:
    """With --workers or PostgreSQL, a starting process must not settle what a live peer is doing right now."""
    store = client.app[APPS]["demo"].provisioner.store
    rid = "33333333-3333-4333-8333-333333333333"
    seq = await store.begin_create("demo", "User", rid, "inflight", {"userName": "inflight"}, utc_now())
    await client.close()
    shared = await aiohttp_client(create_app(demo_settings(data_dir, shared_store=True)))
    runtime = shared.app[APPS]["demo"]
    assert [e.seq for e in await runtime.provisioner.store.pending("demo", None)] == [seq], "still the peer's"
    # ...while a process alone on its store takes it at once (rolled back: the app never got it).
    await shared.close()
    alone = await aiohttp_client(create_app(demo_settings(data_dir)))
    assert await alone.app[APPS]["demo"].provisioner.store.pending("demo", None) == []
