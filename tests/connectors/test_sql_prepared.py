"""The connector's prepared-statement paths (plugins/sql/raw.py): what their connections do when a request stops.

On every back end: a write cancelled inside its transaction commits nothing and
hands no connection with an open transaction to the next request; a SQLite
request that finds every connection taken waits `timeout`, then the app is
unavailable (503), and works again once one is free.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from scim_gateway_plugins.sql.connector import SQLITE_POOL_SIZE

from gateway.connectors import AppUnavailable

from .test_sql_backends import BACKENDS, HR, HR_TABLES, drop, fresh_database, opened


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_write_cancelled_in_its_transaction_commits_nothing_and_leaves_none_open(backend: str, tmp_path: Path) -> None:
    db, name = await fresh_database(backend, tmp_path, HR[backend])
    connector = await opened(db.dsn, HR_TABLES, tmp_path)
    try:
        kind = connector._kinds["User"]
        inserted, hold = asyncio.Event(), asyncio.Event()

        async def write() -> None:
            async with connector._links().transaction() as link:
                await connector._insert(link, kind, {"login": "cancelled"})
                inserted.set()
                await hold.wait()

        task = asyncio.create_task(write())
        await inserted.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # More writes than connections left idle: each gets a connection with no transaction of the cancelled one.
        for i in range(3):
            native_id = await connector.create("User", {"login": f"after{i}"})
            assert (await connector.get("User", native_id) or {}).get("login") == f"after{i}"
        await connector.update("User", native_id, {"job_title": "t"})
        assert await db.rows("SELECT login, job_title FROM employees ORDER BY emp_no") == [
            ("after0", None),
            ("after1", None),
            ("after2", "t"),
        ]
    finally:
        await connector.close()
        await drop(backend, name)


async def test_a_request_that_finds_every_sqlite_connection_taken_is_unavailable(tmp_path: Path) -> None:
    db, _ = await fresh_database("sqlite", tmp_path, HR["sqlite"])
    connector = await opened(db.dsn, HR_TABLES, tmp_path, timeout=0.3)
    try:
        native_id = await connector.create("User", {"login": "x"})
        async with contextlib.AsyncExitStack() as held:
            for _ in range(SQLITE_POOL_SIZE):
                await held.enter_async_context(connector._links().link())
            with pytest.raises(AppUnavailable) as caught:
                await connector.get("User", native_id)
            assert caught.value.detail == "no database connection came free in time"
            assert caught.value.retry_after == 5
        assert (await connector.get("User", native_id) or {}).get("login") == "x"
    finally:
        await connector.close()
