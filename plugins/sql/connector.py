"""The SQL connector: an app's records are rows of its own tables, read and written with SQLAlchemy Core (async).

Nothing is formatted into SQL: tables and columns are reflected from the
database under the names the config gives, and every value is a bound
parameter (named statements too: they take `:id` and nothing else).
Dialect-specific code lives in three places only: `_create_engine`
(connect-time session settings), `_setup_sqlite`, and `_problem` (reading a
failure off the driver's error: SQLSTATE for PostgreSQL, errno for MariaDB,
the message for SQLite).
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import functools
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    Column,
    MetaData,
    Sequence,
    String,
    Table,
    bindparam,
    cast,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InvalidRequestError,
    NoSuchTableError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway import inline_sqlite
from gateway.connectors.base import AppContext, Capabilities, Connector, NativeId, Record
from gateway.connectors.errors import (
    AppBadResponse,
    AppConflict,
    AppCredentialsRefused,
    AppError,
    AppInvalid,
    AppNotFound,
    AppUnavailable,
    ConnectorSetupError,
)

from . import raw
from .config import SecretRef, SqlConnectorConfig, SqlTableConfig, statement_params, template_fields

LIST_PAGE_SIZE = 500
SQLITE_POOL_SIZE = 64  # connections to an inline SQLite app (see _create_engine)
IN_CHUNK = 500  # ids per IN (...) list, well under every driver's bound-parameter limit
RETRY_AFTER = 5
SEARCH_OPS = frozenset({"eq", "co", "sw", "ew"})
# A bare dialect name means its asyncio driver.
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
}
_WRITE = "scim_gateway_write"  # execution option marking a write transaction
_KEY = "scim_gateway_key"  # the bind parameter of a record's key in prepared statements
PREPARED_LIMIT = 1024  # prepared statements kept per connector (one per kind, operation and column set)

Loc = tuple[str | int, ...]
SchemaProblem = tuple[Loc, str]

_T = TypeVar("_T")


class SqlSetupError(ConnectorSetupError):
    """The config does not fit the database (missing table or column, unusable DSN): raised by open()."""

    def __init__(self, message: str, problems: list[SchemaProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


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
class _Child:
    """A child-table row seen as one scalar field of its parent record."""

    field: str
    table: Table
    parent: Column[Any]
    value: Column[Any]
    where: tuple[tuple[Column[Any], Any], ...]

    def selecting(self, parent_key: Any) -> list[Any]:
        """The conditions that pick this field's rows of the parent with `parent_key` (a value or the parent's key column)."""
        return [self.parent == parent_key, *(column == value for column, value in self.where)]

    def row(self, parent_key: Any, value: Any) -> dict[str, Any]:
        return {self.parent.name: parent_key, self.value.name: value} | {column.name: v for column, v in self.where}


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    config: SqlTableConfig
    table: Table
    key: Column[Any]
    members: _Members | None
    children: dict[str, _Child]
    deleted: Column[Any] | None  # the soft-delete column
    sequence: Sequence | None

    def live(self) -> list[Any]:
        """Conditions that skip soft-deleted rows (none without soft delete)."""
        if self.deleted is None:
            return []
        assert self.config.soft_delete is not None
        mark = self.config.soft_delete.value
        if mark is None:
            return [self.deleted.is_(None)]
        return [or_(self.deleted.is_(None), self.deleted != _coerce(self.deleted, mark))]

    def columns(self) -> list[Any]:
        """The table's columns and each child field, as one row."""
        subqueries = [
            select(func.min(c.value)).where(*c.selecting(self.key)).scalar_subquery().label(c.field)
            for c in self.children.values()
        ]
        return [self.table, *subqueries]

    def by_key(self) -> Any:
        """SELECT of one live record by key (the connector keeps it: a GET binds the key instead of building one)."""
        return select(*self.columns()).where(self.key == bindparam(_KEY, type_=self.key.type), *self.live())

    def by_keys(self, count: int) -> Any:
        """SELECT of up to `count` live records by key (`count` parameters key_0...)."""
        keys = [bindparam(f"key_{i}", type_=self.key.type) for i in range(count)]
        return select(*self.columns()).where(self.key.in_(keys), *self.live())

    def exists(self) -> Any:
        return select(self.key).where(self.key == bindparam(_KEY, type_=self.key.type), *self.live())

    def updating(self) -> Any:
        return update(self.table).where(self.key == bindparam(_KEY, type_=self.key.type), *self.live())

    def inserting(self, returning: bool) -> Any:
        return insert(self.table).returning(self.key) if returning else insert(self.table)

    def soft_deleting(self) -> Any:
        """UPDATE marking the live row with the bound key deleted (the mark, or the current time)."""
        assert self.deleted is not None and self.config.soft_delete is not None
        mark = self.config.soft_delete.value
        stamp = func.now() if mark is None else _coerce(self.deleted, mark)
        return self.updating().values({self.deleted.name: stamp})

    def prepared_create(self, dialect: Any) -> bool:
        """Whether a create without child fields goes through one prepared INSERT (its key known or RETURNING)."""
        strategy = self.config.key_strategy
        return strategy in ("uuid", "template") or (strategy == "autoincrement" and bool(dialect.insert_returning))


