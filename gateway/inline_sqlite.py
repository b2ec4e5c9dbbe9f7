"""aiosqlite connections that run each statement on the event loop's own thread, unless it must wait for a lock.

aiosqlite sends every call (execute, fetchone, commit...) to a worker thread
and back: two thread switches per call, a dozen per SCIM request, and on a
busy machine each switch waits for the GIL. A statement on a local SQLite file
takes microseconds, far less than the switches, so here it runs inline. Two
things may take long, and stay on the worker thread: a commit (it may sync the
file to disk), and waiting for another process's write lock: a statement that
finds the lock taken fails at once (busy timeout 0) and is run again on the
worker thread with the real busy timeout, so the event loop never waits.

This overrides aiosqlite's private `Connection._execute` (0.22's shape; the
version is pinned in pyproject.toml and tests/store/test_inline_sqlite.py checks
both paths).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _is_commit(fn: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    if fn is _run:
        return False  # InlineConnection.run: never a commit (those go through commit())
    if getattr(fn, "__name__", "") == "commit":
        return True
    if not args or not isinstance(args[0], str):
        return False
    head = args[0][:32].lstrip() or args[0].lstrip()  # a prefix: the statement may be long
    return head[:6].upper() in ("COMMIT", "END")


def _retrieved(call: asyncio.Future[Any]) -> None:
    """A worker-thread call whose caller was cancelled: its outcome is read, so asyncio logs no unretrieved error."""
    if not call.cancelled():
        call.exception()


def _run(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> tuple[list[Any], int]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall(), cursor.rowcount
    finally:
        cursor.close()


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements run inline; one waiting for a lock goes to the worker thread."""

    busy_timeout_ms: int = 10_000
    _offloop: asyncio.Future[Any] | None = None  # the worker thread's last call, which may outlive its caller

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        running = self._offloop
        if running is not None and not running.done():
            # A cancelled caller's call (a commit, a wait for a lock) still runs on the worker thread: this one queues
            # behind it there, never beside it on the loop's thread (a sqlite3 connection is not for two threads at once).
            return await self._off_loop(fn, args, kwargs)
        if _is_commit(fn, args):
            # A commit may sync the file to disk (milliseconds, more on a busy disk): off the loop, as before.
            return await self._off_loop(fn, args, kwargs)
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        # Another process holds the lock: wait for it off the event loop. A busy statement changed nothing.
        return await self._off_loop(fn, args, kwargs)

    async def _off_loop(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """On the worker thread, remembered until it ends there even if its caller is cancelled meanwhile."""
        call = asyncio.ensure_future(super()._execute(self._waiting, fn, args, kwargs))
        call.add_done_callback(_retrieved)
        self._offloop = call
        return await asyncio.shield(call)

    async def run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[Any], int]:
        """Run one statement (never COMMIT: use commit()) and fetch it whole: (its rows as tuples, its rowcount).

        One call where aiosqlite's execute, fetchall and close are three.
        """
        return await self._execute(_run, self._conn, sql, params)

    def _waiting(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        try:
            return fn(*args, **kwargs)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")


def connect(database: str | Path, *, busy_timeout: float = 10.0, **kwargs: Any) -> InlineConnection:
    """Like aiosqlite.connect (await it); `busy_timeout` seconds bound a wait for another process's lock."""
    location = str(database)

    def connector() -> sqlite3.Connection:
        # Used from the loop's thread and, to wait for a lock, from aiosqlite's worker: never both at once.
        return sqlite3.connect(location, timeout=0, check_same_thread=False, **kwargs)

    connection = InlineConnection(connector, 64)
    connection.busy_timeout_ms = int(busy_timeout * 1000)
    connection._thread.daemon = True  # as SQLAlchemy does: a forgotten connection must not keep the process alive
    return connection
