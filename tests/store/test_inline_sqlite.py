"""SQLite statements run on the event loop's thread, and a wait for another process's lock never blocks the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from gateway import inline_sqlite
from gateway.store.sqlite import SqliteStore


async def test_statements_run_on_the_event_loop_thread(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        await store.db.create_function("thread_id", 0, threading.get_ident)
        row = await (await store.db.execute("SELECT thread_id()")).fetchone()
        assert row[0] == threading.get_ident()
    finally:
        await store.close()


async def test_a_statement_waiting_for_another_process_lock_waits_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    store = SqliteStore(path)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection, as far as SQLite knows
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        write = asyncio.create_task(store.begin_create("app", "User", "id-1", "alice", {"userName": "alice"}, "now"))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        # The loop kept running while the write waited for the lock; the write is still waiting.
        assert ticks == 20 and not write.done()
        other.execute("COMMIT")
        seq = await asyncio.wait_for(write, 10)
        assert seq > 0
        row = await (await store.db.execute("SELECT unique_key, state FROM resources WHERE id = 'id-1'")).fetchone()
        assert tuple(row) == ("alice", "creating")
    finally:
        other.close()
        await store.close()


async def test_a_lock_held_past_the_busy_timeout_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = await inline_sqlite.connect(path, busy_timeout=0.2, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        other.execute("BEGIN IMMEDIATE")
        try:
            await asyncio.wait_for(conn.execute("INSERT INTO t VALUES (1)"), 5)
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
        else:
            raise AssertionError("the insert went through a held lock")
        other.execute("ROLLBACK")
        await conn.execute("INSERT INTO t VALUES (2)")  # the busy timeout went back to 0 and the connection works
        row = await (await conn.execute("SELECT x FROM t")).fetchall()
        assert [r[0] for r in row] == [2]
    finally:
        other.close()
        await conn.close()


async def test_the_sql_connector_runs_sqlite_statements_inline(tmp_path: Path) -> None:
    from scim_gateway_plugins.sql.config import SqlConnectorConfig
    from scim_gateway_plugins.sql.connector import _create_engine
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    config = SqlConnectorConfig.model_validate(
        {"type": "sql", "dsn": "sqlite:///app.db", "tables": {"User": {"table": "t", "key": "id"}}}
    )
    engine = _create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), config)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, inline_sqlite.InlineConnection)
            await raw.driver_connection.create_function("thread_id", 0, threading.get_ident)
            assert (await conn.execute(text("SELECT thread_id()"))).scalar_one() == threading.get_ident()
    finally:
        await engine.dispose()


async def test_a_call_after_a_cancelled_commit_waits_for_it_on_the_worker_thread(tmp_path: Path) -> None:
    # A commit whose caller is cancelled still runs on aiosqlite's thread; a statement or close() made next must not
    # run beside it on the loop's thread (two threads in one sqlite3 connection: this crashed the process).
    conn = await inline_sqlite.connect(tmp_path / "app.db")
    await conn.execute("CREATE TABLE t (v INTEGER)")
    inside = threading.Event()
    spans: list[tuple[str, float, float]] = []
    slow_commit = conn._waiting

    def recording(fn, args, kwargs):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        if getattr(fn, "__name__", "") == "commit":
            inside.set()
            time.sleep(0.3)  # a commit syncing a slow disk
        try:
            return slow_commit(fn, args, kwargs)
        finally:
            spans.append((getattr(fn, "__name__", "?"), start, time.monotonic()))

    conn._waiting = recording  # type: ignore[method-assign]
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO t VALUES (1)")
    commit = asyncio.create_task(conn.commit())
    while not inside.is_set():
        await asyncio.sleep(0.005)
    commit.cancel()
    rows, _ = await conn.run("SELECT count(*) FROM t", ())
    ran_at = time.monotonic()
    await conn.close()
    assert rows == [(1,)]  # it ran after the commit, on the thread, and saw it
    name, _, commit_end = spans[0]
    assert name == "commit" and commit_end <= ran_at
    assert [n for n, _, _ in spans][:2] == ["commit", "_run"]
