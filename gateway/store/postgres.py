"""The correlation store for many gateway processes: one PostgreSQL database (asyncpg pool, numbered migrations).

Same contract and semantics as SqliteStore. Nothing here relies on being the
only process: every invariant is carried by the database itself.

- Uniqueness: UNIQUE (app, type, unique_key) and (app, type, native_id); two
  processes inserting one key race on the index and the loser gets
  UniqueConflict.
- Claims: begin_write locks the resource row (SELECT ... FOR UPDATE), checks
  state, claim and version, and claims it in the same transaction; a second
  writer anywhere waits on the row lock, then sees the claim (Busy) or the new
  version (VersionMismatch).
- Settling: the journal entry is locked (FOR UPDATE) and must still be
  pending, so a settle and a peer's recovery of the same entry cannot both win.

Connection loss, a server that is down or a lock held past `lock_timeout`
raise StoreUnavailable (the API answers 503 with Retry-After).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..scim.schema import ResourceType
from .base import Busy, Gone, Member, NativeConflict, Pending, Query, Row, StoreUnavailable, UniqueConflict, VersionMismatch
from .sqlfilter import PostgresFilter

log = logging.getLogger(__name__)

# A member's display name from the gateway copy, computed by the server (as `r.data ->> ...` below).
_DISPLAY = "COALESCE(NULLIF(r.data ->> 'displayName', ''), NULLIF(r.data ->> 'userName', ''))"

T = TypeVar("T")

# pg_advisory_xact_lock key for migrations: processes starting together apply them one at a time.
MIGRATION_LOCK = 0x5C1D_6A7E_0001

# Every text column in "C": byte order compares and sorts as SQLite and the in-memory evaluator do.
MIGRATIONS: list[str] = [
    # 1: resources, membership, journal
    """
    CREATE TABLE resources (
        seq BIGSERIAL PRIMARY KEY,
        app TEXT COLLATE "C" NOT NULL,
        type TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL UNIQUE,
        native_id TEXT COLLATE "C",
        unique_key TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        created TEXT COLLATE "C" NOT NULL,
        last_modified TEXT COLLATE "C" NOT NULL,
        data JSONB NOT NULL,
        state TEXT COLLATE "C" NOT NULL DEFAULT 'active',
        pending_seq BIGINT,
        UNIQUE (app, type, unique_key),
        UNIQUE (app, type, native_id)
    );
    CREATE TABLE members (
        seq BIGSERIAL NOT NULL,
        app TEXT COLLATE "C" NOT NULL,
        group_id TEXT COLLATE "C" NOT NULL,
        member_id TEXT COLLATE "C" NOT NULL,
        member_type TEXT COLLATE "C" NOT NULL,
        display TEXT,
        PRIMARY KEY (app, group_id, member_id)
    );
    CREATE INDEX members_by_member ON members (app, member_id);
    CREATE TABLE journal (
        seq BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
        app TEXT COLLATE "C" NOT NULL,
        type TEXT COLLATE "C" NOT NULL,
        resource_id TEXT COLLATE "C" NOT NULL,
        op TEXT COLLATE "C" NOT NULL,
        state TEXT COLLATE "C" NOT NULL,
        payload JSONB NOT NULL DEFAULT '{}',
        detail TEXT
    );
    CREATE INDEX journal_pending ON journal (app, state);
    """,
    # 2: lists page through an app's resources of one type in creation order; the index answers the
    # WHERE, the ORDER BY and the count without reading every row or sorting them.
    """
    CREATE INDEX resources_listing ON resources (app, type, state, seq);
    """,
]

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
)
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


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


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=json.loads, schema="pg_catalog")


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class PostgresStore:
    def __init__(
        self, url: str, *, pool_size: int = 10, lock_timeout: float = 10.0, connect_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self.fold_collation = "default"
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({mask_url(self.url)!r})"

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
                server_settings={
                    "application_name": "scim-gateway",
                    # A row lock held by a stuck peer becomes a 503, not a hung request.
                    "lock_timeout": str(int(self.lock_timeout * 1000)),
                },
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
        async with self._access() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= current:
                    continue
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                log.info("PostgreSQL store %s: applied migration %d", mask_url(self.url), number)

    async def _choose_fold_collation(self) -> None:
        """SCIM compares case-insensitively beyond ASCII; a database created with LC_CTYPE=C folds only ASCII."""
        async with self._access() as conn:
            if await conn.fetchval("SELECT lower('ÄÖÜ') = 'äöü'"):
                return
            if await conn.fetchval("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'"):
                self.fold_collation = "und-x-icu"
                return
        log.warning("PostgreSQL store: the database folds only ASCII case (LC_CTYPE C, no ICU); filters compare other letters exactly")

    @asynccontextmanager
    async def _access(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a database that fails is StoreUnavailable (503)."""
        try:
            async with self.pool.acquire(timeout=self.connect_timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"the correlation store failed: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Store writes inside stay one transaction each here: a server round trip costs little next to a local fsync."""
        yield

    async def _tx(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work(conn)` in one transaction; retried when PostgreSQL picked it as a deadlock victim."""
        for attempt in range(3):
            try:
                async with self._access() as conn, conn.transaction():
                    return await work(conn)
            except StoreUnavailable as exc:
                if attempt == 2 or not isinstance(exc.__cause__, _RETRYABLE):
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _row(rec: asyncpg.Record) -> Row:
        return Row(
            app=rec["app"],
            type=rec["type"],
            id=rec["id"],
            native_id=rec["native_id"],
            unique_key=rec["unique_key"],
            version=rec["version"],
            created=rec["created"],
            last_modified=rec["last_modified"],
            data=rec["data"],
            state=rec["state"],
        )

    @staticmethod
    async def _journal(conn: asyncpg.Connection, app: str, rtype: str, rid: str, op: str, payload: dict[str, Any]) -> int:
        seq: int = await conn.fetchval(
            "INSERT INTO journal (app, type, resource_id, op, state, payload) VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING seq",
            app, rtype, rid, op, payload,
        )
        return seq

    @staticmethod
    async def _entry(conn: asyncpg.Connection, seq: int) -> asyncpg.Record:
        # FOR UPDATE: a settle and a peer's recovery (or abort) of one entry take turns; the second finds it done.
        rec = await conn.fetchrow("SELECT * FROM journal WHERE seq = $1 FOR UPDATE", seq)
        if rec is None or rec["state"] != "pending":
            raise Gone(f"journal entry {seq} is not pending")
        return rec

    # ------------------------------------------------------------------ creates

    async def begin_create(self, app: str, rtype: str, rid: str, unique_key: str, data: dict[str, Any], now: str) -> int:
        async def work(conn: asyncpg.Connection) -> int:
            seq = await self._journal(conn, app, rtype, rid, "create", {"unique_key": unique_key})
            try:
                await conn.execute(
                    "INSERT INTO resources (app, type, id, unique_key, created, last_modified, data, state, pending_seq)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, 'creating', $8)",
                    app, rtype, rid, unique_key, now, now, data, seq,
                )
            except asyncpg.UniqueViolationError as exc:
                raise UniqueConflict(str(exc)) from None
            return seq

        return await self._tx(work)

    async def settle_create(self, seq: int, native_id: str | None, data: dict[str, Any], members: list[Member]) -> Row:
        async def work(conn: asyncpg.Connection) -> Row:
            entry = await self._entry(conn, seq)
            try:
                rec = await conn.fetchrow(
                    "UPDATE resources SET native_id = $1, data = $2, state = 'active', pending_seq = NULL WHERE id = $3 RETURNING *",
                    native_id, data, entry["resource_id"],
                )
            except asyncpg.UniqueViolationError as exc:
                raise NativeConflict(str(exc)) from None
            await self._add_members(conn, entry["app"], entry["resource_id"], members)
            await conn.execute("UPDATE journal SET state = 'done' WHERE seq = $1", seq)
            return self._row(rec)

        return await self._tx(work)

    async def link(
        self, app: str, rtype: str, rid: str, native_id: str, unique_key: str, data: dict[str, Any], now: str,
        members: list[Member] = [],  # noqa: B006 - never mutated
    ) -> Row:
        """Adopt an app record that exists but has no SCIM id yet. UniqueConflict when the name or the record is taken."""

        async def work(conn: asyncpg.Connection) -> Row:
            try:
                rec = await conn.fetchrow(
                    "INSERT INTO resources (app, type, id, native_id, unique_key, created, last_modified, data)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                    app, rtype, rid, native_id, unique_key, now, now, data,
                )
            except asyncpg.UniqueViolationError as exc:
                raise UniqueConflict(str(exc)) from None
            await self._add_members(conn, app, rid, members)
            return self._row(rec)

        return await self._tx(work)

    # ------------------------------------------------------------------ updates and deletes

    async def begin_write(
        self,
        app: str,
        rtype: str,
        rid: str,
        op: str,
        *,
        if_match: int | None = None,
        new_unique_key: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> tuple[int, Row]:
        async def work(conn: asyncpg.Connection) -> tuple[int, Row]:
            # The row lock makes check-then-claim atomic across processes: a concurrent writer
            # waits here and then reads the claimed row (Busy) or the settled version (VersionMismatch).
            rec = await conn.fetchrow(
                "SELECT * FROM resources WHERE id = $1 AND app = $2 AND type = $3 FOR UPDATE", rid, app, rtype
            )
            if rec is None or rec["state"] != "active":
                raise Gone(rid)
            if rec["pending_seq"] is not None:
                raise Busy(rid)
            if if_match is not None and rec["version"] != if_match:
                raise VersionMismatch(f"version is {rec['version']}")
            body = dict(payload or {})
            body["old_unique_key"] = rec["unique_key"]
            seq = await self._journal(conn, app, rtype, rid, op, body)
            try:
                await conn.execute(
                    "UPDATE resources SET pending_seq = $1, unique_key = $2 WHERE id = $3",
                    seq, new_unique_key if new_unique_key is not None else rec["unique_key"], rid,
                )
            except asyncpg.UniqueViolationError as exc:
                raise UniqueConflict(str(exc)) from None
            return seq, self._row(rec)

        return await self._tx(work)

    async def settle_update(
        self,
        seq: int,
        data: dict[str, Any],
        now: str,
        unique_key: str,
        *,
        add_members: list[Member] = [],  # noqa: B006 - never mutated
        remove_members: list[str] = [],  # noqa: B006
        replace_members: list[Member] | None = None,
        relink: bool = False,
        native_id: str | None = None,
    ) -> Row:
        """Settle an update; with `relink`, the resource's native id becomes `native_id` (None: no app record now)."""
        async def work(conn: asyncpg.Connection) -> Row:
            entry = await self._entry(conn, seq)
            app, rid = entry["app"], entry["resource_id"]
            try:
                rec = await conn.fetchrow(
                    "UPDATE resources SET data = $1, version = version + 1, last_modified = $2, unique_key = $3, pending_seq = NULL"
                    " WHERE id = $4 RETURNING *",
                    data, now, unique_key, rid,
                )
            except asyncpg.UniqueViolationError as exc:  # recovery settling a name that another pending write holds
                raise UniqueConflict(str(exc)) from None
            if relink:
                try:
                    rec = await conn.fetchrow("UPDATE resources SET native_id = $1 WHERE id = $2 RETURNING *", native_id, rid)
                except asyncpg.UniqueViolationError as exc:
                    raise NativeConflict(str(exc)) from None
            if replace_members is not None:
                await conn.execute("DELETE FROM members WHERE app = $1 AND group_id = $2", app, rid)
                await self._add_members(conn, app, rid, replace_members)
            else:
                if remove_members:
                    await conn.execute(
                        "DELETE FROM members WHERE app = $1 AND group_id = $2 AND member_id = ANY($3::text[])",
                        app, rid, list(remove_members),
                    )
                await self._add_members(conn, app, rid, add_members)
            await conn.execute("UPDATE journal SET state = 'done' WHERE seq = $1", seq)
            return self._row(rec)

        return await self._tx(work)

    @staticmethod
    async def _add_members(conn: asyncpg.Connection, app: str, group_id: str, members: list[Member]) -> None:
        if members:
            # One row per member, in the order given; existing rows are left as they are.
            await conn.execute(
                "INSERT INTO members (app, group_id, member_id, member_type, display)"
                " SELECT $1, $2, m.id, m.type, m.display FROM unnest($3::text[], $4::text[], $5::text[])"
                " WITH ORDINALITY AS m(id, type, display, n) ORDER BY m.n"
                " ON CONFLICT DO NOTHING",
                app, group_id, [m.id for m in members], [m.type for m in members], [m.display for m in members],
            )

    async def settle_delete(self, seq: int) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            entry = await self._entry(conn, seq)
            app, rid = entry["app"], entry["resource_id"]
            await conn.execute("DELETE FROM resources WHERE id = $1", rid)
            await conn.execute("DELETE FROM members WHERE app = $1 AND (group_id = $2 OR member_id = $2)", app, rid)
            await conn.execute("UPDATE journal SET state = 'done' WHERE seq = $1", seq)

        await self._tx(work)

    async def abort(self, seq: int, reason: str) -> None:
        """The app call failed (or never happened): undo the claim, keep the resource as it was."""

        async def work(conn: asyncpg.Connection) -> None:
            entry = await self._entry(conn, seq)
            rid = entry["resource_id"]
            if entry["op"] == "create":
                await conn.execute("DELETE FROM resources WHERE id = $1 AND state = 'creating'", rid)
            else:
                try:
                    await conn.execute(
                        "UPDATE resources SET pending_seq = NULL, unique_key = $1 WHERE id = $2 AND pending_seq = $3",
                        entry["payload"]["old_unique_key"], rid, seq,
                    )
                except asyncpg.UniqueViolationError as exc:  # the name it gave up is held now by another write in flight
                    raise UniqueConflict(str(exc)) from None
            await conn.execute("UPDATE journal SET state = 'aborted', detail = $1 WHERE seq = $2", reason[:500], seq)

        await self._tx(work)

    async def refresh(self, app: str, rtype: str, rid: str, data: dict[str, Any], now: str, unique_key: str | None = None) -> Row | None:
        """Replace the gateway copy of a settled resource (not one in flight) with a new version; None when busy or gone.

        A `unique_key` renamed in the app follows, unless another resource holds it (then the old key stays).
        """
        sql = (
            "UPDATE resources SET data = $1, version = version + 1, last_modified = $2, unique_key = COALESCE($6, unique_key)"
            " WHERE app = $3 AND type = $4 AND id = $5 AND state = 'active' AND pending_seq IS NULL RETURNING *"
        )
        async with self._access() as conn:
            try:
                rec = await conn.fetchrow(sql, data, now, app, rtype, rid, unique_key)
            except asyncpg.UniqueViolationError:
                rec = await conn.fetchrow(sql, data, now, app, rtype, rid, None)
        return None if rec is None else self._row(rec)

    async def pending(self, app: str, older_than: float | None = None) -> list[Pending]:
        """Unsettled journal entries, oldest first; with `older_than`, only those at least that many seconds old.

        Age is measured on the database server's clock, so hosts with skewed clocks agree.
        """
        async with self._access() as conn:
            recs = await conn.fetch(
                "SELECT * FROM journal WHERE app = $1 AND state = 'pending'"
                " AND at <= extract(epoch FROM clock_timestamp()) - $2 ORDER BY seq",
                app, float(older_than or 0.0),
            )
        return [Pending(r["seq"], r["app"], r["type"], r["resource_id"], r["op"], r["payload"]) for r in recs]

    async def get_any(self, rid: str) -> Row | None:
        """A row in any state (recovery needs the ones being created)."""
        async with self._access() as conn:
            rec = await conn.fetchrow("SELECT * FROM resources WHERE id = $1", rid)
        return None if rec is None else self._row(rec)

    # ------------------------------------------------------------------ reads

    async def get(self, app: str, rtype: str, rid: str) -> Row | None:
        async with self._access() as conn:
            rec = await conn.fetchrow(
                "SELECT * FROM resources WHERE id = $1 AND app = $2 AND type = $3 AND state = 'active'", rid, app, rtype
            )
        return None if rec is None else self._row(rec)

    async def by_native(self, app: str, rtype: str, native_id: str) -> Row | None:
        async with self._access() as conn:
            rec = await conn.fetchrow(
                "SELECT * FROM resources WHERE app = $1 AND type = $2 AND native_id = $3 AND state = 'active'",
                app, rtype, native_id,
            )
        return None if rec is None else self._row(rec)

    async def native_ids(self, app: str, rtype: str | None, rids: list[str]) -> dict[str, tuple[str, str]]:
        """SCIM id -> (resource type, native id) for the given ids that exist (any type when rtype is None)."""
        if not rids:
            return {}
        async with self._access() as conn:
            recs = await conn.fetch(
                "SELECT id, type, native_id FROM resources WHERE app = $1 AND state = 'active' AND id = ANY($2::text[])"
                " AND ($3::text IS NULL OR type = $3)",
                app, list(rids), rtype,
            )
        return {r["id"]: (r["type"], r["native_id"]) for r in recs}

    async def scim_ids(self, app: str, rtype: str, native_ids: list[str]) -> dict[str, str]:
        if not native_ids:
            return {}
        async with self._access() as conn:
            recs = await conn.fetch(
                "SELECT id, native_id FROM resources WHERE app = $1 AND type = $2 AND state = 'active' AND native_id = ANY($3::text[])",
                app, rtype, list(native_ids),
            )
        return {r["native_id"]: r["id"] for r in recs}

    async def members(self, app: str, group_id: str) -> list[Member]:
        return (await self.members_of_many(app, [group_id])).get(group_id, [])

    async def groups_of(self, app: str, member_id: str) -> list[Member]:
        return (await self.groups_of_many(app, [member_id])).get(member_id, [])

    async def member_ids_among(self, app: str, group_id: str, ids: list[str]) -> set[str]:
        """Which of `ids` are members of the group: a lookup by key, whatever the group's size."""
        async with self._access() as conn:
            recs = await conn.fetch(
                "SELECT member_id FROM members WHERE app = $1 AND group_id = $2 AND member_id = ANY($3::text[])", app, group_id, list(ids)
            )
        return {r["member_id"] for r in recs}

    async def members_of_many(self, app: str, group_ids: list[str]) -> dict[str, list[Member]]:
        """Each group's members, in the order they joined: one query for a whole page of groups."""
        async with self._access() as conn:
            recs = await conn.fetch(
                f"SELECT m.group_id, m.member_id, m.member_type, COALESCE(NULLIF(m.display, ''), {_DISPLAY}) AS display"
                " FROM members m JOIN resources r ON r.id = m.member_id"
                " WHERE m.app = $1 AND m.group_id = ANY($2::text[]) ORDER BY m.seq",
                app, list(group_ids),
            )
        out: dict[str, list[Member]] = {}
        for r in recs:
            out.setdefault(r["group_id"], []).append(Member(r["member_id"], r["member_type"], r["display"]))
        return out

    async def groups_of_many(self, app: str, member_ids: list[str]) -> dict[str, list[Member]]:
        """Each resource's groups: one query for a whole page of users (no query per user)."""
        async with self._access() as conn:
            recs = await conn.fetch(
                f"SELECT m.member_id, m.group_id, {_DISPLAY} AS display FROM members m JOIN resources r ON r.id = m.group_id"
                " WHERE m.app = $1 AND m.member_id = ANY($2::text[]) ORDER BY m.seq",
                app, list(member_ids),
            )
        out: dict[str, list[Member]] = {}
        for r in recs:
            out.setdefault(r["member_id"], []).append(Member(r["group_id"], "Group", r["display"]))
        return out

    async def query(self, app: str, rtype: ResourceType, query: Query) -> tuple[int, list[Row]]:
        builder = PostgresFilter(rtype, first_param=3, fold_collation=self.fold_collation)
        where = "r.app = $1 AND r.type = $2 AND r.state = 'active'"
        if query.filter is not None:
            where += " AND " + builder.where(query.filter)
        params: list[Any] = [app, rtype.name, *builder.params]
        order = "r.seq"
        if query.sort_by:
            expr = PostgresFilter(rtype, fold_collation=self.fold_collation).sort_expression(query.sort_by)
            direction = "DESC" if query.descending else "ASC"
            # RFC 7644 §3.4.2.3: resources without the attribute come last ascending, first descending.
            order = f"({expr}) IS NULL {direction}, {expr} {direction}, r.seq"
        n = len(params)
        async with self._access() as conn:
            total: int = await conn.fetchval(f"SELECT count(*) FROM resources r WHERE {where}", *params)
            rows: list[Row] = []
            if query.count is None or query.count > 0:
                recs = await conn.fetch(
                    f"SELECT r.* FROM resources r WHERE {where} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}",
                    *params, query.count, max(query.start_index, 1) - 1,
                )
                rows = [self._row(rec) for rec in recs]
        return total, rows
