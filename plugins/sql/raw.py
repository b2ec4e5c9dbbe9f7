"""The SQL connector's hot paths: statements compiled once, run on the driver's own connection.

SQLAlchemy Core builds, compiles and result-processes every statement it runs:
most of a live GET's or a create's cost. Here a statement is compiled once per
(kind, operation, column set) into its SQL text, its parameter order and its
type processors (SQLAlchemy's own, for the connected dialect: quoting,
paramstyle, bind casts and value conversions stay its), and each request only
binds values and runs that text on the driver: aiosqlite (inline), asyncpg or
aiomysql. A driver failure becomes SQLAlchemy's DBAPIError, the same the
connector's error translation reads off Core.

Connections: SQLite's are this module's own small pool (each set up as the
engine's would be); PostgreSQL's and MariaDB's come from the SQLAlchemy engine's
pool (pre-ping, connect-time settings, its reset on return kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import Float, Numeric
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import greenlet_spawn

from gateway import inline_sqlite

Processor = Callable[[Any], Any] | None

# A Numeric column's result processor depends on the type the server reports (asyncpg: its oid).
_PG_FLOAT_OID, _PG_NUMERIC_OID = 701, 1700


@dataclass(frozen=True, slots=True)
class Prepared:
    """One compiled statement: its text, its bind parameters in order, and how to read its rows."""

    sql: str
    binds: tuple[tuple[str, Any, Processor], ...]  # (name, value the statement itself binds, processor)
    names: tuple[str, ...]  # the result's keys
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]  # the result columns that have a processor

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, fixed, processor in self.binds:
            value = values[name] if name in values else fixed
            out.append(value if processor is None or value is None else processor(value))
        return tuple(out)

    def records(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        names = self.names
        records = [dict(zip(names, row, strict=True)) for row in rows]
        for record in records:
            for name, processor in self.processors:
                value = record[name]
                if value is not None:
                    record[name] = processor(value)
        return records


def prepare(stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None = None) -> Prepared:
    """Compile `stmt` once for `dialect` (`column_keys`: the columns an INSERT or UPDATE sets, bound by name)."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None)
    assert isinstance(compiled, SQLCompiler)
    if not dialect.positional or compiled.positiontup is None:
        raise TypeError(f"{dialect.name}: only positional paramstyles are supported here")
    if compiled.post_compile_params or compiled.literal_execute_params:
        raise TypeError("a statement with parameters rendered at execution time cannot be prepared once")
    fixed = compiled.construct_params(_check=False) or {}
    processors = compiled._bind_processors
    binds: list[tuple[str, Any, Processor]] = []
    for name in compiled.positiontup:
        processor = processors.get(name)
        if processor is not None and not callable(processor):
            raise TypeError("a tuple-valued parameter cannot be prepared once")
        binds.append((name, fixed.get(name), processor))
    columns = [(entry.keyname, _result_processor(dialect, entry.type)) for entry in compiled._result_columns or ()]
    names = tuple(name for name, _ in columns)
    readers = tuple((name, processor) for name, processor in columns if processor is not None)
    return Prepared(compiled.string, tuple(binds), names, readers)


def _result_processor(dialect: Dialect, type_: TypeEngine[Any]) -> Processor:
    try:
        return type_._cached_result_processor(dialect, None)
    except (TypeError, ValueError, LookupError, AttributeError):
        pass
    if isinstance(type_, Numeric) and dialect.name == "postgresql":
        return type_._cached_result_processor(dialect, _PG_FLOAT_OID if isinstance(type_, Float) else _PG_NUMERIC_OID)
    raise TypeError(f"{dialect.name}: no result processor for {type_!r} without the server's column type")


# ---------------------------------------------------------------- links: one checked-out connection