class SqlConnector(Connector):
    """Records of each kind are rows of one table (and child tables); a group's members are rows of a join table."""

    Config: ClassVar[type[SqlConnectorConfig]] = SqlConnectorConfig
    capabilities: ClassVar[Capabilities] = Capabilities(membership=True, search=True, search_ops=SEARCH_OPS, list_all=True)

    config: SqlConnectorConfig

    def __init__(self, config: SqlConnectorConfig, context: AppContext) -> None:
        super().__init__(config, context)
        self.page_size = LIST_PAGE_SIZE
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._kinds: dict[str, _Kind] = {}
        self._fields: dict[str, set[str]] = {}  # per kind, the fields the database has (for has_field)
        self._pool: raw.Pool | None = None  # the hot paths' connections (see raw.py)
        self._prepared: dict[tuple[Any, ...], raw.Prepared] = {}

    @classmethod
    def capabilities_for(cls, config: SqlConnectorConfig) -> Capabilities:  # type: ignore[override]
        return Capabilities(
            membership=any(t.members is not None for t in config.tables.values()),
            search=True,
            search_ops=SEARCH_OPS,
            list_all=True,
            actions=frozenset(name for t in config.tables.values() for name in t.statements),
        )

    # ------------------------------------------------------------ lifetime

    async def open(self) -> None:
        if self._engine is not None:
            raise RuntimeError(f"the sql connector of app {self.context.name!r} is already open")
        engine = self._new_engine()
        try:
            with _app_errors(None):
                async with engine.connect() as conn:
                    kinds, self._fields, problems = await conn.run_sync(self._reflect)
            if problems:
                message = "; ".join(f"{_dotted(loc)}: {text}" for loc, text in problems)
                raise SqlSetupError(message, problems)
        except BaseException:
            await engine.dispose()
            raise
        self._kinds = kinds
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})
        self._pool = _create_pool(engine, self.config)
        self._prepared = {}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._writer = self._pool = None
        self._kinds = {}

    async def check_schema(self) -> list[SchemaProblem]:
        """Every table, column, sequence and child table the options name that the live database lacks.

        Works on an open connector and on one whose open() failed (that is how a
        misspelt table is found): then it connects just for the check.
        """
        engine = self._engine or self._new_engine()
        try:
            with _app_errors(None):
                async with engine.connect() as conn:
                    _kinds, self._fields, problems = await conn.run_sync(self._reflect)
        finally:
            if engine is not self._engine:
                await engine.dispose()
        return problems

    def fields(self, kind: str) -> set[str] | None:
        found = self._fields.get(kind)
        return None if found is None else set(found)

    def _new_engine(self) -> AsyncEngine:
        url = self._url()
        try:
            return _create_engine(url, self.config)
        except (ArgumentError, ImportError):
            raise SqlSetupError(f"dsn: the driver {url.drivername!r} is not installed") from None
        except InvalidRequestError:
            raise SqlSetupError(
                f"dsn: {url.drivername!r} is not an asyncio driver (use {url.get_backend_name()}:// alone)"
            ) from None

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
        backend = url.get_backend_name()
        if backend == "sqlite":
            if url.database in (None, "", ":memory:"):
                raise SqlSetupError("dsn: an in-memory SQLite database lives and dies with one connection; give a file")
            # sqlite3 would create an empty file and the error would be a missing table.
            if not url.query.get("uri") and not Path(url.database).is_file():
                raise SqlSetupError(f"dsn: there is no SQLite database file at {url.database}")
        if backend in ("mysql", "mariadb") and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})  # the drivers' default (latin1) cannot hold every name
        return url

    def _reflect(self, conn: Connection) -> tuple[dict[str, _Kind], dict[str, set[str]], list[SchemaProblem]]:
        """The kinds whose tables fit the config, the fields of each kind, and every misfit found."""
        metadata = MetaData()
        inspector = inspect(conn)
        dialect = conn.dialect
        names = [*inspector.get_table_names(), *inspector.get_view_names()]
        problems: list[SchemaProblem] = []
        tables: dict[str, Table | None] = {}

        def table(loc: Loc, name: str) -> Table | None:
            if name not in tables:
                try:
                    tables[name] = Table(name, metadata, autoload_with=conn)
                except NoSuchTableError:
                    tables[name] = None
            if tables[name] is None:
                problems.append((loc, f"the database has no table {name!r}{_near(name, names)}"))
            return tables[name]

        def column(loc: Loc, t: Table, name: str) -> Column[Any] | None:
            if name not in t.c:
                problems.append((loc, f"table {t.name!r} has no column {name!r}{_near(name, t.c.keys())}"))
                return None
            return t.c[name]

        kinds: dict[str, _Kind] = {}
        fields: dict[str, set[str]] = {}
        for kind, tc in self.config.tables.items():
            where: Loc = ("tables", kind)
            before = len(problems)
            t = table((*where, "table"), tc.table)
            # Without its table the kind cannot be built, but its other tables are still worth checking.
            key = column((*where, "key"), t, tc.key) if t is not None else None
            if t is not None:
                fields[kind] = set(t.c.keys()) | {c.field for c in tc.children}
                if key is not None and tc.key_strategy == "autoincrement" and not dialect.insert_returning:
                    if list(t.primary_key.columns) != [key]:
                        problems.append(((*where, "key"), f"{tc.key!r} must be the primary key of {t.name!r} for autoincrement"))
            sequence = None
            if tc.sequence is not None:
                if not dialect.supports_sequences:
                    problems.append(((*where, "sequence"), f"this database ({dialect.name}) has no sequences"))
                elif not dialect.has_sequence(conn, tc.sequence):
                    near = _near(tc.sequence, inspector.get_sequence_names())
                    problems.append(((*where, "sequence"), f"the database has no sequence {tc.sequence!r}{near}"))
                else:
                    sequence = Sequence(tc.sequence, metadata=metadata)
            children: dict[str, _Child] = {}
            for i, cc in enumerate(tc.children):
                at: Loc = (*where, "children", i)
                if t is not None and cc.field in t.c:
                    problems.append(
                        ((*at, "field"), f"{cc.field!r} is also a column of {t.name!r}: give the child field its own name")
                    )
                ct = table((*at, "table"), cc.table)
                if ct is None:
                    continue
                parent = column((*at, "parent_column"), ct, cc.parent_column)
                value = column((*at, "value_column"), ct, cc.value_column)
                selected = [(column((*at, "where", name), ct, name), v) for name, v in cc.where.items()]
                if parent is not None and value is not None and all(c is not None for c, _ in selected):
                    pairs = tuple((c, _coerce(c, v)) for c, v in selected if c is not None)
                    children[cc.field] = _Child(cc.field, ct, parent, value, pairs)
            if tc.key_template is not None and t is not None:
                for name in template_fields(tc.key_template):
                    if name not in fields[kind]:
                        near = _near(name, fields[kind])
                        problems.append(
                            ((*where, "key_template"), f"{{{name}}} is neither a column of {t.name!r} nor a child field{near}")
                        )
            deleted = None
            if tc.soft_delete is not None and t is not None:
                deleted = column((*where, "soft_delete", "column"), t, tc.soft_delete.column)
            members = None
            if tc.members is not None:
                mt = table((*where, "members", "table"), tc.members.table)
                if mt is not None:
                    group_column = column((*where, "members", "group_column"), mt, tc.members.group_column)
                    member_column = column((*where, "members", "member_column"), mt, tc.members.member_column)
                    if group_column is not None and member_column is not None:
                        members = _Members(mt, group_column, member_column, tc.members.member_kind)
            if t is not None and key is not None and len(problems) == before:
                kinds[kind] = _Kind(kind, tc, t, key, members, children, deleted, sequence)
        return kinds, fields, problems

    # ------------------------------------------------------------ records

    async def create(self, kind: str, record: Record) -> NativeId:
        k = self._kind(kind)
        values, children = _values(k, record)
        if not children and k.prepared_create(self._reader().dialect):
            with _app_errors(k.table, values):
                async with self._links().transaction(single=True) as link:
                    return await self._insert(link, k, values)
        return await self._transaction(k.table, values, lambda conn: self._create_in(conn, k, values, children))

    async def _insert(self, link: raw.Link, k: _Kind, values: Mapping[str, Any]) -> NativeId:
        """One row through the prepared INSERT for its column set (see _Kind.prepared_create); its key."""
        strategy = k.config.key_strategy
        values = dict(values)
        key: Any = None
        if strategy == "uuid":
            key = values[k.key.name] = _parse_id(k.key, str(uuid.uuid4()))
        elif strategy == "template":
            key = values[k.key.name] = _template_key(k, values, {})
        returning = strategy == "autoincrement"
        columns = frozenset(values)
        p = self._prepare(("insert", k.name, columns), lambda: k.inserting(returning), columns)
        if returning:
            rows = await link.fetch(p, values)
            key = next(iter(rows[0].values())) if rows else None
        else:
            await link.run(p, values)
        if key is None:
            raise AppBadResponse(f"{k.table.name}: the database assigned no {k.key.name}")
        return str(key)

    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        k = self._kind(kind)
        key = _parse_id(k.key, native_id)
        if key is None:
            return None
        p = self._prepare(("get", kind), k.by_key)
        with _app_errors(k.table):
            async with self._links().link() as link:
                rows = await link.fetch(p, {_KEY: key})
        return rows[0] if rows else None

    async def create_many(self, kind: str, records: list[Record]) -> list[NativeId | AppError]:
        """All in one transaction (one commit); when one record is refused, one by one, so each gets its own answer."""
        k = self._kind(kind)
        prepared = [_values(k, record) for record in records]

        async def work(conn: AsyncConnection) -> list[NativeId | AppError]:
            return [await self._create_in(conn, k, values, children) for values, children in prepared]

        try:
            if not any(children for _, children in prepared) and k.prepared_create(self._reader().dialect):
                with _app_errors(k.table):
                    async with self._links().transaction() as link:
                        return [await self._insert(link, k, values) for values, _ in prepared]
            return await self._transaction(k.table, None, work)
        except AppUnavailable:
            raise  # rolled back whole: nothing was created
        except AppError:
            return await super().create_many(kind, records)

    async def get_many(self, kind: str, native_ids: list[NativeId]) -> dict[NativeId, Record]:
        k = self._kind(kind)
        keys = {key: native_id for native_id in native_ids if (key := _parse_id(k.key, native_id)) is not None}
        found: dict[NativeId, Record] = {}
        if not keys:
            return found
        with _app_errors(k.table):
            async with self._links().link() as link:
                for chunk in _chunks(list(keys)):
                    # One statement per power-of-two size, the last key repeated to fill it: a few prepared, not one per size.
                    size = 1 << (len(chunk) - 1).bit_length()
                    p = self._prepare(("get_many", kind, size), functools.partial(k.by_keys, size))
                    params = {f"key_{i}": chunk[min(i, len(chunk) - 1)] for i in range(size)}
                    for row in await link.fetch(p, params):
                        found[keys[row[k.key.name]]] = row
        return found

    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        k = self._kind(kind)
        values, children = _values(k, changes)
        key = _parse_id(k.key, native_id)
        if key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        if not children:
            await self._update_row(k, key, native_id, values)
            return
        await self._transaction(k.table, values, lambda conn: self._update_in(conn, k, key, native_id, values, children))

    async def _update_row(self, k: _Kind, key: Any, native_id: NativeId, values: Mapping[str, Any]) -> None:
        """UPDATE one row (no child fields) through its prepared statement; with no values, check that it exists."""
        columns = frozenset(values)
        with _app_errors(k.table, values):
            async with self._links().transaction(single=True) as link:
                if values:
                    p = self._prepare(("update", k.name, columns), k.updating, columns)
                    found = await link.run(p, {**values, _KEY: key}) > 0
                else:
                    found = bool(await link.fetch(self._prepare(("exists", k.name), k.exists), {_KEY: key}))
        if not found:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")

    async def delete(self, kind: str, native_id: NativeId) -> None:
        k = self._kind(kind)
        key = _parse_id(k.key, native_id)
        if key is None:
            return  # no such row can exist: already gone
        statements: list[tuple[raw.Prepared, dict[str, Any]]] = []
        if k.deleted is not None:
            # Soft delete: the row, its child rows and its membership rows stay; reads skip it.
            statements.append((self._prepare(("soft_delete", kind), k.soft_deleting), {_KEY: key}))
        else:
            # Membership and child rows go first and by hand: the app's foreign keys may not cascade (or exist).
            for column in self._membership_columns(kind):
                member_key = _parse_id(column, native_id)
                if member_key is not None:
                    statements.append((self._deleting(column), {_KEY: member_key}))
            for parent in dict.fromkeys(c.parent for c in k.children.values()):
                statements.append((self._deleting(parent), {_KEY: key}))
            statements.append((self._deleting(k.key), {_KEY: key}))
        with _app_errors(k.table, deleting=True):
            async with self._links().transaction(single=len(statements) == 1) as link:
                for statement, params in statements:
                    await link.run(statement, params)

    def _deleting(self, column: Column[Any]) -> raw.Prepared:
        """DELETE of the rows whose `column` holds the bound key."""
        stmt = functools.partial(_delete_where, column)
        return self._prepare(("delete", column.table.name, column.name), stmt)

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        k = self._kind(kind)
        if op not in SEARCH_OPS:
            raise AppInvalid(f"unknown operator {op!r} (valid: {', '.join(sorted(SEARCH_OPS))})")
        child = k.children.get(field)
        column = child.value if child is not None else _column(k.table, field, k.children)
        if child is not None and value is None and op == "eq":
            condition = ~exists().where(*child.selecting(k.key))
        else:
            matched = _matching(column, value, op)
            if matched is None:
                return []
            condition = exists().where(*child.selecting(k.key), matched) if child is not None else matched
        stmt = select(*k.columns()).where(condition, *k.live()).order_by(k.key)
        with _app_errors(k.table):
            async with self._reader().connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [(str(row[k.key.name]), dict(row)) for row in rows]

    async def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        k = self._kind(kind)
        last: Any = None
        while True:
            stmt = select(*k.columns()).where(*k.live()).order_by(k.key).limit(self.page_size)
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

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[tuple[str, NativeId]] | None = None,
    ) -> list[dict[str, Any]]:
        """The statements a write would run, with bound parameters (for `translate`; nothing is opened).

        Rendered from the options alone: one transaction in practice, shown as
        its statements in order. Values are parameters, never spliced into SQL.
        """
        t = self.config.tables.get(kind)
        if t is None:
            return super().plan(op, kind, native_id, record, members)
        record = dict(record or {})
        children = {c.field: c for c in t.children}
        main = {f: v for f, v in record.items() if f not in children}
        key_param = {"key": native_id}
        calls: list[dict[str, Any]] = []

        def stmt(sql: str, params: dict[str, Any]) -> None:
            calls.append({"statement": sql, "parameters": params})

        if op == "create":
            if t.key_strategy != "autoincrement":
                main = {t.key: f"<{t.key_strategy} key>", **main}
            cols = ", ".join(main)
            stmt(f"INSERT INTO {t.table} ({cols}) VALUES ({', '.join(':' + c for c in main)})", main)
        elif op == "update" and main:
            sets = ", ".join(f"{c} = :{c}" for c in main)
            stmt(f"UPDATE {t.table} SET {sets} WHERE {t.key} = :key", {**main, **key_param})
        elif op == "delete":
            if t.soft_delete is not None:
                stmt(
                    f"UPDATE {t.table} SET {t.soft_delete.column} = :mark WHERE {t.key} = :key",
                    {"mark": t.soft_delete.value if t.soft_delete.value is not None else "<now>", **key_param},
                )
            else:
                for c in t.children:
                    stmt(f"DELETE FROM {c.table} WHERE {c.parent_column} = :key", key_param)
                for other in self.config.tables.values():  # membership rows naming the record go with it
                    m = other.members
                    if m is not None and m.member_kind == kind:
                        stmt(f"DELETE FROM {m.table} WHERE {m.member_column} = :key", key_param)
                if t.members is not None:
                    stmt(f"DELETE FROM {t.members.table} WHERE {t.members.group_column} = :key", key_param)
                stmt(f"DELETE FROM {t.table} WHERE {t.key} = :key", key_param)
        elif op in t.statements:
            stmt(t.statements[op], {"id": native_id})
        elif op in ("add_members", "remove_members") and t.members is not None:
            m = t.members
            for _kind, member in members or []:
                params: dict[str, Any] = {"group": native_id or "<new key>", "member": member}
                if op == "add_members":
                    stmt(f"INSERT INTO {m.table} ({m.group_column}, {m.member_column}) VALUES (:group, :member)", params)
                else:
                    stmt(f"DELETE FROM {m.table} WHERE {m.group_column} = :group AND {m.member_column} = :member", params)
        if op in ("create", "update"):
            for field, child in children.items():
                if field not in record:
                    continue
                where = " AND ".join([f"{child.parent_column} = :key", *(f"{c} = :{c}" for c in child.where)])
                params = {"key": native_id or "<new key>", **child.where, "value": record[field]}
                if record[field] is None:
                    stmt(f"DELETE FROM {child.table} WHERE {where}", params)
                else:
                    stmt(f"UPDATE {child.table} SET {child.value_column} = :value WHERE {where} (INSERT when no row)", params)
        return calls or super().plan(op, kind, native_id, record, members)

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        """Run the kind's named statement with :id bound to the record's key, in one transaction."""
        k = self._kind(kind)
        sql = k.config.statements.get(name)
        if sql is None:
            valid = ", ".join(sorted(k.config.statements)) or "none"
            raise LookupError(f"the sql connector has no statement {name!r} for kind {kind!r} (valid: {valid})")
        key = _parse_id(k.key, native_id)
        if key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        stmt = text(sql)
        params: dict[str, Any] = {}
        if "id" in statement_params(sql):
            stmt = stmt.bindparams(bindparam("id", type_=k.key.type))
            params["id"] = key

        async def work(conn: AsyncConnection) -> None:
            with _app_errors(k.table):
                if not await _exists(conn, k, key):
                    raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
                await conn.execute(stmt, params)

        await self._transaction(k.table, None, work)

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
        member_kind = self._kinds[m.member_kind]
        if member_kind.deleted is not None:  # a soft-deleted member's rows stay, but it is no longer a member
            stmt = stmt.where(m.member_column.in_(select(member_kind.key).where(*member_kind.live())))
        with _app_errors(m.table):
            async with self._reader().connect() as conn:
                keys = (await conn.execute(stmt)).scalars().all()
        return [(m.member_kind, str(key)) for key in keys]

    # ------------------------------------------------------------ one SCIM write, one transaction

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        if not members:
            return await self.create(kind, record)
        k, m = self._group(kind)
        values, children = _values(k, record)
        keys = self._keys_to_add(m, members)

        async def work(conn: AsyncConnection) -> NativeId:
            native_id = await self._create_in(conn, k, values, children)
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
        values, children = _values(k, changes)
        key = _parse_id(k.key, native_id)
        if key is None:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        if not add_members and not remove_members and not children:
            await self._update_row(k, key, native_id, values)
            return
        m = self._group(kind)[1] if add_members or remove_members else None
        to_add = self._keys_to_add(m, add_members) if m is not None else {}
        to_remove = _keys_to_remove(m, remove_members) if m is not None else []
        member_key = _parse_id(m.group_column, native_id) if m is not None else None

        async def work(conn: AsyncConnection) -> None:
            # The row's UPDATE (with no changes: its existence) first; a gone record is AppNotFound, nothing written.
            await self._update_in(conn, k, key, native_id, values, children)
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
                    async with self._links().turn(), self._writer_engine().begin() as conn:
                        return await work(conn)
            except _MemberRace as race:
                conflict = race.conflict
        assert conflict is not None
        raise conflict  # raised outside the except block: no chain to the private _MemberRace

    async def _create_in(
        self, conn: AsyncConnection, k: _Kind, values: Mapping[str, Any], children: Mapping[str, Any] | None = None
    ) -> NativeId:
        values = dict(values)
        children = children or {}
        strategy = k.config.key_strategy
        key: Any = None
        returning = False
        with _app_errors(k.table, values):
            if strategy == "uuid":
                key = values[k.key.name] = _parse_id(k.key, str(uuid.uuid4()))
            elif strategy == "sequence":
                assert k.sequence is not None
                key = values[k.key.name] = await conn.scalar(select(k.sequence.next_value()))
            elif strategy == "template":
                key = values[k.key.name] = _template_key(k, values, children)
            stmt = insert(k.table).values(values)
            if strategy == "autoincrement":
                returning = conn.dialect.insert_returning
                if returning:
                    stmt = stmt.returning(k.key)
            result = await conn.execute(stmt)
            if strategy == "autoincrement":
                inserted = None if returning else result.inserted_primary_key
                key = result.scalar_one() if returning else (inserted[0] if inserted else None)
        if key is None:
            raise AppBadResponse(f"{k.table.name}: the database assigned no {k.key.name}")
        await _write_children(conn, k, key, children, creating=True)
        return str(key)

    async def _update_in(
        self,
        conn: AsyncConnection,
        k: _Kind,
        key: Any,
        native_id: NativeId,
        values: Mapping[str, Any],
        children: Mapping[str, Any] | None = None,
    ) -> None:
        """UPDATE the row and its child rows; with no values, only check that it exists. AppNotFound when it does not."""
        with _app_errors(k.table, values):
            if values:
                stmt = update(k.table).where(k.key == key, *k.live()).values(values)
                found = (await conn.execute(stmt)).rowcount > 0
            else:
                found = await _exists(conn, k, key)
        if not found:
            raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {native_id!r}")
        await _write_children(conn, k, key, children or {}, creating=False)

    async def _add_members_in(
        self, conn: AsyncConnection, k: _Kind, m: _Members, group_key: Any, group_id: NativeId, keys: Mapping[Any, NativeId]
    ) -> None:
        """Insert the member rows not yet present. `keys`: member key -> the native id it was given as."""
        member_kind = self._kinds[m.member_kind]
        with _app_errors(m.table):
            if not await _exists(conn, k, group_key):
                raise AppNotFound(f"{k.table.name} has no row with {k.key.name} {group_id!r}")
            found = await _present(conn, member_kind.key, keys, *member_kind.live())
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

    def _links(self) -> raw.Pool:
        self._reader()
        assert self._pool is not None
        return self._pool

    def _prepare(self, key: tuple[Any, ...], build: Callable[[], Any], columns: Iterable[str] | None = None) -> raw.Prepared:
        """The statement `build` makes, compiled once per `key` (kind, operation, column set)."""
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= PREPARED_LIMIT:
                self._prepared.clear()  # updates of ever new column sets: start over rather than grow
            dialect = self._reader().dialect
            prepared = self._prepared[key] = raw.prepare(build(), dialect, sorted(columns) if columns is not None else None)
        return prepared

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
    backend = url.get_backend_name()
    lock_ms = int(config.timeout * 1000)
    if backend == "sqlite":
        connect_args: dict[str, Any] = {"timeout": config.timeout}  # sqlite3's busy timeout, in seconds
    elif backend == "postgresql":
        # asyncpg: connect timeout; lock_timeout so a row another writer holds is a quick 503, not a hang.
        statement_ms = int(config.statement_timeout * 1000)
        connect_args = {
            "timeout": config.timeout,
            # A statement the server runs too long is cancelled there; a server gone silent is given up client-side.
            "command_timeout": config.statement_timeout + 1,
            "server_settings": {
                "lock_timeout": str(lock_ms),
                "statement_timeout": str(statement_ms),
                "application_name": "scim-gateway",
            },
        }
    elif backend in ("mysql", "mariadb"):
        seconds = max(1, math.ceil(config.timeout))
        connect_args = {
            "connect_timeout": seconds,
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {seconds}, SESSION max_statement_time = {config.statement_timeout}",
        }
    else:
        connect_args = {}
    extra: dict[str, Any] = {}
    if backend == "sqlite" and url.database and url.database != ":memory:":
        database = url.database

        async def inline() -> Any:
            # Statements run on the event loop's thread; only a wait for another writer's lock leaves it.
            return await inline_sqlite.connect(database, busy_timeout=config.timeout)

        extra["async_creator"] = inline
    pool_size = config.pool_size
    if "async_creator" in extra:
        # SQLAlchemy returns a connection to the pool in a task of its own after each use; with statements inline,
        # those returns queue up behind busy requests and a small pool runs dry (requests then wait pool_timeout).
        # An idle SQLite connection costs little: keep one per request likely in flight.
        pool_size = max(pool_size, SQLITE_POOL_SIZE)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=config.timeout,
        # A server that restarted leaves dead connections in the pool: test each before use.
        pool_pre_ping=backend != "sqlite",
        connect_args=connect_args,
        **extra,
    )
    if backend == "sqlite":
        _setup_sqlite(engine, config.sqlite_synchronous)
    return engine


