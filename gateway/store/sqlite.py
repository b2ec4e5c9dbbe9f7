"""The embedded correlation store's database: one SQLite file (aiosqlite, WAL).

One connection per process; each transaction runs under a lock (coroutines share the connection, so one
transaction must not interleave with another's statements) as BEGIN IMMEDIATE, which takes the file's
write lock: several processes on one file take turns (WAL, busy timeout). Statements run on the event
loop's thread (gateway/inline_sqlite.py). The transactions of concurrent requests share a commit
(group.py): each in its own savepoint of one BEGIN IMMEDIATE ... COMMIT.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .. import inline_sqlite
from .base import StoreUnavailable
from .correlation import Store
from .dialect import Conn, DbRow, Dialect, Duplicate
from .group import GroupCommit, Member
from .migrations import migrations, statements

T = TypeVar("T")
K = TypeVar("K")

TYPES = {
    "key": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "text": "TEXT",
    "json": "TEXT",
    "int64": "INTEGER",
    "float": "REAL",
    "now": "",
    "member_seq": "",
}
CHUNK = 500  # ids per IN (...) list
_UNIQUE_ERRORS = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY

# The dialect whose batch() the running task is inside (its transactions are then savepoints of the batch's).
_BATCH: contextvars.ContextVar[SqliteDialect | None] = contextvars.ContextVar("sqlite_store_batch", default=None)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _json_path(keys: tuple[str, ...]) -> str:
    """A JSON path literal, every key quoted (URNs hold ':' and '.')."""
    path = "$" + "".join("." + '"' + k.replace('"', '\\"') + '"' for k in keys)
    return "'" + path.replace("'", "''") + "'"


def _unavailable(exc: Exception) -> Exception:
    """A member's failure as its waiter sees it: a database error is StoreUnavailable, as in access()."""
    if isinstance(exc, sqlite3.OperationalError):
        unavailable = StoreUnavailable(f"the correlation store failed: {exc}")
        unavailable.__cause__ = exc
        return unavailable
    return exc


