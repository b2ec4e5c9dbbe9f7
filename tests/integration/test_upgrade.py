"""A data directory made by an earlier release is upgraded in place (issue 16): the demo database by its numbered
migrations (PRAGMA user_version), the store by its own (schema_version). The fixtures are what release 9f3707a left:
its `serve` and SCIM requests made them, on its SQLite store (tests/fixtures/release_9f3707a, kept by sqlite3's
iterdump) and on a PostgreSQL store (tests/fixtures/release_9f3707a_pg, kept by pg_dump)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import DEMO_MIGRATIONS, DemoDatabaseError, ensure_demo_database
from gateway.store.migrations import migrations
from gateway.store.sqlite import TYPES
from tests.conftest import PATCH_URN, TOKEN, USER_URN, LiveGateway
from tests.services import pg_database, pg_url

__all__ = ["pg_database"]  # the fixture, for this module's tests

RELEASE = Path(__file__).parent.parent / "fixtures" / "release_9f3707a"
RELEASE_PG = Path(__file__).parent.parent / "fixtures" / "release_9f3707a_pg"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def restore(data_dir: Path, release: Path = RELEASE, store: bool = True) -> dict[str, str]:
    """The release's data directory, rebuilt from its dumps (the store too, when it was SQLite); the ids it gave."""
    data_dir.mkdir(parents=True)
    for name in ("demo", "gateway") if store else ("demo",):
        with closing(sqlite3.connect(data_dir / f"{name}.db")) as db:
            db.executescript((release / f"{name}.sql").read_text())
    ids: dict[str, str] = json.loads((release / "ids.json").read_text())
    return ids


def scalar(path: Path, sql: str) -> Any:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchone()[0]