def _setup_sqlite(engine: AsyncEngine, synchronous: str | None = None) -> None:
    """Foreign keys on, and real write transactions: BEGIN IMMEDIATE for writes (reads are single statements).

    sqlite3's legacy mode begins a transaction only at the first DML statement,
    so a write's reads would run outside it; IMMEDIATE takes the write lock up
    front, so two writers wait (busy timeout) instead of failing on a lock upgrade.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_session(dbapi_connection, synchronous)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Reads are single statements (a page of a list is one SELECT): SQLite's per-statement snapshot is enough,
        # so they skip BEGIN and the ROLLBACK that would end it.
        if conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_session(connection: Any, synchronous: str | None) -> None:
    """A new SQLite connection's settings (sqlite3's, or SQLAlchemy's adapter of it): the engine's and the pool's."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    if synchronous is not None:
        cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    cursor.close()


def _create_pool(engine: AsyncEngine, config: SqlConnectorConfig) -> raw.Pool:
    """The hot paths' connections: SQLite's own inline ones, or the engine's pool for a server."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return raw.EnginePool(engine)
    assert url.database is not None
    synchronous = config.sqlite_synchronous
    return raw.SqlitePool(
        url.database,
        max(config.pool_size, SQLITE_POOL_SIZE),
        config.timeout,
        lambda connection: _sqlite_session(connection, synchronous),
    )


# ---------------------------------------------------------------- values and ids

_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _python_type(column: Column[Any]) -> type | None:
    # Kept in the column's own info dict: a reflected column's type computes it each time, and a dict keyed by
    # columns would compare them with ==, which builds a SQL expression.
    info = column.info
    try:
        return info[_PYTHON_TYPE]
    except KeyError:
        pass
    try:
        kind = column.type.python_type
    except NotImplementedError:
        kind = None
    info[_PYTHON_TYPE] = kind
    return kind


_PYTHON_TYPE = "scim_gateway_python_type"


def _parse_id(column: Column[Any], native_id: NativeId) -> Any:
    """`native_id` as the column's Python type; None when no row can have it ("abc" for an INTEGER)."""
    native_id = str(native_id)  # a connector's caller may hand an int from the app's own lists
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


