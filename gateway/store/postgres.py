"""The correlation store's database for many gateway processes: PostgreSQL (asyncpg pool).

Nothing relies on being the only process: uniqueness is the database's unique indexes, a claim is checked
and set under the resource's row lock (SELECT ... FOR UPDATE), and a journal entry is settled under its own,
so a settle and a peer's recovery of one entry cannot both win. Connection loss, a server that is down or a
lock held past `lock_timeout` raise StoreUnavailable (the IdP is answered 503 with Retry-After).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .base import StoreUnavailable
from .correlation import Store
from .dialect import Conn, DbRow, Dialect, Duplicate
from .migrations import migrations

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every text column in "C": byte order compares and sorts as SQLite and the in-memory evaluator do.
TYPES = {
    "key": "BIGSERIAL PRIMARY KEY",
    "text": 'TEXT COLLATE "C"',
    "json": "JSONB",
    "int64": "BIGINT",
    "float": "DOUBLE PRECISION",
    "now": " DEFAULT extract(epoch FROM clock_timestamp())",
    "member_seq": "seq BIGSERIAL NOT NULL,",
}
MIGRATIONS = migrations(TYPES)
# pg_advisory_xact_lock key for migrations: processes starting together apply them one at a time.
MIGRATION_LOCK = 0x5C1D_6A7E_0001

# The server or the connection failed, or a lock was not granted in time: the IdP should retry.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError (the connection was lost)
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, query cancelled (statement_timeout)
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    # A pooled connection the server dropped mid-operation (a restart): "another operation is in progress". The
    # pool closes it when it comes back; the request is answered 503, never 500 (tests/integration/test_pg_restart.py).
    asyncpg.InternalClientError,
)
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")  # a `?` outside quoted literals


def mask_url(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://***"


@lru_cache(maxsize=4096)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=json.loads, schema="pg_catalog")


def _pg_path(keys: tuple[str, ...]) -> str:
    """A text[] literal for #> / #>>, every key quoted (URNs hold ':' and '.')."""
    items = ",".join('"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys)
    return "'{" + items.replace("'", "''") + "}'"


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Connection:
    """A pooled asyncpg connection as the store uses it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        try:
            status: str = await self.conn.execute(numbered(sql), *params)
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(str(exc)) from None
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(numbered(sql), rows)
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(str(exc)) from None

    async def fetchrow(self, sql: str, *params: Any) -> DbRow | None:
        try:
            rec: DbRow | None = await self.conn.fetchrow(numbered(sql), *params)
        except asyncpg.UniqueViolationError as exc:
            raise Duplicate(str(exc)) from None
        return rec

    async def fetch(self, sql: str, *params: Any) -> list[DbRow]:
        return list(await self.conn.fetch(numbered(sql), *params))


class PostgresDialect(Dialect):
    """Text compares and sorts in "C" (code point order, as SQLite and the in-memory evaluator do); case
    folding uses `fold_collation`, one whose lower() knows more than ASCII."""

    false = "false"
    no_limit = None
    for_update = " FOR UPDATE"
    member_order = "m.seq"
    clock = "extract(epoch FROM clock_timestamp())"

    def __init__(self, url: str, *, pool_size: int = 10, lock_timeout: float = 10.0, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self.fold_collation = "default"
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=min(2, self.pool_size),
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                init=_init_connection,
                # A row lock held by a stuck peer becomes a 503, not a hung request.
                server_settings={"application_name": "scim-gateway", "lock_timeout": str(int(self.lock_timeout * 1000))},
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot reach the PostgreSQL store at {mask_url(self.url)}: {exc}") from None
        except asyncpg.PostgresError as exc:
            # Authentication, an unknown database: not transient, but say which store without its password.
            raise StoreUnavailable(f"cannot open the PostgreSQL store at {mask_url(self.url)}: {exc}") from None
        try:
            await self._migrate()
            await self._choose_fold_collation()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self) -> None:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > current:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                    log.info("PostgreSQL store %s: applied migration %d", mask_url(self.url), number)

    async def _choose_fold_collation(self) -> None:
        """SCIM compares case-insensitively beyond ASCII; a database created with LC_CTYPE=C folds only ASCII."""
        async with self._acquire() as conn:
            if await conn.fetchval("SELECT lower('ÄÖÜ') = 'äöü'"):
                return
            if await conn.fetchval("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'"):
                self.fold_collation = "und-x-icu"
                return
        log.warning(
            "PostgreSQL store: the database folds only ASCII case (LC_CTYPE C, no ICU); filters compare other letters exactly"
        )

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a database that fails is StoreUnavailable (503)."""
        try:
            async with self.pool.acquire(timeout=self.connect_timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"the correlation store failed: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def access(self) -> AsyncIterator[Conn]:
        async with self._acquire() as conn:
            yield _Connection(conn)

    async def transaction(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` in one transaction; retried when PostgreSQL picked it as a deadlock victim.

        Not grouped with other requests' transactions (as SQLite's are): a group would hold every member's row
        locks until its one commit, so one member waiting on a peer process's lock holds up the whole group, and
        PostgreSQL already flushes the WAL of concurrent sessions' commits together.
        """
        for attempt in range(3):
            try:
                async with self._acquire() as conn, conn.transaction():
                    return await work(_Connection(conn))
            except StoreUnavailable as exc:
                if attempt == 2 or not isinstance(exc.__cause__, _RETRYABLE):
                    raise
        raise AssertionError("unreachable")

    # -- values (the jsonb codec turns dicts to JSON and back)
    def among(self, column: str, items: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::text[])", [list(items)]

    def among_numbers(self, column: str, items: Sequence[int]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?::bigint[])", [list(items)]

    # -- the query renderer's hooks (JSONB)
    def extract(self, source: str, keys: tuple[str, ...], kind: str = "text") -> str:
        path = _pg_path(keys)
        if kind == "text":
            return f'(({source} #>> {path}) COLLATE "C")'
        raw = f"({source} #> {path})"
        cast = "numeric" if kind == "number" else "boolean"
        # A value of another JSON type reads as missing rather than failing the whole query on a cast.
        return f"(CASE WHEN jsonb_typeof{raw} = '{kind}' THEN {raw}::{cast} END)"

    def each(self, source: str, keys: tuple[str, ...]) -> str:
        raw = f"({source} #> {_pg_path(keys)})"
        array = f"CASE WHEN jsonb_typeof{raw} = 'array' THEN {raw} ELSE '[]'::jsonb END"
        return f"jsonb_array_elements({array}) WITH ORDINALITY AS e(value, key)"

    def primary_last(self) -> str:
        return "(e.value -> 'primary') IS DISTINCT FROM 'true'::jsonb"

    def fold(self, expr: str) -> str:
        return f'(lower(({expr}) COLLATE "{self.fold_collation}") COLLATE "C")'

    def _like(self, expr: str, pattern: str, ph: Callable[[Any], str]) -> str:
        return f"COALESCE({expr} LIKE {ph(pattern)} ESCAPE '\\', false)"

    def contains(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return self._like(expr, f"%{_like_escape(text)}%", ph)

    def starts_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return self._like(expr, f"{_like_escape(text)}%", ph)

    def ends_with(self, expr: str, text: str, ph: Callable[[Any], str]) -> str:
        return self._like(expr, f"%{_like_escape(text)}", ph)


class PostgresStore(Store):
    """The correlation store on a PostgreSQL database, shared by every gateway process that uses the URL."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        lock_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        labels: Sequence[str] = (),
    ) -> None:
        self.pg = PostgresDialect(url, pool_size=pool_size, lock_timeout=lock_timeout, connect_timeout=connect_timeout)
        super().__init__(self.pg, labels=labels)
        self.url = url

    @property
    def pool(self) -> asyncpg.Pool:
        return self.pg.pool

    def __repr__(self) -> str:
        return f"PostgresStore({mask_url(self.url)!r})"


__all__ = ["MIGRATIONS", "PostgresDialect", "PostgresStore", "mask_url"]
