"""The scheduled reconcile (`reconcile: {interval}` in the mapping): the serving gateway reconciles the app on its
own and keeps the report in the store; with several processes on one store (`serve --workers 2`, and two
gateways on one PostgreSQL store as two hosts would be) only one runs each turn."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from gateway.demo import demo_mapping_path, ensure_demo_database
from gateway.store import SavedReport, Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.conftest import LiveGateway
from tests.services import pg_database, pg_url

__all__ = ["pg_database"]


def setup_demo(root: Path) -> Path:
    """The demo app with a scheduled reconcile, and an account in it that the gateway does not manage."""
    data = root / "data"
    ensure_demo_database(data)
    with closing(sqlite3.connect(data / "demo.db")) as db:
        db.execute("INSERT INTO employees (login, first_nm, status) VALUES ('stray', 'Stray', 'A')")
        db.commit()
    mapping = root / "demo.yaml"
    mapping.write_text(demo_mapping_path().read_text() + "reconcile:\n  interval: 60\n")
    return mapping


async def reports_after_a_while(open_store: Callable[[], Store], app: str) -> list[SavedReport]:
    """The app's reports once the first has been kept, and a few seconds more for a second one (there must be none)."""
    store = open_store()
    await store.open()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and await store.last_report(app) is None:
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
        return await store.reports(app)
    finally:
        await store.close()


def check(reports: list[SavedReport]) -> None:
    assert len(reports) == 1, [r.report.get("trigger") for r in reports]
    [saved] = reports
    assert saved.report["trigger"] == "schedule" and saved.found == 1
    assert [o["name"] for o in saved.report["orphans"]] == ["stray"]
    assert saved.report["orphans"][0]["plan"] == "delete", "what --fix would do is planned; a scheduled run fixes nothing"


async def test_one_of_two_workers_reconciles_each_turn(tmp_path: Path) -> None:
    mapping = setup_demo(tmp_path)
    gateway = LiveGateway(tmp_path)
    await asyncio.to_thread(gateway.start, "--config", str(mapping), "--workers", "2")
    try:
        reports = await reports_after_a_while(lambda: SqliteStore(tmp_path / "data" / "gateway.db"), "demo")
    finally:
        await asyncio.to_thread(gateway.stop)
    check(reports)
    with closing(sqlite3.connect(tmp_path / "data" / "demo.db")) as db:
        assert db.execute("SELECT count(*) FROM employees WHERE login = 'stray'").fetchone()[0] == 1, "nothing was fixed"


async def test_one_of_two_hosts_on_one_postgresql_store_reconciles_each_turn(tmp_path: Path, pg_database: str) -> None:
    mapping = setup_demo(tmp_path)
    url = pg_url(pg_database)
    a, b = LiveGateway(tmp_path), LiveGateway(tmp_path)
    await asyncio.gather(
        asyncio.to_thread(a.start, "--config", str(mapping), "--store", url),
        asyncio.to_thread(b.start, "--config", str(mapping), "--store", url),
    )
    try:
        reports = await reports_after_a_while(lambda: PostgresStore(url), "demo")
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
    check(reports)


@pytest.mark.parametrize("interval", ["30s", "1x", -5])
def test_an_interval_too_short_or_unreadable_is_refused(tmp_path: Path, interval: object) -> None:
    from gateway.cli import main

    mapping = tmp_path / "demo.yaml"
    mapping.write_text(demo_mapping_path().read_text() + f"reconcile:\n  interval: {interval}\n")
    assert main(["check", str(mapping)]) == 1
