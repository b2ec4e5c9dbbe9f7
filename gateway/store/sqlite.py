"""The embedded correlation store: one SQLite file (aiosqlite, WAL, numbered migrations).

One aiosqlite connection per process; each store method is one transaction
under a lock (coroutines share the connection, so a transaction must not
interleave with another's statements). Conditional UPDATEs and unique
constraints carry the invariants, so several processes on one file stay
correct too (WAL + busy timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .. import inline_sqlite
from ..scim.schema import ResourceType
from .base import Busy, Gone, Member, NativeConflict, Pending, Query, Row, StoreUnavailable, UniqueConflict, VersionMismatch
from .sqlfilter import SqliteFilter

MIGRATIONS: list[str] = [
    # 1: resources, membership, journal
    """
    CREATE TABLE resources (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL UNIQUE,
        native_id TEXT,
        unique_key TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        created TEXT NOT NULL,
        last_modified TEXT NOT NULL,
        data TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'active',
        pending_seq INTEGER,
        UNIQUE (app, type, unique_key),
        UNIQUE (app, type, native_id)
    );
    CREATE TABLE members (
        app TEXT NOT NULL,
        group_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        member_type TEXT NOT NULL,
        display TEXT,
        PRIMARY KEY (app, group_id, member_id)
    );
    CREATE INDEX members_by_member ON members (app, member_id);
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        app TEXT NOT NULL,
        type TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        op TEXT NOT NULL,
        state TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
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


