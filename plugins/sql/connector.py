"""The SQL connector: an app's records are rows of its own tables, read and written with SQLAlchemy Core (async).

Nothing is formatted into SQL: tables and columns are reflected from the
database under the names the config gives, and every value is a bound
parameter. Dialect-specific code lives in two places only: `_setup_sqlite`
(connect-time session settings) and `_integrity_problem` (reading a constraint
violation off the driver's error).
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Column, MetaData, Table, delete, event, func, insert, select, update
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchTableError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.connectors.base import AppContext, Capabilities, Connector, NativeId, Record
from gateway.connectors.errors import AppBadResponse, AppConflict, AppError, AppInvalid, AppNotFound, AppUnavailable

from .config import SecretRef, SqlConnectorConfig, SqlTableConfig

LIST_PAGE_SIZE = 500
IN_CHUNK = 500  # ids per IN (...) list, well under every driver's bound-parameter limit
RETRY_AFTER = 5
# A bare dialect name means its asyncio driver; PostgreSQL and MariaDB join when their drivers do.
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite"}
_WRITE = "scim_gateway_write"  # execution option marking a write transaction


_T = TypeVar("_T")


class SqlSetupError(RuntimeError):
    """The config does not fit the database (missing table or column, unusable DSN): raised by open()."""


class _MemberRace(Exception):
    """A member insert lost a race to a concurrent add of the same member: the transaction is worth one more run."""

    def __init__(self, conflict: AppConflict) -> None:
        super().__init__(conflict.detail)
        self.conflict = conflict


@dataclass(frozen=True, slots=True)
class _Members:
    table: Table
    group_column: Column[Any]
    member_column: Column[Any]
    member_kind: str


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    config: SqlTableConfig
    table: Table
    key: Column[Any]
    members: _Members | None


class SqlConnector(Connector):
    """Records of each kind are rows of one table; a group's members are rows of a join table."""

    Config: ClassVar[type[SqlConnectorConfig]] = SqlConnectorConfig
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, list_all=True)

    config: SqlConnectorConfig

    def __init__(self, config: SqlConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self.page_size = LIST_PAGE_SIZE
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._kinds: dict[str, _Kind] = {}

    # ------------------------------------------------------------ lifetime

    async def open(self) -> None:
        if self._engine is not None:
            raise RuntimeError(f"the sql connector of app {self.context.name!r} is already open")
        url = self._url()
        try:
            engine = _create_engine(url, self.config)
        except (ArgumentError, ImportError):
            raise SqlSetupError(f"dsn: the driver {url.drivername!r} is not installed") from None
        try:
            with _app_errors(None):
                async with engine.connect() as conn:
                    self._kinds = await conn.run_sync(self._reflect)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._writer = None
        self._kinds = {}

    def _url(self) -> URL:
        dsn = self.config.dsn
        if isinstance(dsn, SecretRef):
            try:
                raw = dsn.resolve().get_secret_value()
            except ValueError as exc:
                raise SqlSetupError(f"dsn: {exc}") from None
        else:
            raw = dsn
        try:
            url = make_url(raw.replace("{data_dir}", str(self.context.data_dir)))
        except ArgumentError:
            raise SqlSetupError("dsn: not a database URL") from None
        if "+" not in url.drivername:
            if url.drivername not in ASYNC_DRIVERS:
                raise SqlSetupError(f"dsn: no asyncio driver known for {url.drivername!r}; name one as {url.drivername}+DRIVER")
            url = url.set(drivername=ASYNC_DRIVERS[url.drivername])
        if url.get_backend_name() == "sqlite":
            if url.database in (None, "", ":memory:"):
                raise SqlSetupError("dsn: an in-memory SQLite database lives and dies with one connection; give a file")
            # sqlite3 would create an empty file and the error would be a missing table.
            if not url.query.get("uri") and not Path(url.database).is_file():
                raise SqlSetupError(f"dsn: there is no SQLite database file at {url.database}")
        return url

    def _reflect(self, conn: Connection) -> dict[str, _Kind]:
        metadata = MetaData()
        returning = conn.dialect.insert_returning

        def table(where: str, name: str) -> Table:
            try:
                return Table(name, metadata, autoload_with=conn)
            except NoSuchTableError:
                raise SqlSetupError(f"{where}: the database has no table {name!r}") from None

        def column(where: str, t: Table, name: str) -> Column[Any]:
            if name not in t.c:
                message = f"{where}: table {t.name!r} has no column {name!r}"
                raise SqlSetupError(message + _near(name, t.c.keys()))
            return t.c[name]

        kinds = {}
        for kind, tc in self.config.tables.items():
            where = f"tables.{kind}"
            t = table(f"{where}.table", tc.table)
            key = column(f"{where}.key", t, tc.key)
            if tc.key_strategy == "autoincrement" and not returning and list(t.primary_key.columns) != [key]:
                raise SqlSetupError(f"{where}.key: {tc.key!r} must be the primary key of {t.name!r} for autoincrement")
            members = None
            if tc.members is not None:
                mt = table(f"{where}.members.table", tc.members.table)
                members = _Members(
                    mt,
                    column(f"{where}.members.group_column", mt, tc.members.group_column),
                    column(f"{where}.members.member_column", mt, tc.members.member_column),
                    tc.members.member_kind,
                )
            kinds[kind] = _Kind(kind, tc, t, key, members)
        return kinds

    # ------------------------------------------------------------ records

    async def create(self, kind: str, record: Record) -> NativeId:
        k = self._kind(kind)
        values = _values(k, record)
        return await self._transaction(k.table, values, lambda conn: self._create_in(conn, k, values))

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        k = self._kind(kind)
        key = _parse_id(k.key, native_id)
        if key is None:
            return None
        with _app_errors(k.table):
            async with self._reader().connect() as conn:
                row = (await conn.execute(select(k.table).where(k.key == key))).mappings().first()
        return dict(row) if row is not None else None

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        k = self._kind(kind)
        values = _values(k, changes)
        key = _parse_id(k.key, native_id)
        if key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        await self._transaction(k.table, values, lambda conn: self._update_in(conn, k, key, native_id, values))

    async def delete(self, kind: str, native_id: NativeId) -> None:
        k = self._kind(kind)
        key = _parse_id(k.key, native_id)
        if key is None:
            return  # no such row can exist: already gone
        with _app_errors(k.table, deleting=True):
            async with self._writer_engine().begin() as conn:
                # Membership rows go first and by hand: the app's foreign keys may not cascade (or exist).
                for column in self._membership_columns(kind):
                    member_key = _parse_id(column, native_id)
                    if member_key is not None:
                        await conn.execute(delete(column.table).where(column == member_key))
                await conn.execute(delete(k.table).where(k.key == key))

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        k = self._kind(kind)
        column = _column(k.table, field)
        if value is None:
            condition = column.is_(None)
        elif isinstance(value, str) and _python_type(column) is str:
            condition = func.lower(column) == func.lower(value)
        elif isinstance(value, str) and _python_type(column) is not None:
            parsed = _parse_id(column, value)
            if parsed is None:
                return []  # "abc" equals no INTEGER
            condition = column == parsed
        else:
            condition = column == value
        with _app_errors(k.table):
            async with self._reader().connect() as conn:
                rows = (await conn.execute(select(k.table).where(condition).order_by(k.key))).mappings().all()
        return [(str(row[k.key.name]), dict(row)) for row in rows]

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        k = self._kind(kind)
        last: Any = None
        while True:
            stmt = select(k.table).order_by(k.key).limit(self.page_size)
            if last is not None:
                stmt = stmt.where(k.key > last)
            # One connection per page, released before yielding: a slow consumer must not pin the pool.
            with _app_errors(k.table):
                async with self._reader().connect() as conn:
                    rows = (await conn.execute(stmt)).mappings().all()
            for row in rows:
                yield str(row[k.key.name]), dict(row)
            if len(rows) < self.page_size:
                return
            last = rows[-1][k.key.name]

    # ------------------------------------------------------------ membership

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        k, m = self._group(kind)
        group_key = _parse_id(k.key, group_id)
        if group_key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {group_id!r}")
        keys = self._keys_to_add(m, members)
        if not keys:
            return
        await self._transaction(m.table, None, lambda conn: self._add_members_in(conn, k, m, group_key, group_id, keys))

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        _, m = self._group(kind)
        group_key = _parse_id(m.group_column, group_id)
        keys = _keys_to_remove(m, members)
        if group_key is None or not keys:
            return  # nothing named can be present
        await self._transaction(m.table, None, lambda conn: self._remove_members_in(conn, m, group_key, keys))

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        _, m = self._group(kind)
        group_key = _parse_id(m.group_column, group_id)
        if group_key is None:
            return []
        stmt = select(m.member_column).where(m.group_column == group_key).order_by(m.member_column)
        with _app_errors(m.table):
            async with self._reader().connect() as conn:
                keys = (await conn.execute(stmt)).scalars().all()
        return [(m.member_kind, str(key)) for key in keys]

    # ------------------------------------------------------------ one SCIM write, one transaction

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        if not members:
            return await self.create(kind, record)
        k, m = self._group(kind)
        values = _values(k, record)
        keys = self._keys_to_add(m, members)

        async def work(conn: AsyncConnection) -> NativeId:
            native_id = await self._create_in(conn, k, values)
            await self._add_members_in(conn, k, m, _parse_id(k.key, native_id), native_id, keys)
            return native_id

        return await self._transaction(k.table, values, work)

    async def write(
        self,
        kind: str,
        native_id: NativeId,
        changes: Record,
        add_members: list[tuple[str, NativeId]],
        remove_members: list[tuple[str, NativeId]],
    ) -> None:
        k = self._kind(kind)
        values = _values(k, changes)
        key = _parse_id(k.key, native_id)
        if key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        m = self._group(kind)[1] if add_members or remove_members else None
        to_add = self._keys_to_add(m, add_members) if m is not None else {}
        to_remove = _keys_to_remove(m, remove_members) if m is not None else []
        member_key = _parse_id(m.group_column, native_id) if m is not None else None

        async def work(conn: AsyncConnection) -> None:
            # The row's UPDATE (with no changes: its existence) first; a gone record is AppNotFound, nothing written.
            await self._update_in(conn, k, key, native_id, values)
            if m is not None and to_remove and member_key is not None:
                await self._remove_members_in(conn, m, member_key, to_remove)
            if m is not None and to_add:
                await self._add_members_in(conn, k, m, key, native_id, to_add)

        await self._transaction(k.table, values, work)

    # ------------------------------------------------------------ work inside an open write transaction

    async def _transaction(
        self, table: Table, values: Mapping[str, Any] | None, work: Callable[[AsyncConnection], Awaitable[_T]]
    ) -> _T:
        """Run `work` in one write transaction, failures translated to AppErrors.

        `work` translates its own statements' failures (naming their table); the
        `_app_errors` here catches what connecting, BEGIN and COMMIT raise. A
        concurrent add of the same member that commits between our look and our
        INSERT rolls the whole transaction back; it is run once more, and then
        sees that member as present.
        """
        conflict: AppConflict | None = None
        for _attempt in (1, 2):
            try:
                with _app_errors(table, values):
                    async with self._writer_engine().begin() as conn:
                        return await work(conn)
            except _MemberRace as race:
                conflict = race.conflict
        assert conflict is not None
        raise conflict  # raised outside the except block: no chain to the private _MemberRace

    async def _create_in(self, conn: AsyncConnection, k: _Kind, values: Mapping[str, Any]) -> NativeId:
        values = dict(values)
        key: Any
        if k.config.key_strategy == "uuid":
            key = values[k.key.name] = _parse_id(k.key, str(uuid.uuid4()))
            stmt = insert(k.table).values(values)
        else:
            stmt = insert(k.table).values(values)
            returning = conn.dialect.insert_returning
            if returning:
                stmt = stmt.returning(k.key)
        with _app_errors(k.table, values):
            result = await conn.execute(stmt)
            if k.config.key_strategy == "autoincrement":
                key = result.scalar_one() if returning else result.inserted_primary_key[0]
        if key is None:
            raise AppBadResponse(f"{k.table.name}: the database assigned no {k.key.name}")
        return str(key)

    async def _update_in(self, conn: AsyncConnection, k: _Kind, key: Any, native_id: NativeId, values: Mapping[str, Any]) -> None:
        """UPDATE the row; with no values, only check that it exists. AppNotFound when it does not."""
        with _app_errors(k.table, values):
            if values:
                found = (await conn.execute(update(k.table).where(k.key == key).values(values))).rowcount > 0
            else:
                found = await _exists(conn, k, key)
        if not found:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")

    async def _add_members_in(
        self, conn: AsyncConnection, k: _Kind, m: _Members, group_key: Any, group_id: NativeId, keys: Mapping[Any, NativeId]
    ) -> None:
        """Insert the member rows not yet present. `keys`: member key -> the native id it was given as."""
        member_kind = self._kinds[m.member_kind]
        with _app_errors(m.table):
            if not await _exists(conn, k, group_key):
                raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {group_id!r}")
            found = await _present(conn, member_kind.key, keys)
            missing = [native_id for key, native_id in keys.items() if key not in found]
            if missing:
                raise AppInvalid(f"{member_kind.table.name} has no row with {member_kind.key.name} {missing[0]!r}")
            already = await _present(conn, m.member_column, keys, m.group_column == group_key)
        rows = [{m.group_column.name: group_key, m.member_column.name: key} for key in keys if key not in already]
        if not rows:
            return
        try:
            with _app_errors(m.table):
                await conn.execute(insert(m.table), rows)
        except AppConflict as exc:
            # A concurrent add of the same member committed between our look and our insert.
            raise _MemberRace(exc) from None

    async def _remove_members_in(self, conn: AsyncConnection, m: _Members, group_key: Any, keys: list[Any]) -> None:
        with _app_errors(m.table):
            for chunk in _chunks(keys):
                await conn.execute(delete(m.table).where(m.group_column == group_key, m.member_column.in_(chunk)))

    def _keys_to_add(self, m: _Members, members: list[tuple[str, NativeId]]) -> dict[Any, NativeId]:
        """The member keys to add, each once (key -> native id as given); AppInvalid for a member no row can be."""
        member_kind = self._kinds[m.member_kind]
        keys: dict[Any, NativeId] = {}
        for member_type, native_id in members:
            if member_type != m.member_kind:
                raise AppInvalid(f"{m.table.name} holds members of kind {m.member_kind}, not {member_type}")
            key = _parse_id(m.member_column, native_id)
            if key is None:
                raise AppInvalid(f"{member_kind.table.name} has no row with {member_kind.key.name} {native_id!r}")
            keys.setdefault(key, native_id)
        return keys

    # ------------------------------------------------------------ helpers

    def _reader(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"the sql connector of app {self.context.name!r} is not open")
        return self._engine

    def _writer_engine(self) -> AsyncEngine:
        self._reader()
        assert self._writer is not None
        return self._writer

    def _kind(self, kind: str) -> _Kind:
        self._reader()
        try:
            return self._kinds[kind]
        except KeyError:
            valid = ", ".join(sorted(self._kinds))
            raise LookupError(f"the sql connector has no table for kind {kind!r} (valid: {valid})") from None

    def _group(self, kind: str) -> tuple[_Kind, _Members]:
        k = self._kind(kind)
        if k.members is None:
            raise LookupError(f"the sql connector has no members table for kind {kind!r}")
        return k, k.members

    def _membership_columns(self, kind: str) -> Iterator[Column[Any]]:
        """Join-table columns that hold keys of `kind`: as the group, or as the member."""
        for k in self._kinds.values():
            if k.members is None:
                continue
            if k.name == kind:
                yield k.members.group_column
            if k.members.member_kind == kind:
                yield k.members.member_column


# ---------------------------------------------------------------- engine


def _create_engine(url: URL, config: SqlConnectorConfig) -> AsyncEngine:
    sqlite = url.get_backend_name() == "sqlite"
    connect_args = {"timeout": config.timeout} if sqlite else {}  # sqlite3's busy timeout, in seconds
    engine = create_async_engine(
        url,
        pool_size=config.pool_size,
        max_overflow=0,
        pool_timeout=config.timeout,
        connect_args=connect_args,
    )
    if sqlite:
        _setup_sqlite(engine)
    return engine


def _setup_sqlite(engine: AsyncEngine) -> None:
    """Foreign keys on, and real transactions: BEGIN for reads, BEGIN IMMEDIATE for writes.

    sqlite3's legacy mode begins a transaction only at the first DML statement,
    so a write's reads would run outside it; IMMEDIATE takes the write lock up
    front, so two writers wait (busy timeout) instead of failing on a lock upgrade.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


# ---------------------------------------------------------------- values and ids

_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")


def _python_type(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _parse_id(column: Column[Any], native_id: NativeId) -> Any:
    """`native_id` as the column's Python type; None when no row can have it ("abc" for an INTEGER)."""
    if not isinstance(native_id, str):
        native_id = str(native_id)
    kind = _python_type(column)
    if kind is int:
        # Only the form we hand out (str(int)): "007" or "7.0" name no row.
        if not _CANONICAL_INT.fullmatch(native_id) or not -(2**63) <= (value := int(native_id)) < 2**63:
            return None
        return value
    if kind is uuid.UUID:
        try:
            return uuid.UUID(native_id)
        except ValueError:
            return None
    return native_id


def _column(table: Table, name: str) -> Column[Any]:
    if name not in table.c:
        raise AppInvalid(f"{table.name} has no column {name!r}{_near(name, table.c.keys())}")
    return table.c[name]


def _values(k: _Kind, record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's columns, checked: every one exists, none is the key, every value is a scalar."""
    values = {}
    for name, value in record.items():
        _column(k.table, name)
        if name == k.key.name:
            assigner = "the database" if k.config.key_strategy == "autoincrement" else "the connector"
            raise AppInvalid(f"{k.table.name}.{name} is the key: {assigner} assigns it, and it never changes")
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            raise AppInvalid(f"{k.table.name}.{name}: a {type(value).__name__} does not fit in a column")
        values[name] = value
    return values


def _keys_to_remove(m: _Members, members: list[tuple[str, NativeId]]) -> list[Any]:
    """The member keys to remove, each once; members of another kind or with an impossible id cannot be present."""
    keys = [
        key
        for member_type, native_id in members
        if member_type == m.member_kind and (key := _parse_id(m.member_column, native_id)) is not None
    ]
    return list(dict.fromkeys(keys))


async def _exists(conn: AsyncConnection, k: _Kind, key: Any) -> bool:
    return (await conn.execute(select(k.key).where(k.key == key))).first() is not None


async def _present(conn: AsyncConnection, column: Column[Any], keys: Iterable[Any], *where: Any) -> set[Any]:
    """Which of `keys` appear in `column` (rows also matching `where`)."""
    found: set[Any] = set()
    for chunk in _chunks(list(keys)):
        result = await conn.execute(select(column).where(column.in_(chunk), *where))
        found.update(result.scalars())
    return found


def _chunks(items: list[Any], size: int = IN_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _near(name: str, names: Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]}?)" if near else ""


# ---------------------------------------------------------------- errors


@contextmanager
def _app_errors(table: Table | None, values: Mapping[str, Any] | None = None, *, deleting: bool = False) -> Iterator[None]:
    """Translate the database's failures into AppErrors; never pass on the SQL or its parameters."""
    try:
        yield
    except IntegrityError as exc:
        raise _integrity_error(exc, table, values or {}, deleting) from exc.orig
    except DataError as exc:
        raise AppInvalid(f"{_where(table)}rejected a value: {_driver_message(exc)}") from exc.orig
    except (OperationalError, InterfaceError) as exc:
        raise AppUnavailable(f"the database failed: {_driver_message(exc)}", retry_after=RETRY_AFTER) from exc.orig
    except PoolTimeoutError:
        raise AppUnavailable("no database connection came free in time", retry_after=RETRY_AFTER) from None
    except DBAPIError as exc:
        if type(exc).__name__ == "DatabaseError":  # the generic class: a broken file, a server fault
            raise AppUnavailable(f"the database failed: {_driver_message(exc)}", retry_after=RETRY_AFTER) from exc.orig
        raise AppError(f"{_where(table)}the database refused the statement: {_driver_message(exc)}") from exc.orig
    except OverflowError:  # sqlite3 refuses integers beyond 64 bits before any SQL runs
        raise AppInvalid(f"{_where(table)}a number is too large for its column") from None
    except (OSError, TimeoutError) as exc:  # a driver's socket error that escaped its own wrapping
        raise AppUnavailable(f"the database is unreachable: {type(exc).__name__}", retry_after=RETRY_AFTER) from None


def _where(table: Table | None) -> str:
    return f"{table.name}: " if table is not None else ""


def _driver_message(exc: DBAPIError) -> str:
    """The driver's own one-line message: str(exc) would append the SQL and its parameters."""
    text = str(exc.orig).strip().splitlines()
    return text[0][:300] if text and text[0] else type(exc.orig).__name__


# Standard SQLSTATE codes of integrity violations (PostgreSQL, MariaDB and others report them).
_SQLSTATE = {"23505": "unique", "23502": "not_null", "23514": "check", "23503": "foreign_key"}
# SQLite reports the violation only in its message.
_SQLITE = re.compile(r"(UNIQUE|NOT NULL|CHECK|FOREIGN KEY) constraint failed(?::\s*(.*))?", re.IGNORECASE)


def _integrity_problem(exc: IntegrityError) -> tuple[str, str]:
    """(unique | not_null | check | foreign_key | other, what the driver names: columns or a constraint)."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code in _SQLSTATE:
        return _SQLSTATE[code], getattr(orig, "column_name", None) or getattr(orig, "constraint_name", None) or ""
    match = _SQLITE.search(str(orig))
    if match:
        return match.group(1).lower().replace(" ", "_"), (match.group(2) or "").strip()
    return "other", ""


def _integrity_error(exc: IntegrityError, table: Table | None, values: Mapping[str, Any], deleting: bool) -> AppError:
    problem, named = _integrity_problem(exc)
    where = table.name if table is not None else "the database"
    if problem == "unique":
        columns = [c.strip() for c in named.split(",") if c.strip()]
        if len(columns) == 1:
            column = columns[0]
            value = values.get(column.rpartition(".")[2])
            if value is not None:
                return AppConflict(f"{column} already has the value {_short(value)}")
            return AppConflict(f"{column} already has this value")
        if columns:
            return AppConflict(f"({', '.join(columns)}) already has these values")
        return AppConflict(f"{where}: a unique constraint failed")
    if problem == "not_null":
        return AppInvalid(f"{named or where} needs a value")
    if problem == "check":
        return AppInvalid(f"{where}: the values break the check {named}" if named else f"{where}: a check constraint failed")
    if problem == "foreign_key":
        if deleting:
            return AppConflict(f"{where}: the row is still referenced by another table")
        return AppInvalid(f"{where}: a value refers to a row that does not exist")
    return AppInvalid(f"{where}: the database refused the values: {_driver_message(exc)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


__all__ = ["SqlConnector", "SqlSetupError"]