class Link:
    """One checked-out connection: run prepared statements, in a transaction or (one statement) without."""

    async def fetch(self, p: Prepared, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def run(self, p: Prepared, values: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it matched."""
        raise NotImplementedError

    async def begin(self) -> None:
        raise NotImplementedError

    async def commit(self) -> None:
        raise NotImplementedError

    async def rollback(self) -> None:
        raise NotImplementedError


class _SqliteLink(Link):
    def __init__(self, conn: inline_sqlite.InlineConnection) -> None:
        self.conn = conn

    async def fetch(self, p: Prepared, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            rows, _count = await self.conn.run(p.sql, p.params(values))
        except sqlite3.Error as exc:
            raise _wrapped(exc, sqlite3.Error) from exc
        return p.records(rows)

    async def run(self, p: Prepared, values: Mapping[str, Any]) -> int:
        try:
            _rows, count = await self.conn.run(p.sql, p.params(values))
        except sqlite3.Error as exc:
            raise _wrapped(exc, sqlite3.Error) from exc
        return count

    async def begin(self) -> None:
        # IMMEDIATE takes the write lock up front: two writers wait (busy timeout) instead of failing on an upgrade.
        await self._call(self.conn.run("BEGIN IMMEDIATE", ()))

    async def commit(self) -> None:
        await self._call(self.conn.commit())

    async def rollback(self) -> None:
        await self._call(self.conn.rollback())

    @staticmethod
    async def _call(call: Any) -> Any:
        try:
            return await call
        except sqlite3.Error as exc:
            raise _wrapped(exc, sqlite3.Error) from exc


class _PostgresLink(Link):
    """asyncpg: outside begin() each statement is its own transaction (asyncpg's autocommit)."""

    def __init__(self, adapted: Any) -> None:
        self.adapted = adapted  # SQLAlchemy's adapter, which translates asyncpg's errors to DBAPI ones
        self.conn = adapted.driver_connection
        self.transaction: Any = None

    async def fetch(self, p: Prepared, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        return p.records(await self._call(self.conn.fetch(p.sql, *p.params(values))))

    async def run(self, p: Prepared, values: Mapping[str, Any]) -> int:
        status = await self._call(self.conn.execute(p.sql, *p.params(values)))
        word = status.rpartition(" ")[2]
        return int(word) if word.isdigit() else 0

    async def begin(self) -> None:
        transaction = self.conn.transaction()
        await self._call(transaction.start())
        self.transaction = transaction

    async def commit(self) -> None:
        transaction, self.transaction = self.transaction, None
        await self._call(transaction.commit())

    async def rollback(self) -> None:
        transaction, self.transaction = self.transaction, None
        if transaction is not None:
            await self._call(transaction.rollback())

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            dbapi = self.adapted.dbapi
            try:
                self.adapted._handle_exception(exc)  # raises the DBAPI error SQLAlchemy would (sqlstate, cause)
            except dbapi.Error as translated:
                raise _wrapped(translated, dbapi.Error) from exc


class _MysqlLink(Link):
    """aiomysql (autocommit off): a transaction starts with the first statement; the pool's reset ends a read's."""

    def __init__(self, adapted: Any) -> None:
        self.conn = adapted.driver_connection

    async def fetch(self, p: Prepared, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows, _count = await self._execute(p, values)
        return p.records(rows)

    async def run(self, p: Prepared, values: Mapping[str, Any]) -> int:
        return (await self._execute(p, values))[1]

    async def _execute(self, p: Prepared, values: Mapping[str, Any]) -> tuple[Sequence[Any], int]:
        try:
            async with self.conn.cursor() as cursor:
                await cursor.execute(p.sql, p.params(values))
                rows = await cursor.fetchall() if cursor.description else ()
                return rows, cursor.rowcount
        except _pymysql_error() as exc:
            raise _wrapped(exc, _pymysql_error()) from exc

    async def begin(self) -> None:
        pass  # autocommit is off: the first statement begins it

    async def commit(self) -> None:
        try:
            await self.conn.commit()
        except _pymysql_error() as exc:
            raise _wrapped(exc, _pymysql_error()) from exc

    async def rollback(self) -> None:
        try:
            await self.conn.rollback()
        except _pymysql_error() as exc:
            raise _wrapped(exc, _pymysql_error()) from exc


def _pymysql_error() -> type[Exception]:
    import pymysql  # type: ignore[import-untyped]

    error: type[Exception] = pymysql.err.Error
    return error


def _wrapped(exc: Exception, base: type[Exception]) -> DBAPIError:
    """The driver's error as SQLAlchemy wraps it (IntegrityError, OperationalError...), its `orig` the driver's."""
    wrapped = DBAPIError.instance(None, None, exc, base)
    assert isinstance(wrapped, DBAPIError)
    return wrapped


# ---------------------------------------------------------------- pools


class Pool:
    """Where links come from; `transaction()` for writes, `link()` for one statement outside one."""

    single_statement_autocommits = False  # a lone write statement needs no transaction of its own

    async def close(self) -> None:
        raise NotImplementedError

    def link(self) -> Any:
        raise NotImplementedError

    def transaction(self, *, single: bool = False) -> _Transaction:
        """A write transaction; `single`: the work is one statement, which on PostgreSQL is a transaction already."""
        return _Transaction(self.link(), bare=single and self.single_statement_autocommits, turn=self.turn())

    def turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A writer's turn: on a database whose writers queue for one file lock, in line with the others."""
        return contextlib.nullcontext()


class WriteTurn:
    """`async with`: SQLite writers of one connector take turns, first come first served.

    Left to wait for the file's lock in threads, they poll it (SQLite's busy handler sleeps up to 100 ms between
    tries), and under a burst of writes (the gateway's group commit releases a group of claims at once) some miss
    every turn until their busy timeout. In line here, a writer gives up only when the line stops moving for
    `timeout` seconds (the turn ahead holds the lock that long: the database is locked).
    """

    __slots__ = ("done", "lock", "timeout")

    def __init__(self, timeout: float) -> None:
        self.lock = asyncio.Lock()
        self.timeout = timeout
        self.done = 0  # turns finished: the line's progress

    async def __aenter__(self) -> None:
        if not self.lock.locked():
            await self.lock.acquire()  # free: no wait
            return
        acquiring = asyncio.ensure_future(self.lock.acquire())
        try:
            seen = self.done
            while not (await asyncio.wait({acquiring}, timeout=self.timeout))[0]:
                if self.done == seen:
                    raise _wrapped(sqlite3.OperationalError("database is locked"), sqlite3.Error)
                seen = self.done
        except BaseException:
            if acquiring.done() and not acquiring.cancelled():
                self.lock.release()
            else:
                acquiring.cancel()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.done += 1
        self.lock.release()


class _Transaction:
    """`async with`: a link in a transaction, committed at the end, rolled back on an error."""

    __slots__ = ("bare", "checkout", "link", "turn")

    def __init__(self, checkout: Any, *, bare: bool, turn: contextlib.AbstractAsyncContextManager[None]) -> None:
        self.checkout = checkout
        self.bare = bare
        self.turn = turn

    async def __aenter__(self) -> Link:
        await self.turn.__aenter__()
        try:
            link: Link = await self.checkout.__aenter__()
        except BaseException as exc:
            await self.turn.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.link = link
        if not self.bare:
            try:
                await link.begin()
            except BaseException as exc:
                await self.checkout.__aexit__(type(exc), exc, exc.__traceback__)
                await self.turn.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return link

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if not self.bare:
                if kind is None:
                    await self.link.commit()
                elif issubclass(kind, Exception):
                    await self.link.rollback()
        except BaseException as failed:
            try:
                await self.checkout.__aexit__(type(failed), failed, failed.__traceback__)
            finally:
                await self.turn.__aexit__(type(failed), failed, failed.__traceback__)
            raise
        try:
            await self.checkout.__aexit__(kind, exc, tb)
        finally:
            await self.turn.__aexit__(kind, exc, tb)


class SqlitePool(Pool):
    """Up to `size` inline SQLite connections; a request waits `timeout` seconds for one to come free."""

    def __init__(self, database: str, size: int, timeout: float, setup: Callable[[sqlite3.Connection], None]) -> None:
        self.database = database
        self.timeout = timeout
        self.setup = setup
        self.idle: list[inline_sqlite.InlineConnection] = []
        self.free = asyncio.Semaphore(size)
        self.closed = False
        self.closing: set[asyncio.Task[None]] = set()
        self.writers = WriteTurn(timeout)

    def turn(self) -> WriteTurn:
        return self.writers

    def link(self) -> _SqliteCheckout:
        return _SqliteCheckout(self)

    async def acquire(self) -> inline_sqlite.InlineConnection:
        if self.free.locked():
            try:
                await asyncio.wait_for(self.free.acquire(), self.timeout)
            except TimeoutError:
                raise PoolTimeoutError("no SQLite connection came free in time") from None
        else:
            await self.free.acquire()
        try:
            return self.idle.pop() if self.idle else await self._connect()
        except BaseException:
            self.free.release()
            raise

    def release(self, conn: inline_sqlite.InlineConnection, keep: bool) -> None:
        self.free.release()
        if keep and not self.closed:
            self.idle.append(conn)
            return
        # Cancelled mid-commit, or left in a transaction: never hand it on; close it off the request.
        task = asyncio.ensure_future(conn.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def _connect(self) -> inline_sqlite.InlineConnection:
        try:
            conn = await inline_sqlite.connect(self.database, busy_timeout=self.timeout)
            assert isinstance(conn, inline_sqlite.InlineConnection)
            self.setup(conn._conn)
        except sqlite3.Error as exc:
            raise _wrapped(exc, sqlite3.Error) from exc
        return conn

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()
        if self.closing:
            await asyncio.gather(*self.closing, return_exceptions=True)


class _SqliteCheckout:
    """`async with`: one connection of a SqlitePool, returned at the end (closed if a transaction was left open)."""

    __slots__ = ("conn", "pool")

    def __init__(self, pool: SqlitePool) -> None:
        self.pool = pool

    async def __aenter__(self) -> Link:
        self.conn = await self.pool.acquire()
        return _SqliteLink(self.conn)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Kept unless cancelled (a commit may still be running on the worker thread) or left mid-transaction.
        keep = (kind is None or issubclass(kind, Exception)) and not self.conn.in_transaction
        self.pool.release(self.conn, keep)


class EnginePool(Pool):
    """Connections of the SQLAlchemy engine's pool (PostgreSQL, MariaDB/MySQL), used through their drivers."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self.make: Callable[[Any], Link] = _PostgresLink if postgres else _MysqlLink
        self.single_statement_autocommits = postgres

    @asynccontextmanager
    async def link(self) -> AsyncIterator[Link]:
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            fairy = await self.engine.raw_connection()
        except dbapi_error as exc:  # the pool hands on the driver's own error where a Connection would wrap it
            raise _wrapped(exc, dbapi_error) from exc
        link = self.make(fairy.dbapi_connection)
        try:
            yield link
        except Exception as exc:
            if isinstance(exc, DBAPIError) and self.engine.dialect.is_disconnect(exc.orig, fairy.dbapi_connection, None):  # type: ignore[arg-type]
                await greenlet_spawn(fairy.invalidate)
            await greenlet_spawn(fairy.close)
            raise
        except BaseException:
            # Cancelled (or failed) where a transaction may be open that the pool's reset cannot see: discard it.
            await greenlet_spawn(fairy.invalidate)
            await greenlet_spawn(fairy.close)
            raise
        await greenlet_spawn(fairy.close)  # back to the pool; its reset (a rollback) ends what a read left open

    async def close(self) -> None:
        pass  # the engine's pool; the connector disposes of the engine


__all__ = ["EnginePool", "Link", "Pool", "Prepared", "SqlitePool", "prepare"]