class _Connection:
    """The store's view of the aiosqlite connection."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def _run(self, sql: str, params: Sequence[Any]) -> aiosqlite.Cursor:
        try:
            return await self.db.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) in _UNIQUE_ERRORS or "UNIQUE" in str(exc):
                raise Duplicate(str(exc)) from None
            raise

    async def execute(self, sql: str, *params: Any) -> int:
        return (await self._run(sql, params)).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self.db.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) in _UNIQUE_ERRORS or "UNIQUE" in str(exc):
                raise Duplicate(str(exc)) from None
            raise

    async def fetchrow(self, sql: str, *params: Any) -> DbRow | None:
        found = await self.fetch(sql, *params)  # all: a RETURNING statement completes
        return found[0] if found else None

    async def fetch(self, sql: str, *params: Any) -> list[DbRow]:
        return list(await (await self._run(sql, params)).fetchall())


class SqliteDialect(Dialect):
    false = "0"
    no_limit = -1
    for_update = ""  # BEGIN IMMEDIATE holds the whole file
    member_order = "m.rowid"
    clock = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self.group: GroupCommit[Conn] = GroupCommit(self._run_group)

    @property
    def conn(self) -> _Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Statements run on the event loop's thread; only a wait for another process's lock (up to 10 s) leaves it.
            db = await inline_sqlite.connect(self.path, busy_timeout=10.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.create_function("scim_lower", 1, _lower, deterministic=True)
        except (sqlite3.Error, OSError) as exc:  # a read-only or full directory, a file that is no database
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._conn = _Connection(db)
        await self._migrate()

    async def close(self) -> None:
        await self.group.drain()
        if self._conn is not None:
            await self._conn.db.close()
            self._conn = None

    async def _migrate(self) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await conn.fetchrow("SELECT max(version) AS v FROM schema_version")
            current = (row["v"] if row else None) or 0
            for number, script in enumerate(migrations(TYPES), start=1):
                if number > current:
                    for statement in statements(script):
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_version (version) VALUES (?)", number)

        await self.transaction(work)

    @asynccontextmanager
    async def access(self) -> AsyncIterator[Conn]:
        """The connection, to one coroutine at a time; a database that fails is StoreUnavailable (503)."""
        if _BATCH.get() is self:  # inside this task's batch(), which holds the lock
            yield self.conn
            return
        async with self._lock:
            try:
                yield self.conn
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the correlation store failed: {exc}") from exc

    async def transaction(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        db = self.conn.db
        if _BATCH.get() is self:  # one write of a batch: its own savepoint
            await db.execute("SAVEPOINT write")
            try:
                result = await work(self.conn)
            except BaseException:
                await db.execute("ROLLBACK TO write")
                await db.execute("RELEASE write")
                raise
            await db.execute("RELEASE write")
            return result
        return await self.group.transaction(work)

    async def _run_group(self, group: list[Member[Conn]]) -> list[tuple[Member[Conn], Any]]:
        """One group in one transaction; each member in a savepoint of its own when there are several."""
        done: list[tuple[Member[Conn], Any]] = []
        async with self.access() as conn:
            db = self.conn.db
            alone = len(group) == 1
            await db.execute("BEGIN IMMEDIATE")
            try:
                for member in group:
                    if not member.waiting:  # cancelled while the group waited for the lock
                        continue
                    if not alone:
                        await db.execute("SAVEPOINT member")
                    try:
                        result = await member.work(conn)
                    except Exception as exc:
                        if alone or not db.in_transaction:  # SQLite rolled the whole transaction back (a full disk)
                            raise
                        await db.execute("ROLLBACK TO member")
                        await db.execute("RELEASE member")
                        member.fail(_unavailable(exc))
                        continue
                    if not alone:
                        await db.execute("RELEASE member")
                    done.append((member, result))
                await db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                if alone and isinstance(exc, Exception) and not isinstance(exc, sqlite3.OperationalError):
                    group[0].fail(exc)  # the member's own failure (a name taken): not the store's
                    return []
                raise
        return done

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """The transactions of this task inside, in one transaction (one commit, one fsync)."""
        if _BATCH.get() is self:
            yield
            return
        async with self._lock:
            token = _BATCH.set(self)
            db = self.conn.db
            try:
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    yield
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the correlation store failed: {exc}") from exc
            finally:
                _BATCH.reset(token)

    # -- values
    def encode(self, data: dict[str, Any]) -> Any:
        return _dumps(data)

    def decode(self, value: Any) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(value)
        return result

    def chunks(self, items: Sequence[K]) -> list[Sequence[K]]:
        return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]

    def among(self, column: str, items: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(items))})", list(items)

    # -- the query renderer's hooks (JSON1)
    def extract(self, source: str, keys: tuple[str, ...], kind: str = "text") -> str:
        # json_extract gives SQL values of the JSON value's own type: `kind` is for dialects that must cast.
        return f"json_extract({source}, {_json_path(keys)})"

    def element(self, kind: str = "text") -> str:
        return "e.value"

    def each(self, source: str, keys: tuple[str, ...]) -> str:
        return f"json_each({source}, {_json_path(keys)}) AS e"

    def primary_last(self) -> str:
        return f"{self.extract('e.value', ('primary',))} IS NOT 1"

    def fold(self, expr: str) -> str:
        return f"scim_lower({expr})"

    def bool_literal(self, value: bool) -> Any:
        return 1 if value else 0

    def contains(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return f"COALESCE(instr({expr}, {ph(text)}) > 0, 0)"

    def starts_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return f"COALESCE(instr({expr}, {ph(text)}) = 1, 0)"

    def ends_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return f"COALESCE(substr({expr}, length({expr}) - length({ph(text)}) + 1) = {ph(text)}, 0)"


class SqliteStore(Store):
    """The correlation store in one SQLite file."""

    def __init__(self, path: str | Path, *, labels: Sequence[str] = ()) -> None:
        self.sqlite = SqliteDialect(path)
        super().__init__(self.sqlite, labels=labels)
        self.path = str(path)

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection (for diagnostics and tests; the store's own statements go through the dialect)."""
        return self.sqlite.conn.db


__all__ = ["SqliteDialect", "SqliteStore"]
