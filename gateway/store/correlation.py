"""The correlation store: the claim/settle state machine and every query, written once over a SQL dialect.

Each store method is one transaction. Conditional UPDATEs and unique constraints carry the invariants, so
several processes on one database stay correct: a name is held by one resource (UNIQUE app, type,
unique_key), an app record by one resource (UNIQUE app, type, native_id), a resource by one write at a time
(`pending_seq`, checked and set in the transaction that journals the write; on PostgreSQL under a row lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from .base import Busy, Gone, Member, NativeConflict, Pending, Row, UniqueConflict, VersionMismatch
from .bulk import BulkWrites
from .dialect import Conn, Dialect, Duplicate
from .journal import JournalView
from .query import Query
from .reports import ReportStore
from .sqlquery import SqlQuery

_ROW = "SELECT * FROM resources"


class Store(ReportStore, JournalView, BulkWrites):
    """SCIM ids, native ids, the gateway's copy of each resource, membership, and the write journal.

    `labels`: the stored attributes, in order, whose first non-empty value shows a resource in another's
    member or group list when the membership row carries no display of its own.
    """

    def __init__(self, dialect: Dialect, *, labels: Sequence[str] = ()) -> None:
        self.dialect = dialect
        label = [f"NULLIF({dialect.extract('r.data', (key,))}, '')" for key in labels]
        self._label = f"COALESCE({', '.join(label)}, NULL)" if label else "NULL"

    async def open(self) -> None:
        await self.dialect.open()

    async def close(self) -> None:
        await self.dialect.close()

    def batch(self) -> AbstractAsyncContextManager[None]:
        """The calling task's store writes inside share one transaction where that saves work (a Bulk import).

        Each write stays all or nothing: one refused (a name taken) leaves the others. Keep a batch short: app
        calls belong outside it.
        """
        return self.dialect.batch()

    def _row(self, rec: Any) -> Row:
        return Row(
            rec["app"],
            rec["type"],
            rec["id"],
            rec["native_id"],
            rec["unique_key"],
            rec["version"],
            rec["created"],
            rec["last_modified"],
            self.dialect.decode(rec["data"]),
            rec["state"],
        )

    async def _journal(self, conn: Conn, app: str, rtype: str, rid: str, op: str, payload: dict[str, Any]) -> int:
        rec = await conn.fetchrow(
            f"INSERT INTO journal (at, app, type, resource_id, op, state, payload) VALUES ({self.dialect.clock}, ?, ?, ?, ?, 'pending', ?)"
            " RETURNING seq",
            app,
            rtype,
            rid,
            op,
            self.dialect.encode(payload),
        )
        assert rec is not None
        seq: int = rec["seq"]
        return seq

    async def _entry(self, conn: Conn, seq: int, state: str = "done", detail: str | None = None) -> Any:
        """Close a pending entry (`state`: done or aborted), answer what it journaled; Gone when it is not pending.
        First in its transaction, it takes the entry's row lock (where there are row locks): a settle and a peer's
        recovery (or abort) of one entry take turns; the loser finds it closed."""
        rec = await conn.fetchrow(
            "UPDATE journal SET state = ?, detail = COALESCE(?, detail) WHERE seq = ? AND state = 'pending'"
            " RETURNING app, type, resource_id, op, payload",
            state,
            detail,
            seq,
        )
        if rec is None:
            raise Gone(f"journal entry {seq} is not pending")
        return rec

    async def _done(self, conn: Conn, seq: int) -> None:  # last in a settle's transaction (the hub's outbox adds)
        return None

    # ------------------------------------------------------------------ creates

    async def begin_create(
        self,
        app: str,
        rtype: str,
        rid: str,
        unique_key: str,
        data: dict[str, Any],
        now: str,
        payload: dict[str, Any] | None = None,
    ) -> int:
        """Journal a create and hold its name (the row is invisible until settled). UniqueConflict: the name is taken.
        `payload`: what recovery needs beyond the row (the members it was created with)."""

        async def work(conn: Conn) -> int:
            seq = await self._journal(conn, app, rtype, rid, "create", {**(payload or {}), "unique_key": unique_key})
            try:
                await conn.execute(
                    "INSERT INTO resources (app, type, id, unique_key, created, last_modified, data, state, pending_seq)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?)",
                    app,
                    rtype,
                    rid,
                    unique_key,
                    now,
                    now,
                    self.dialect.encode(data),
                    seq,
                )
            except Duplicate as exc:
                raise UniqueConflict(str(exc)) from None
            return seq

        return await self.dialect.transaction(work)

    async def settle_create(self, seq: int, native_id: str | None, data: dict[str, Any], members: Sequence[Member]) -> Row:
        """The app created the record: link it, keep `data` as the copy. NativeConflict: another resource has that record."""

        async def work(conn: Conn) -> Row:
            entry = await self._entry(conn, seq)
            try:
                rec = await conn.fetchrow(
                    "UPDATE resources SET native_id = ?, data = ?, state = 'active', pending_seq = NULL WHERE id = ? RETURNING *",
                    native_id,
                    self.dialect.encode(data),
                    entry["resource_id"],
                )
            except Duplicate as exc:
                raise NativeConflict(str(exc)) from None
            await self._add_members(conn, entry["app"], entry["resource_id"], members)
            await self._done(conn, seq)
            return self._row(rec)

        return await self.dialect.transaction(work)

    async def link(
        self,
        app: str,
        rtype: str,
        rid: str,
        native_id: str,
        unique_key: str,
        data: dict[str, Any],
        now: str,
        members: Sequence[Member] = (),
    ) -> Row:
        """Adopt an app record that exists but has no SCIM id yet. UniqueConflict when the name or the record is taken."""

        async def work(conn: Conn) -> Row:
            try:
                rec = await conn.fetchrow(
                    "INSERT INTO resources (app, type, id, native_id, unique_key, created, last_modified, data)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    app,
                    rtype,
                    rid,
                    native_id,
                    unique_key,
                    now,
                    now,
                    self.dialect.encode(data),
                )
            except Duplicate as exc:
                raise UniqueConflict(str(exc)) from None
            await self._add_members(conn, app, rid, members)
            return self._row(rec)

        return await self.dialect.transaction(work)

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
        """Journal an update or delete and claim the resource (its new name held at once).

        Gone: no such resource; Busy: another write holds it; VersionMismatch: not `if_match`; UniqueConflict.
        """

        async def work(conn: Conn) -> tuple[int, Row]:
            # Check and claim in one transaction (under the row lock where there is one): a concurrent writer
            # anywhere waits, then sees the claim (Busy) or the settled version (VersionMismatch).
            rec = await conn.fetchrow(f"{_ROW} WHERE id = ? AND app = ? AND type = ?{self.dialect.for_update}", rid, app, rtype)
            if rec is None or rec["state"] != "active":
                raise Gone(rid)
            if rec["pending_seq"] is not None:
                raise Busy(rid)
            if if_match is not None and rec["version"] != if_match:
                raise VersionMismatch(f"version is {rec['version']}")
            key = rec["unique_key"] if new_unique_key is None else new_unique_key
            seq = await self._journal(
                conn, app, rtype, rid, op, {**(payload or {}), "old_unique_key": rec["unique_key"], "new_unique_key": key}
            )
            try:
                await conn.execute(
                    "UPDATE resources SET pending_seq = ?, unique_key = ? WHERE id = ?",
                    seq,
                    key,
                    rid,
                )
            except Duplicate as exc:
                raise UniqueConflict(str(exc)) from None
            return seq, self._row(rec)

        return await self.dialect.transaction(work)

    async def settle_update(
        self,
        seq: int,
        data: dict[str, Any],
        now: str,
        unique_key: str,
        *,
        add_members: Sequence[Member] = (),
        remove_members: Sequence[str] = (),
        replace_members: Sequence[Member] | None = None,
        relink: bool = False,
        native_id: str | None = None,
    ) -> Row:
        """Settle an update: a new version of the copy; with `relink`, the native id becomes `native_id` (None: no app record now)."""

        async def work(conn: Conn) -> Row:
            entry = await self._entry(conn, seq)
            app, rid = entry["app"], entry["resource_id"]
            try:
                rec = await conn.fetchrow(
                    "UPDATE resources SET data = ?, version = version + 1, last_modified = ?, unique_key = ?, pending_seq = NULL"
                    " WHERE id = ? RETURNING *",
                    self.dialect.encode(data),
                    now,
                    unique_key,
                    rid,
                )
            except Duplicate as exc:  # recovery settling a name that another pending write holds
                raise UniqueConflict(str(exc)) from None
            if relink:
                try:
                    rec = await conn.fetchrow("UPDATE resources SET native_id = ? WHERE id = ? RETURNING *", native_id, rid)
                except Duplicate as exc:
                    raise NativeConflict(str(exc)) from None
            if replace_members is not None:
                await conn.execute("DELETE FROM members WHERE app = ? AND group_id = ?", app, rid)
                await self._add_members(conn, app, rid, replace_members)
            else:
                for chunk in self.dialect.chunks(remove_members):
                    among, params = self.dialect.among("member_id", chunk)
                    await conn.execute(f"DELETE FROM members WHERE app = ? AND group_id = ? AND {among}", app, rid, *params)
                await self._add_members(conn, app, rid, add_members)
            await self._done(conn, seq)
            return self._row(rec)

        return await self.dialect.transaction(work)

    async def _add_members(self, conn: Conn, app: str, group_id: str, members: Sequence[Member]) -> None:
        """One row per member, in the order given; members already there are left as they are."""
        if members:
            await conn.executemany(
                "INSERT INTO members (app, group_id, member_id, member_type, display) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(app, group_id, m.id, m.type, m.display) for m in members],
            )

    async def settle_delete(self, seq: int) -> None:
        async def work(conn: Conn) -> None:
            entry = await self._entry(conn, seq)
            app, rid = entry["app"], entry["resource_id"]
            await conn.execute("DELETE FROM resources WHERE id = ?", rid)
            await conn.execute("DELETE FROM members WHERE app = ? AND (group_id = ? OR member_id = ?)", app, rid, rid)
            await self._done(conn, seq)

        await self.dialect.transaction(work)

    async def abort(self, seq: int, reason: str) -> None:
        """The app call failed (or never happened): undo the claim, keep the resource as it was."""

        async def work(conn: Conn) -> None:
            entry = await self._entry(conn, seq, "aborted", reason[:500])
            rid = entry["resource_id"]
            if entry["op"] == "create":
                await conn.execute("DELETE FROM resources WHERE id = ? AND state = 'creating'", rid)
            else:
                try:
                    await conn.execute(
                        "UPDATE resources SET pending_seq = NULL, unique_key = ? WHERE id = ? AND pending_seq = ?",
                        self.dialect.decode(entry["payload"])["old_unique_key"],
                        rid,
                        seq,
                    )
                except Duplicate as exc:  # the name it gave up is held now by another write in flight
                    raise UniqueConflict(str(exc)) from None

        await self.dialect.transaction(work)

    async def refresh(
        self,
        app: str,
        rtype: str,
        rid: str,
        data: dict[str, Any],
        now: str,
        unique_key: str | None = None,
        members: Sequence[Member] | None = None,
        groups: Sequence[Member] | None = None,
    ) -> Row | None:
        """Replace the copy of a settled resource (not one in flight) with a new version; None when busy or gone.

        A `unique_key` renamed in the app follows, unless another resource holds it (then the old key stays);
        `members`: a group's members become these (as the app lists them), in the same transaction; `groups`:
        likewise the groups a member is in (as its own record lists them).
        """

        async def work(conn: Conn, key: str | None) -> Row | None:
            rec = await conn.fetchrow(
                "UPDATE resources SET data = ?, version = version + 1, last_modified = ?, unique_key = COALESCE(?, unique_key)"
                " WHERE app = ? AND type = ? AND id = ? AND state = 'active' AND pending_seq IS NULL RETURNING *",
                self.dialect.encode(data),
                now,
                key,
                app,
                rtype,
                rid,
            )
            if rec is not None and members is not None:
                await conn.execute("DELETE FROM members WHERE app = ? AND group_id = ?", app, rid)
                await self._add_members(conn, app, rid, members)
            if rec is not None and groups is not None:
                await conn.execute("DELETE FROM members WHERE app = ? AND member_id = ?", app, rid)
                await conn.executemany(
                    "INSERT INTO members (app, group_id, member_id, member_type, display) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    [(app, g.id, rid, rtype, g.display) for g in groups],
                )
            return None if rec is None else self._row(rec)

        try:
            return await self.dialect.transaction(lambda conn: work(conn, unique_key))
        except Duplicate:
            return await self.dialect.transaction(lambda conn: work(conn, None))

    async def pending(self, app: str, older_than: float | None = None, *, due: bool = False) -> list[Pending]:
        """Unsettled journal entries, oldest first; with `older_than`, only those at least that many seconds old;
        with `due`, not those recovery postponed whose time has not come (journal.py).

        Age is measured on the database's clock, so hosts with skewed clocks agree.
        """
        clock = self.dialect.clock
        later = f" AND (next_at IS NULL OR next_at <= {clock})" if due else ""
        async with self.dialect.access() as conn:
            recs = await conn.fetch(
                f"SELECT * FROM journal WHERE app = ? AND state = 'pending' AND at <= {clock} - ?{later} ORDER BY seq",
                app,
                float(older_than or 0.0),
            )
        return [
            Pending(r["seq"], r["app"], r["type"], r["resource_id"], r["op"], self.dialect.decode(r["payload"]), r["attempts"])
            for r in recs
        ]

    async def get_any(self, rid: str) -> Row | None:
        """A row in any state (recovery needs the ones being created)."""
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(f"{_ROW} WHERE id = ?", rid)
        return None if rec is None else self._row(rec)

    # ------------------------------------------------------------------ reads

    async def get(self, app: str, rtype: str, rid: str) -> Row | None:
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(f"{_ROW} WHERE id = ? AND app = ? AND type = ? AND state = 'active'", rid, app, rtype)
        return None if rec is None else self._row(rec)

    async def by_native(self, app: str, rtype: str, native_id: str) -> Row | None:
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(
                f"{_ROW} WHERE app = ? AND type = ? AND native_id = ? AND state = 'active'", app, rtype, native_id
            )
        return None if rec is None else self._row(rec)

    async def native_ids(self, app: str, rtype: str | None, rids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """SCIM id -> (resource type, native id) for the given ids that exist (any type when rtype is None)."""
        out: dict[str, tuple[str, str | None]] = {}
        async with self.dialect.access() as conn:
            for chunk in self.dialect.chunks(rids):
                among, params = self.dialect.among("id", chunk)
                sql = f"SELECT id, type, native_id FROM resources WHERE app = ? AND state = 'active' AND {among}"
                if rtype is not None:
                    sql += " AND type = ?"
                    params.append(rtype)
                for rec in await conn.fetch(sql, app, *params):
                    out[rec["id"]] = (rec["type"], rec["native_id"])
        return out

    async def scim_ids(self, app: str, rtype: str, native_ids: Sequence[str]) -> dict[str, str]:
        """Native id -> SCIM id for the app records of `rtype` that are linked."""
        out: dict[str, str] = {}
        async with self.dialect.access() as conn:
            for chunk in self.dialect.chunks(native_ids):
                among, params = self.dialect.among("native_id", chunk)
                sql = f"SELECT id, native_id FROM resources WHERE app = ? AND type = ? AND state = 'active' AND {among}"
                for rec in await conn.fetch(sql, app, rtype, *params):
                    out[rec["native_id"]] = rec["id"]
        return out

    async def members(self, app: str, group_id: str) -> list[Member]:
        return (await self.members_of_many(app, [group_id])).get(group_id, [])

    async def groups_of(self, app: str, member_id: str) -> list[Member]:
        return (await self.groups_of_many(app, [member_id])).get(member_id, [])

    async def member_ids_among(self, app: str, group_id: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are members of the group: a lookup by key, whatever the group's size."""
        found: set[str] = set()
        async with self.dialect.access() as conn:
            for chunk in self.dialect.chunks(ids):
                among, params = self.dialect.among("member_id", chunk)
                recs = await conn.fetch(
                    f"SELECT member_id FROM members WHERE app = ? AND group_id = ? AND {among}", app, group_id, *params
                )
                found.update(rec["member_id"] for rec in recs)
        return found

    async def members_of_many(self, app: str, group_ids: Sequence[str]) -> dict[str, list[Member]]:
        """Each group's members, in the order they joined: one query for a whole page of groups."""
        return await self._related(
            app, group_ids, "group_id", "member_id", "m.member_type", f"COALESCE(NULLIF(m.display, ''), {self._label})"
        )

    async def groups_of_many(self, app: str, member_ids: Sequence[str]) -> dict[str, list[Member]]:
        """Each resource's groups: one query for a whole page of users (no query per user)."""
        return await self._related(app, member_ids, "member_id", "group_id", "'Group'", self._label)

    async def _related(
        self, app: str, ids: Sequence[str], own: str, other: str, kind: str, display: str
    ) -> dict[str, list[Member]]:
        """For each of `ids` (the `own` end of membership rows), the `other` ends, with their type and display."""
        out: dict[str, list[Member]] = {}
        async with self.dialect.access() as conn:
            for chunk in self.dialect.chunks(ids):
                among, params = self.dialect.among(f"m.{own}", chunk)
                recs = await conn.fetch(
                    f"SELECT m.{own} AS own, m.{other} AS other, {kind} AS kind, {display} AS display FROM members m"
                    f" JOIN resources r ON r.id = m.{other} WHERE m.app = ? AND {among} ORDER BY {self.dialect.member_order}",
                    app,
                    *params,
                )
                for rec in recs:
                    out.setdefault(rec["own"], []).append(Member(rec["other"], rec["kind"], rec["display"]))
        return out

    async def query(self, app: str, rtype: str, query: Query) -> tuple[int, list[Row]]:
        """How many resources of `rtype` match, and the page of them the query asks for."""
        sql = SqlQuery(self.dialect)
        where = "r.app = ? AND r.type = ? AND r.state = 'active'"
        if query.where is not None:
            where += " AND " + sql.where(query.where)
        params = [app, rtype, *sql.params]
        order = sql.order(query.sort)  # no parameters: key paths are literals
        async with self.dialect.access() as conn:
            count = await conn.fetchrow(f"SELECT count(*) AS n FROM resources r WHERE {where}", *params)
            assert count is not None
            rows: list[Row] = []
            if query.count is None or query.count > 0:
                limit = self.dialect.no_limit if query.count is None else query.count
                recs = await conn.fetch(
                    f"SELECT r.* FROM resources r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                    *params,
                    limit,
                    max(query.start_index, 1) - 1,
                )
                rows = [self._row(rec) for rec in recs]
        return count["n"], rows


__all__ = ["Store"]