def _coerce(column: Column[Any], value: Any) -> Any:
    """A value as the column's driver takes it: asyncpg, unlike SQLite, refuses "5" for an INTEGER.

    Raises ValueError when the value cannot be one (the caller says where).
    """
    if value is None:
        return None
    kind = _python_type(column)
    if isinstance(value, str):
        if kind is int:
            if not re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if kind is bool:
            if value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"{value!r} is not a boolean")
        if kind is float:
            return float(value)
        if kind is decimal.Decimal:
            try:
                return decimal.Decimal(value)
            except decimal.InvalidOperation:
                raise ValueError(f"{value!r} is not a number") from None
        if kind is dt.datetime:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if kind is dt.date:
            return dt.date.fromisoformat(value[:10])
        if kind is uuid.UUID:
            return uuid.UUID(value)
        return value
    if kind is str and isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return str(value)
    if kind is int and isinstance(value, bool):
        return int(value)
    return value


def _column(table: Table, name: str, children: Mapping[str, _Child] | None = None) -> Column[Any]:
    if name not in table.c:
        near = _near(name, [*table.c.keys(), *(children or {})])
        raise AppInvalid(f"{table.name} has no column {name!r}{near}")
    return table.c[name]


def _values(k: _Kind, record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record as (its row's columns, its child fields), checked: each exists, none is the key, each a scalar."""
    values: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for name, value in record.items():
        child = k.children.get(name)
        column = child.value if child is not None else _column(k.table, name, k.children)
        where = f"{column.table.name}.{column.name}" if child is None else f"{k.table.name}.{name}"
        if name == k.key.name:
            assigner = "the database" if k.config.key_strategy in ("autoincrement", "sequence") else "the connector"
            raise AppInvalid(f"{k.table.name}.{name} is the key: {assigner} assigns it, and it never changes")
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            raise AppInvalid(f"{where}: a {type(value).__name__} does not fit in a column")
        try:
            value = _coerce(column, value)
        except ValueError as exc:
            raise AppInvalid(f"{where}: {exc}") from None
        (children if child is not None else values)[name] = value
    return values, children


def _template_key(k: _Kind, values: Mapping[str, Any], children: Mapping[str, Any]) -> Any:
    """The key `key_template` builds from the record's fields."""
    template = k.config.key_template
    assert template is not None
    source = {**values, **children}
    for name in template_fields(template):
        if source.get(name) is None:
            raise AppInvalid(f"{k.table.name}.{k.key.name} is built as {template!r}: it needs {name}")
    try:
        built = template.format_map({name: source[name] for name in template_fields(template)})
    except (ValueError, TypeError) as exc:
        raise AppInvalid(f"{k.table.name}.{k.key.name} is built as {template!r}: {exc}") from None
    key = _parse_id(k.key, built)
    if key is None:
        raise AppInvalid(f"{k.table.name}.{k.key.name} is built as {template!r}: {built!r} does not fit the column")
    return key


async def _write_children(conn: AsyncConnection, k: _Kind, key: Any, children: Mapping[str, Any], *, creating: bool) -> None:
    """Each child field's row: inserted, updated in place (other columns kept), or deleted when the value is None."""
    for name, value in children.items():
        child = k.children[name]
        with _app_errors(child.table, {child.value.name: value}):
            if value is None:
                if not creating:
                    await conn.execute(delete(child.table).where(*child.selecting(key)))
                continue
            if not creating:
                stmt = update(child.table).where(*child.selecting(key)).values({child.value.name: value})
                if (await conn.execute(stmt)).rowcount > 0:
                    continue
            await conn.execute(insert(child.table).values(child.row(key, value)))


def _delete_where(column: Column[Any]) -> Any:
    table = column.table
    assert isinstance(table, Table)
    return delete(table).where(column == bindparam(_KEY, type_=column.type))


def _matching(column: Column[Any], value: Any, op: str) -> Any:
    """The condition `column op value`; None when no row can match ("abc" equals no INTEGER)."""
    if op == "eq":
        if value is None:
            return column.is_(None)
        kind = _python_type(column)
        if isinstance(value, str) and kind is str:
            return func.lower(column) == func.lower(value)
        if isinstance(value, str) and kind is int:
            parsed = _parse_id(column, value)
            return None if parsed is None else column == parsed
        try:
            return column == _coerce(column, value)
        except ValueError:
            return None
    if value is None:
        raise AppInvalid(f"{op} needs a value")
    text_value = value if isinstance(value, str) else str(value)
    target = column if _python_type(column) is str else cast(column, String)
    # autoescape: %, _ and the escape character itself are data (ESCAPE '/'), never wildcards.
    if op == "co":
        return target.icontains(text_value, autoescape=True)
    if op == "sw":
        return target.istartswith(text_value, autoescape=True)
    return target.iendswith(text_value, autoescape=True)


def _keys_to_remove(m: _Members, members: list[tuple[str, NativeId]]) -> list[Any]:
    """The member keys to remove, each once; members of another kind or with an impossible id cannot be present."""
    keys = [
        key
        for member_type, native_id in members
        if member_type == m.member_kind and (key := _parse_id(m.member_column, native_id)) is not None
    ]
    return list(dict.fromkeys(keys))


async def _exists(conn: AsyncConnection, k: _Kind, key: Any) -> bool:
    return (await conn.execute(select(k.key).where(k.key == key, *k.live()))).first() is not None


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


class _app_errors:
    """Translate the database's failures into AppErrors; never pass on the SQL or its parameters.

    A class, not a generator: it wraps every statement, and a @contextmanager costs a generator each time.
    """

    __slots__ = ("deleting", "table", "values")

    def __init__(self, table: Table | None, values: Mapping[str, Any] | None = None, *, deleting: bool = False) -> None:
        self.table = table
        self.values = values
        self.deleting = deleting

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        table = self.table
        if isinstance(exc, DBAPIError):
            raise _app_error(exc, table, self.values or {}, self.deleting) from exc.orig
        if isinstance(exc, PoolTimeoutError):
            raise AppUnavailable("no database connection came free in time", retry_after=RETRY_AFTER) from None
        if isinstance(exc, OverflowError):  # sqlite3 refuses integers beyond 64 bits before any SQL runs
            raise AppInvalid(f"{_where(table)}a number is too large for its column") from None
        if isinstance(exc, OSError | TimeoutError):  # a driver's socket error that escaped its own wrapping (refused)
            raise AppUnavailable(f"the database is unreachable: {type(exc).__name__}", retry_after=RETRY_AFTER) from None


def _where(table: Table | None) -> str:
    return f"{table.name}: " if table is not None else ""


def _driver_message(exc: DBAPIError) -> str:
    """The driver's own one-line message: str(exc) would append the SQL and its parameters."""
    orig = exc.orig
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):  # PyMySQL: (errno, message)
        text = args[1].strip().splitlines()
    else:
        text = str(orig).strip().splitlines()
    return text[0][:300] if text and text[0] else type(orig).__name__


# SQLSTATE (PostgreSQL) of integrity violations, and the classes that mean "the server cannot serve now":
# connection exception, insufficient resources, operator intervention (shutdown, cancel), transaction
# rollback (deadlock, serialization), system error; plus lock_not_available. Class 28 (invalid authorization:
# a wrong password, an unknown role) is the gateway's credentials refused: the server is up.
_SQLSTATE = {"23505": "unique", "23502": "not_null", "23514": "check", "23503": "foreign_key"}
_SQLSTATE_UNAVAILABLE = ("08", "53", "57", "40", "58", "55P03", "55006", "XX")
_SQLSTATE_CREDENTIALS = "28"
# MariaDB / MySQL error numbers (PyMySQL reports no SQLSTATE; a check violation even comes as OperationalError).
_ERRNO = {
    1062: "unique", 1586: "unique", 1048: "not_null", 1364: "not_null", 1263: "not_null", 4025: "check", 3819: "check",
    1216: "foreign_key", 1217: "foreign_key", 1451: "foreign_key", 1452: "foreign_key",
    1264: "data", 1265: "data", 1292: "data", 1366: "data", 1367: "data", 1406: "data", 1411: "data", 1690: "data",
    1040: "unavailable", 1053: "unavailable", 1969: "unavailable", 1205: "unavailable", 1213: "unavailable", 1317: "unavailable",
    1927: "unavailable", 2002: "unavailable", 2003: "unavailable", 2006: "unavailable", 2013: "unavailable",
    2014: "unavailable", 2055: "unavailable", 4031: "unavailable", 1129: "unavailable",
    1045: "credentials", 1044: "credentials", 1698: "credentials",  # access denied: the user, its password, the database
}  # fmt: skip
# SQLite reports the violation only in its message.
_SQLITE = re.compile(r"(UNIQUE|NOT NULL|CHECK|FOREIGN KEY) constraint failed(?::\s*(.*))?", re.IGNORECASE)
_MYSQL_NAMED = re.compile(r"(?:for key|Column|Field|CONSTRAINT) [`'\"]([^`'\"]+)[`'\"]")
_PG_KEY = re.compile(r"Key \((.*)\)=\(")


def _problem(exc: DBAPIError, table: Table | None) -> tuple[str, str]:
    """(unique | not_null | check | foreign_key | data | unavailable | credentials | other, what the driver names).

    What is named: "table.column" (or several, comma-separated) where the driver tells, else a constraint name.
    """
    orig = exc.orig
    args = getattr(orig, "args", ())
    if type(orig).__module__.startswith(("pymysql", "aiomysql")) and args and isinstance(args[0], int):
        problem = _ERRNO.get(args[0])
        if problem is not None:
            match = _MYSQL_NAMED.search(str(args[1]) if len(args) > 1 else "")
            return problem, _mysql_named(match.group(1) if match else "", problem, table)
    else:
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return _pg_problem(orig, sqlstate, table)
    cause = getattr(orig, "__cause__", None)
    if cause is not None and any(t.__name__ == "DataError" for t in type(cause).__mro__):
        return "data", ""  # asyncpg refused a parameter before sending it
    if isinstance(exc, IntegrityError):
        match = _SQLITE.search(str(orig))
        if match:
            return match.group(1).lower().replace(" ", "_"), (match.group(2) or "").strip()
        return "other", ""
    if isinstance(exc, DataError):
        return "data", ""
    if isinstance(exc, OperationalError | InterfaceError) or type(exc).__name__ == "DatabaseError":
        return "unavailable", ""  # a lock held too long, a broken file, a lost connection
    return "other", ""


def _pg_problem(orig: Any, sqlstate: str, table: Table | None) -> tuple[str, str]:
    cause = getattr(orig, "__cause__", None)
    table_name = getattr(cause, "table_name", None) or (table.name if table is not None else "")
    if sqlstate in _SQLSTATE:
        problem = _SQLSTATE[sqlstate]
        column = getattr(cause, "column_name", None)
        if column:
            return problem, f"{table_name}.{column}"
        detail = getattr(orig, "detail", None) or getattr(cause, "detail", None) or ""
        match = _PG_KEY.search(detail)
        if problem == "unique" and match:
            # "Key (login)=(x)" or, for an index on an expression, "Key (lower(login::text))=(x)".
            known = table.c.keys() if table is not None and table.name == table_name else []
            words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", match.group(1))
            columns = [w for w in words if w in known] if known else [match.group(1)]
            return problem, ", ".join(f"{table_name}.{c}" for c in dict.fromkeys(columns))
        return problem, getattr(cause, "constraint_name", None) or ""
    if sqlstate.startswith("22"):
        return "data", ""
    if sqlstate.startswith(_SQLSTATE_UNAVAILABLE):
        return "unavailable", ""
    if sqlstate.startswith(_SQLSTATE_CREDENTIALS):
        return "credentials", ""
    return "other", ""


def _mysql_named(name: str, problem: str, table: Table | None) -> str:
    """MariaDB names a unique key by its index name, a null by its column: both as table.column where we can."""
    if table is None or not name:
        return name
    name = name.rpartition(".")[2]  # MySQL 8 says 'employees.login'
    if problem == "unique":
        for index in table.indexes:
            if index.name == name and index.unique:
                return ", ".join(f"{table.name}.{c.name}" for c in index.columns)
        if name == "PRIMARY":
            return ", ".join(f"{table.name}.{c.name}" for c in table.primary_key.columns)
    if name in table.c:
        return f"{table.name}.{name}"
    return name


def _app_error(exc: DBAPIError, table: Table | None, values: Mapping[str, Any], deleting: bool) -> AppError:
    problem, named = _problem(exc, table)
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
    if problem == "data":
        return AppInvalid(f"{_where(table)}rejected a value: {_driver_message(exc)}")
    if problem == "unavailable":
        return AppUnavailable(f"the database failed: {_driver_message(exc)}", retry_after=RETRY_AFTER)
    if problem == "credentials":
        return AppCredentialsRefused(f"the database refused the gateway's login: {_driver_message(exc)}", retry_after=RETRY_AFTER)
    if isinstance(exc, IntegrityError):
        return AppInvalid(f"{where}: the database refused the values: {_driver_message(exc)}")
    return AppError(f"{_where(table)}the database refused the statement: {_driver_message(exc)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _dotted(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f"{'.' if i else ''}{part}" for i, part in enumerate(loc))


__all__ = ["SqlConnector", "SqlSetupError"]