def call(gateway: LiveGateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        gateway.base_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def upgraded(tmp_path: Path) -> Iterator[tuple[LiveGateway, dict[str, str]]]:
    gateway = LiveGateway(tmp_path / "live")
    ids = restore(gateway.root / "data")
    data = gateway.root / "data"
    assert scalar(data / "demo.db", "PRAGMA user_version") == 0  # no version: made before migrations
    assert scalar(data / "gateway.db", "SELECT max(version) FROM schema_version") == 1
    gateway.start()
    try:
        yield gateway, ids
    finally:
        gateway.stop()


def test_the_previous_release_s_data_directory_is_upgraded_and_works(upgraded: tuple[LiveGateway, dict[str, str]]) -> None:
    gateway, ids = upgraded
    data = gateway.root / "data"
    assert scalar(data / "gateway.db", "SELECT count(*) FROM sqlite_master WHERE name = 'resources_listing'") == 1
    serves_the_release_s_data(gateway, ids, lambda sql: scalar(data / "gateway.db", sql))


def serves_the_release_s_data(gateway: LiveGateway, ids: dict[str, str], store: Callable[[str], Any]) -> None:
    """The release's data, migrated (`store` answers a query of the store with one value), read and written."""
    data = gateway.root / "data"
    assert scalar(data / "demo.db", "PRAGMA user_version") == len(DEMO_MIGRATIONS)
    assert store("SELECT max(version) FROM schema_version") == len(migrations(TYPES))

    # What the release wrote is all there, as it wrote it.
    status, ann = call(gateway, "GET", f"/Users/{ids['ann']}")
    assert status == 200, ann
    assert (ann["userName"], ann["title"], ann["name"]["familyName"], ann[ENT]["department"]) == (
        "ann.old@example.com", "Engineer", "Old", "R&D")  # fmt: skip
    assert ann["emails"][0]["value"] == "ann.old@example.com" and ann["externalId"] == "ext-ann", ann
    status, bob = call(gateway, "GET", f"/Users/{ids['bob']}")
    assert status == 200 and bob["active"] is False and bob[ENT]["manager"]["value"] == ids["ann"], bob
    status, group = call(gateway, "GET", f"/Groups/{ids['group']}")
    assert status == 200 and sorted(m["value"] for m in group["members"]) == sorted([ids["ann"], ids["bob"]]), group
    status, found = call(gateway, "GET", "/Users?filter=userName%20eq%20%22ANN.OLD@example.com%22")
    assert status == 200 and [u["id"] for u in found["Resources"]] == [ids["ann"]], found

    # ...and it works: updates reach the app's rows, names stay unique, new resources and deletes go through.
    status, patched = call(gateway, "PATCH", f"/Users/{ids['ann']}",
                           {"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "title", "value": "Lead"}]})  # fmt: skip
    assert status == 200 and patched["title"] == "Lead" and patched["meta"]["version"] == 'W/"2"', patched
    assert scalar(data / "demo.db", "SELECT job_title FROM employees WHERE login = 'ann.old@example.com'") == "Lead"
    status, taken = call(gateway, "POST", "/Users", {"schemas": [USER_URN], "userName": "Bob.Old@example.com"})
    assert status == 409 and taken["scimType"] == "uniqueness", taken
    status, new = call(gateway, "POST", "/Users", {"schemas": [USER_URN], "userName": "new@example.com", "active": True})
    assert status == 201, new
    status, _ = call(gateway, "DELETE", f"/Users/{ids['bob']}")
    assert status == 204
    status, group = call(gateway, "GET", f"/Groups/{ids['group']}")
    assert [m["value"] for m in group["members"]] == [ids["ann"]], group
    assert scalar(data / "demo.db", "SELECT count(*) FROM employees") == 2
    assert store("SELECT count(*) FROM journal WHERE state = 'pending'") == 0


async def test_the_previous_release_s_postgresql_store_is_upgraded_and_works(tmp_path: Path, pg_database: str) -> None:
    """Release 9f3707a's PostgreSQL store (its own DDL, written out in its postgres.py) under the current gateway."""
    import asyncpg

    url = pg_url(pg_database)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute((RELEASE_PG / "gateway.pg.sql").read_text())
        await conn.execute("RESET search_path")  # the dump empties it for its own session
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == 1
        assert await conn.fetchval("SELECT to_regclass('public.resources_listing')") is None  # migration 2 not yet
    finally:
        await conn.close()
    gateway = LiveGateway(tmp_path / "live")
    ids = restore(gateway.root / "data", RELEASE_PG, store=False)

    def store(sql: str) -> Any:  # called in a thread of its own: its own loop, its own connection
        async def fetch() -> Any:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        return asyncio.run(fetch())

    await asyncio.to_thread(gateway.start, "--store", url)
    try:
        assert await asyncio.to_thread(store, "SELECT to_regclass('public.resources_listing')::text") == "resources_listing"
        await asyncio.to_thread(serves_the_release_s_data, gateway, ids, store)
    finally:
        await asyncio.to_thread(gateway.stop)


def test_demo_migrations_apply_once_in_order_and_a_newer_database_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    restore(data)
    later = tmp_path / "0002_badge.sql"
    later.write_text("-- a later release's change; a comment; with semicolons\nALTER TABLE employees ADD COLUMN badge TEXT;\n")
    ensure_demo_database(data, (*DEMO_MIGRATIONS, later))
    ensure_demo_database(data, (*DEMO_MIGRATIONS, later))  # the second run applies nothing (ALTER twice would fail)
    assert scalar(data / "demo.db", "PRAGMA user_version") == len(DEMO_MIGRATIONS) + 1
    assert scalar(data / "demo.db", "SELECT count(*) FROM employees WHERE badge IS NULL") == 2  # the rows kept
    with pytest.raises(DemoDatabaseError, match="made by a newer release"):
        ensure_demo_database(data)
    broken = tmp_path / "0003_broken.sql"
    broken.write_text("CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;\n")
    with pytest.raises(sqlite3.OperationalError):
        ensure_demo_database(data, (*DEMO_MIGRATIONS, later, broken))
    # A failed migration changes nothing: not its first statement, not the version.
    assert scalar(data / "demo.db", "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'") == 0
    assert scalar(data / "demo.db", "PRAGMA user_version") == len(DEMO_MIGRATIONS) + 1


def test_serve_refuses_a_newer_release_s_demo_database_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    data = tmp_path / "data"
    restore(data)
    with closing(sqlite3.connect(data / "demo.db")) as db:
        db.execute(f"PRAGMA user_version = {len(DEMO_MIGRATIONS) + 5}")
    assert main(["serve", "--data-dir", str(data), "--port", "1"]) == 1
    assert "was made by a newer release" in capsys.readouterr().err