# The store whose batch() the running task is inside (store calls then share its transaction).
_BATCH: contextvars.ContextVar[SqliteStore | None] = contextvars.ContextVar("sqlite_store_batch", default=None)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Statements run on the event loop's thread; only a wait for another process's lock (up to 10 s) leaves it.
        self._db = await inline_sqlite.connect(self.path, busy_timeout=10.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        await self._db.execute("PRAGMA journal_mode = WAL")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        await self._db.execute("PRAGMA foreign_keys = ON")
        await self._db.create_function("scim_lower", 1, _lower, deterministic=True)
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = await (await self.db.execute("SELECT max(version) FROM schema_version")).fetchone()
                current = row[0] or 0
                for number, script in enumerate(MIGRATIONS, start=1):
                    if number <= current:
                        continue
                    for statement in filter(str.strip, script.split(";")):
                        await self.db.execute(statement)
                    await self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def _access(self) -> AsyncIterator[None]:
        """The connection, to one coroutine at a time; a database that fails is StoreUnavailable (503)."""
        if _BATCH.get() is self:  # inside this task's batch(), which holds the lock
            yield
            return
        async with self._lock:
            try:
                yield
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the correlation store failed: {exc}") from exc

    async def _tx(self, work: Any) -> Any:
        """Run `work(db)` in one IMMEDIATE transaction under the connection lock (a savepoint inside a batch)."""
        if _BATCH.get() is self:
            await self.db.execute("SAVEPOINT write")
            try:
                result = await work(self.db)
            except BaseException:
                await self.db.execute("ROLLBACK TO write")
                await self.db.execute("RELEASE write")
                raise
            await self.db.execute("RELEASE write")
            return result
        async with self._access():
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                result = await work(self.db)
            except BaseException:
                if self.db.in_transaction:
                    await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")
            return result

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """The store writes of this task inside, in one transaction (one commit): a Bulk import's claims or settles.

        Each write keeps its own savepoint, so one refused (a name taken) leaves the others. Keep a batch short:
        it holds the store; app calls belong outside it.
        """
        if _BATCH.get() is self:
            yield
            return
        async with self._lock:
            token = _BATCH.set(self)
            try:
                try:
                    await self.db.execute("BEGIN IMMEDIATE")
                    yield
                except BaseException:
                    if self.db.in_transaction:
                        await self.db.execute("ROLLBACK")
                    raise
                await self.db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the correlation store failed: {exc}") from exc
            finally:
                _BATCH.reset(token)

    @staticmethod
    def _row(rec: sqlite3.Row) -> Row:
        return Row(
            app=rec["app"],
            type=rec["type"],
            id=rec["id"],
            native_id=rec["native_id"],
            unique_key=rec["unique_key"],
            version=rec["version"],
            created=rec["created"],
            last_modified=rec["last_modified"],
            data=json.loads(rec["data"]),
            state=rec["state"],
        )

    async def _journal(self, db: aiosqlite.Connection, app: str, rtype: str, rid: str, op: str, payload: dict[str, Any]) -> int:
        cur = await db.execute(
            "INSERT INTO journal (at, app, type, resource_id, op, state, payload) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (time.time(), app, rtype, rid, op, _dumps(payload)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def _entry(self, db: aiosqlite.Connection, seq: int) -> sqlite3.Row:
        rec = await (await db.execute("SELECT * FROM journal WHERE seq = ?", (seq,))).fetchone()
        if rec is None or rec["state"] != "pending":
            raise Gone(f"journal entry {seq} is not pending")
        return rec

    # ------------------------------------------------------------------ creates

    async def begin_create(self, app: str, rtype: str, rid: str, unique_key: str, data: dict[str, Any], now: str) -> int:
        async def work(db: aiosqlite.Connection) -> int:
            seq = await self._journal(db, app, rtype, rid, "create", {"unique_key": unique_key})
            try:
                await db.execute(
                    "INSERT INTO resources (app, type, id, unique_key, created, last_modified, data, state, pending_seq)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?)",
                    (app, rtype, rid, unique_key, now, now, _dumps(data), seq),
                )
            except sqlite3.IntegrityError as exc:
                raise UniqueConflict(str(exc)) from None
            return seq

        return await self._tx(work)

    async def settle_create(self, seq: int, native_id: str | None, data: dict[str, Any], members: list[Member]) -> Row:
        async def work(db: aiosqlite.Connection) -> Row:
            entry = await self._entry(db, seq)
            try:
                await db.execute(
                    "UPDATE resources SET native_id = ?, data = ?, state = 'active', pending_seq = NULL WHERE id = ?",
                    (native_id, _dumps(data), entry["resource_id"]),
                )
            except sqlite3.IntegrityError as exc:
                raise NativeConflict(str(exc)) from None
            await self._add_members(db, entry["app"], entry["resource_id"], members)
            await db.execute("UPDATE journal SET state = 'done' WHERE seq = ?", (seq,))
            rec = await (await db.execute("SELECT * FROM resources WHERE id = ?", (entry["resource_id"],))).fetchone()
            return self._row(rec)

        return await self._tx(work)

    async def link(
        self, app: str, rtype: str, rid: str, native_id: str, unique_key: str, data: dict[str, Any], now: str,
        members: list[Member] = [],  # noqa: B006 - never mutated
    ) -> Row:
        """Adopt an app record that exists but has no SCIM id yet. UniqueConflict when the name or the record is taken."""

        async def work(db: aiosqlite.Connection) -> Row:
            try:
                await db.execute(
                    "INSERT INTO resources (app, type, id, native_id, unique_key, created, last_modified, data)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (app, rtype, rid, native_id, unique_key, now, now, _dumps(data)),
                )
            except sqlite3.IntegrityError as exc:
                raise UniqueConflict(str(exc)) from None
            await self._add_members(db, app, rid, members)
            rec = await (await db.execute("SELECT * FROM resources WHERE id = ?", (rid,))).fetchone()
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
        async def work(db: aiosqlite.Connection) -> tuple[int, Row]:
            rec = await (
                await db.execute("SELECT * FROM resources WHERE id = ? AND app = ? AND type = ?", (rid, app, rtype))
            ).fetchone()
            if rec is None or rec["state"] != "active":
                raise Gone(rid)
            if rec["pending_seq"] is not None:
                raise Busy(rid)
            if if_match is not None and rec["version"] != if_match:
                raise VersionMismatch(f"version is {rec['version']}")
            body = dict(payload or {})
            body["old_unique_key"] = rec["unique_key"]
            seq = await self._journal(db, app, rtype, rid, op, body)
            try:
                await db.execute(
                    "UPDATE resources SET pending_seq = ?, unique_key = ? WHERE id = ?",
                    (seq, new_unique_key if new_unique_key is not None else rec["unique_key"], rid),
                )
            except sqlite3.IntegrityError as exc:
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
        async def work(db: aiosqlite.Connection) -> Row:
            entry = await self._entry(db, seq)
            app, rid = entry["app"], entry["resource_id"]
            try:
                await db.execute(
                    "UPDATE resources SET data = ?, version = version + 1, last_modified = ?, unique_key = ?, pending_seq = NULL"
                    " WHERE id = ?",
                    (_dumps(data), now, unique_key, rid),
                )
            except sqlite3.IntegrityError as exc:  # recovery settling a name that another pending write holds
                raise UniqueConflict(str(exc)) from None
            if relink:
                try:
                    await db.execute("UPDATE resources SET native_id = ? WHERE id = ?", (native_id, rid))
                except sqlite3.IntegrityError as exc:
                    raise NativeConflict(str(exc)) from None
            if replace_members is not None:
                await db.execute("DELETE FROM members WHERE app = ? AND group_id = ?", (app, rid))
                await self._add_members(db, app, rid, replace_members)
            else:
                if remove_members:
                    await db.executemany(
                        "DELETE FROM members WHERE app = ? AND group_id = ? AND member_id = ?",
                        [(app, rid, m) for m in remove_members],
                    )
                await self._add_members(db, app, rid, add_members)
            await db.execute("UPDATE journal SET state = 'done' WHERE seq = ?", (seq,))
            rec = await (await db.execute("SELECT * FROM resources WHERE id = ?", (rid,))).fetchone()
            return self._row(rec)

        return await self._tx(work)

    async def _add_members(self, db: aiosqlite.Connection, app: str, group_id: str, members: list[Member]) -> None:
        if members:
            await db.executemany(
                "INSERT OR IGNORE INTO members (app, group_id, member_id, member_type, display) VALUES (?, ?, ?, ?, ?)",
                [(app, group_id, m.id, m.type, m.display) for m in members],
            )

    async def settle_delete(self, seq: int) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            entry = await self._entry(db, seq)
            app, rid = entry["app"], entry["resource_id"]
            await db.execute("DELETE FROM resources WHERE id = ?", (rid,))
            await db.execute("DELETE FROM members WHERE app = ? AND (group_id = ? OR member_id = ?)", (app, rid, rid))
            await db.execute("UPDATE journal SET state = 'done' WHERE seq = ?", (seq,))

        await self._tx(work)

    async def abort(self, seq: int, reason: str) -> None:
        """The app call failed (or never happened): undo the claim, keep the resource as it was."""

        async def work(db: aiosqlite.Connection) -> None:
            entry = await self._entry(db, seq)
            rid = entry["resource_id"]
            if entry["op"] == "create":
                await db.execute("DELETE FROM resources WHERE id = ? AND state = 'creating'", (rid,))
            else:
                payload = json.loads(entry["payload"])
                try:
                    await db.execute(
                        "UPDATE resources SET pending_seq = NULL, unique_key = ? WHERE id = ? AND pending_seq = ?",
                        (payload["old_unique_key"], rid, seq),
                    )
                except sqlite3.IntegrityError as exc:  # the name it gave up is held now by another write in flight
                    raise UniqueConflict(str(exc)) from None
            await db.execute("UPDATE journal SET state = 'aborted', detail = ? WHERE seq = ?", (reason[:500], seq))

        await self._tx(work)

    async def refresh(self, app: str, rtype: str, rid: str, data: dict[str, Any], now: str, unique_key: str | None = None) -> Row | None:
        """Replace the gateway copy of a settled resource (not one in flight) with a new version; None when busy or gone.

        A `unique_key` renamed in the app follows, unless another resource holds it (then the old key stays).
        """

        async def work(db: aiosqlite.Connection) -> Row | None:
            sql = (
                "UPDATE resources SET data = ?, version = version + 1, last_modified = ?, unique_key = COALESCE(?, unique_key)"
                " WHERE app = ? AND type = ? AND id = ? AND state = 'active' AND pending_seq IS NULL"
            )
            try:
                cur = await db.execute(sql, (_dumps(data), now, unique_key, app, rtype, rid))
            except sqlite3.IntegrityError:
                cur = await db.execute(sql, (_dumps(data), now, None, app, rtype, rid))
            if cur.rowcount != 1:
                return None
            rec = await (await db.execute("SELECT * FROM resources WHERE id = ?", (rid,))).fetchone()
            return self._row(rec)

        result: Row | None = await self._tx(work)
        return result

    async def pending(self, app: str, older_than: float | None = None) -> list[Pending]:
        """Unsettled journal entries, oldest first; with `older_than`, only those at least that many seconds old."""
        cutoff = time.time() - (older_than or 0.0)
        async with self._access():
            cur = await self.db.execute(
                "SELECT * FROM journal WHERE app = ? AND state = 'pending' AND at <= ? ORDER BY seq", (app, cutoff)
            )
            return [
                Pending(r["seq"], r["app"], r["type"], r["resource_id"], r["op"], json.loads(r["payload"]))
                for r in await cur.fetchall()
            ]

    async def get_any(self, rid: str) -> Row | None:
        """A row in any state (recovery needs the ones being created)."""
        async with self._access():
            rec = await (await self.db.execute("SELECT * FROM resources WHERE id = ?", (rid,))).fetchone()
        return None if rec is None else self._row(rec)

    # ------------------------------------------------------------------ reads

    async def get(self, app: str, rtype: str, rid: str) -> Row | None:
        async with self._access():
            rec = await (
                await self.db.execute(
                    "SELECT * FROM resources WHERE id = ? AND app = ? AND type = ? AND state = 'active'", (rid, app, rtype)
                )
            ).fetchone()
        return None if rec is None else self._row(rec)

    async def by_native(self, app: str, rtype: str, native_id: str) -> Row | None:
        async with self._access():
            rec = await (
                await self.db.execute(
                    "SELECT * FROM resources WHERE app = ? AND type = ? AND native_id = ? AND state = 'active'",
                    (app, rtype, native_id),
                )
            ).fetchone()
        return None if rec is None else self._row(rec)

    async def native_ids(self, app: str, rtype: str | None, rids: list[str]) -> dict[str, tuple[str, str]]:
        """SCIM id -> (resource type, native id) for the given ids that exist (any type when rtype is None)."""
        if not rids:
            return {}
        out: dict[str, tuple[str, str]] = {}
        async with self._access():
            for chunk in _chunks(rids, 500):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, type, native_id FROM resources WHERE app = ? AND state = 'active' AND id IN ({marks})"
                args: list[Any] = [app, *chunk]
                if rtype is not None:
                    sql += " AND type = ?"
                    args.append(rtype)
                for rec in await (await self.db.execute(sql, args)).fetchall():
                    out[rec["id"]] = (rec["type"], rec["native_id"])
        return out

    async def scim_ids(self, app: str, rtype: str, native_ids: list[str]) -> dict[str, str]:
        if not native_ids:
            return {}
        out: dict[str, str] = {}
        async with self._access():
            for chunk in _chunks(native_ids, 500):
                marks = ",".join("?" * len(chunk))
                cur = await self.db.execute(
                    f"SELECT id, native_id FROM resources WHERE app = ? AND type = ? AND state = 'active' AND native_id IN ({marks})",
                    [app, rtype, *chunk],
                )
                for rec in await cur.fetchall():
                    out[rec["native_id"]] = rec["id"]
        return out

    async def members(self, app: str, group_id: str) -> list[Member]:
        return (await self.members_of_many(app, [group_id])).get(group_id, [])

    async def groups_of(self, app: str, member_id: str) -> list[Member]:
        return (await self.groups_of_many(app, [member_id])).get(member_id, [])

    async def member_ids_among(self, app: str, group_id: str, ids: list[str]) -> set[str]:
        """Which of `ids` are members of the group: a lookup by key, whatever the group's size."""
        found: set[str] = set()
        async with self._access():
            for chunk in _chunks(ids, 500):
                cur = await self.db.execute(
                    f"SELECT member_id FROM members WHERE app = ? AND group_id = ? AND member_id IN ({','.join('?' * len(chunk))})",
                    (app, group_id, *chunk),
                )
                found.update(rec[0] for rec in await cur.fetchall())
        return found

    async def members_of_many(self, app: str, group_ids: list[str]) -> dict[str, list[Member]]:
        """Each group's members, in the order they joined: one query for a whole page of groups."""
        out: dict[str, list[Member]] = {}
        async with self._access():
            for chunk in _chunks(group_ids, 500):
                cur = await self.db.execute(
                    f"SELECT m.group_id, m.member_id, m.member_type, COALESCE(NULLIF(m.display, ''), {_DISPLAY}) FROM members m"
                    f" JOIN resources r ON r.id = m.member_id WHERE m.app = ? AND m.group_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY m.rowid",
                    (app, *chunk),
                )
                for rec in await cur.fetchall():
                    out.setdefault(rec[0], []).append(Member(rec[1], rec[2], rec[3]))
        return out

    async def groups_of_many(self, app: str, member_ids: list[str]) -> dict[str, list[Member]]:
        """Each resource's groups: one query for a whole page of users (no query per user)."""
        out: dict[str, list[Member]] = {}
        async with self._access():
            for chunk in _chunks(member_ids, 500):
                cur = await self.db.execute(
                    f"SELECT m.member_id, m.group_id, {_DISPLAY} FROM members m JOIN resources r ON r.id = m.group_id"
                    f" WHERE m.app = ? AND m.member_id IN ({','.join('?' * len(chunk))}) ORDER BY m.rowid",
                    (app, *chunk),
                )
                for rec in await cur.fetchall():
                    out.setdefault(rec[0], []).append(Member(rec[1], "Group", rec[2]))
        return out

    async def query(self, app: str, rtype: ResourceType, query: Query) -> tuple[int, list[Row]]:
        builder = SqliteFilter(rtype)
        where = "r.app = ? AND r.type = ? AND r.state = 'active'"
        head_params: list[Any] = [app, rtype.name]
        if query.filter is not None:
            where += " AND " + builder.where(query.filter)
        order = "r.seq"
        if query.sort_by:
            sorter = SqliteFilter(rtype)
            expr = sorter.sort_expression(query.sort_by)
            direction = "DESC" if query.descending else "ASC"
            # RFC 7644 §3.4.2.3: resources without the attribute come last ascending, first descending.
            order = f"({expr}) IS NULL {'DESC' if query.descending else 'ASC'}, {expr} {direction}, r.seq"
        async with self._access():
            total_row = await (
                await self.db.execute(f"SELECT count(*) FROM resources r WHERE {where}", [*head_params, *builder.params])
            ).fetchone()
            total = total_row[0]
            rows: list[Row] = []
            if query.count is None or query.count > 0:
                limit = -1 if query.count is None else query.count
                cur = await self.db.execute(
                    f"SELECT r.* FROM resources r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                    [*head_params, *builder.params, limit, max(query.start_index, 1) - 1],
                )
                rows = [self._row(rec) for rec in await cur.fetchall()]
        return total, rows


# A member's display name from the gateway copy, in SQL: no JSON parsing in Python per member of a large group.
_DISPLAY = "COALESCE(NULLIF(json_extract(r.data, '$.displayName'), ''), NULLIF(json_extract(r.data, '$.userName'), ''))"


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
