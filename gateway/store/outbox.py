"""The hub's store: its directory is the resources of one reserved app name; each settled write of it adds, in
the same transaction, an outbox row per app the change affects; the links hub id <-> app SCIM id.

The store knows no SCIM and no assignment rule: `HubStore` asks a `Router` (given the resource's type, its
stored copy and the unique keys of the groups it is in) which apps the resource belongs in now, and adds the
apps it was in before (a link, an undelivered row) itself. One outbox row per (app, type, resource) means
"bring it to its current hub state in that app": a change while one is undelivered bumps `generation`, so a
worker that delivered an older state leaves the row pending (`done` checks the generation it took).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .correlation import Store
from .dialect import Conn, Dialect

#: Which apps a resource belongs in now: (type, stored copy, unique keys of the hub groups it is in) -> apps.
Router = Callable[[str, dict[str, Any], set[str]], set[str]]

_KEY = "app = ? AND type = ? AND resource_id = ?"


class LinkedElsewhere(Exception):
    """The app record is linked to another hub resource already."""


@dataclass(slots=True)
class OutboxEntry:
    """One due outbox row as a worker took it (its lease held)."""

    app: str
    type: str
    resource_id: str
    generation: int
    attempts: int
    name: str | None = None  # the resource's unique key when last queued (it outlives a delete in the hub)


@dataclass(slots=True)
class DeliveryState:
    """One (app, resource) as `hub status` shows it."""

    app: str
    type: str
    resource_id: str
    name: str | None  # the hub resource's unique key (None: deleted in the hub)
    state: str  # pending, done, dead
    attempts: int
    last_error: str | None
    last_at: float | None
    delivered_at: float | None
    changed: float
    app_id: str | None  # the resource's SCIM id in the app, when linked


class HubStore(Store):
    """The hub directory's store: a `Store` over the gateway store's own database connection (not opened twice)."""

    def __init__(self, dialect: Dialect, *, hub: str, router: Router, labels: Sequence[str] = ()) -> None:
        super().__init__(dialect, labels=labels)
        self.hub = hub
        self.router = router
        self._deleted_members: dict[int, list[str]] = {}  # journal seq -> members of a group being deleted
        self.listeners: list[Callable[[], None]] = []  # told after each settled hub write (wakes the workers)

    async def open(self) -> None:  # the gateway's Store opens and closes the shared database
        return None

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------------ the settle transaction's additions

    settles_add = True  # a batch's settles go one by one, through _entry and _done (store/bulk.py)

    async def _entry(self, conn: Conn, seq: int, state: str = "done", detail: str | None = None) -> Any:
        rec = await super()._entry(conn, seq, state, detail)
        if state == "done" and rec["type"] == "Group" and rec["op"] == "delete":
            # settle_delete drops the group's member rows before the entry is done: keep who they were.
            recs = await conn.fetch(
                "SELECT member_id FROM members WHERE app = ? AND group_id = ? AND member_type = 'User'",
                self.hub,
                rec["resource_id"],
            )
            self._deleted_members[seq] = [r["member_id"] for r in recs]
        return rec

    async def _done(self, conn: Conn, seq: int) -> None:
        await super()._done(conn, seq)
        entry = await conn.fetchrow("SELECT type, resource_id, op, payload FROM journal WHERE seq = ?", seq)
        assert entry is not None
        kind, rid, op = entry["type"], entry["resource_id"], entry["op"]
        payload = self.dialect.decode(entry["payload"])
        touched = {(kind, rid)}
        if kind == "Group":
            users = {*payload.get("add", []), *payload.get("remove", []), *self._deleted_members.pop(seq, [])}
            row = await conn.fetchrow("SELECT unique_key FROM resources WHERE id = ?", rid)
            renamed = row is not None and payload.get("old_unique_key") not in (None, row["unique_key"])
            if op == "create" or renamed:  # every member's assignment may follow the group's name
                recs = await conn.fetch("SELECT member_id FROM members WHERE app = ? AND group_id = ?", self.hub, rid)
                users.update(r["member_id"] for r in recs)
            kinds = await self._kinds(conn, users)
            touched.update((kinds.get(u, "User"), u) for u in users if kinds.get(u, "User") == "User")
        for k, r in sorted(touched):
            await self._enqueue_affected(conn, k, r)

    async def _kinds(self, conn: Conn, ids: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in self.dialect.chunks(sorted(ids)):
            among, params = self.dialect.among("id", chunk)
            for rec in await conn.fetch(f"SELECT id, type FROM resources WHERE app = ? AND {among}", self.hub, *params):
                out[rec["id"]] = rec["type"]
        return out

    async def _enqueue_affected(self, conn: Conn, kind: str, rid: str) -> None:
        """An outbox row for every app the resource is in now or was in before."""
        rec = await conn.fetchrow(
            "SELECT data, unique_key FROM resources WHERE id = ? AND app = ? AND type = ? AND state = 'active'",
            rid,
            self.hub,
            kind,
        )
        apps: set[str] = set()
        if rec is not None:
            groups = await conn.fetch(
                "SELECT r.unique_key AS k FROM members m JOIN resources r ON r.id = m.group_id WHERE m.app = ? AND m.member_id = ?",
                self.hub,
                rid,
            )
            apps = self.router(kind, self.dialect.decode(rec["data"]), {g["k"] for g in groups})
        before = await conn.fetch(
            "SELECT app FROM hub_links WHERE type = ? AND hub_id = ?"
            " UNION SELECT app FROM hub_outbox WHERE type = ? AND resource_id = ? AND state <> 'done'",
            kind,
            rid,
            kind,
            rid,
        )
        apps.update(r["app"] for r in before)
        for app in sorted(apps):
            await self._upsert(conn, app, kind, rid, None if rec is None else rec["unique_key"])

    async def _upsert(self, conn: Conn, app: str, kind: str, rid: str, name: str | None = None) -> None:
        clock = self.dialect.clock
        # A row already pending keeps its back-off (the app is failing); a delivered or dead one is due now.
        await conn.execute(
            f"INSERT INTO hub_outbox (app, type, resource_id, name, due, changed) VALUES (?, ?, ?, ?, {clock}, {clock})"
            " ON CONFLICT (app, type, resource_id) DO UPDATE SET generation = hub_outbox.generation + 1,"
            " attempts = CASE WHEN hub_outbox.state = 'pending' THEN hub_outbox.attempts ELSE 0 END,"
            " due = CASE WHEN hub_outbox.state = 'pending' THEN hub_outbox.due ELSE excluded.due END,"
            " name = COALESCE(excluded.name, hub_outbox.name), state = 'pending', changed = excluded.changed",
            app,
            kind,
            rid,
            name,
        )

    def _told(self) -> None:
        for listener in self.listeners:
            listener()

    async def settle_create(self, *args: Any, **kwargs: Any) -> Any:
        row = await super().settle_create(*args, **kwargs)
        self._told()
        return row

    async def settle_update(self, *args: Any, **kwargs: Any) -> Any:
        row = await super().settle_update(*args, **kwargs)
        self._told()
        return row

    async def settle_delete(self, seq: int) -> None:
        await super().settle_delete(seq)
        self._told()

    async def abort(self, seq: int, reason: str) -> None:
        self._deleted_members.pop(seq, None)
        await super().abort(seq, reason)

    async def refresh(self, app: str, rtype: str, rid: str, *args: Any, **kwargs: Any) -> Any:
        """A copy changed outside a write (a deleted manager dropped from its reports): deliver it too."""
        row = await super().refresh(app, rtype, rid, *args, **kwargs)
        if row is not None:
            await self._tx(lambda conn: self._enqueue_affected(conn, rtype, rid))
            self._told()
        return row

    async def _tx(self, work: Callable[[Conn], Awaitable[Any]]) -> Any:
        return await self.dialect.transaction(work)

    # ------------------------------------------------------------------ what the workers and the CLI ask

    async def enqueue(self, app: str, items: Sequence[tuple[str, str]]) -> None:
        """Rows for (type, hub id) in `app`, whatever the rules say (a sync, a reference now deliverable)."""

        async def work(conn: Conn) -> None:
            for kind, rid in items:
                await self._upsert(conn, app, kind, rid)

        if items:
            await self._tx(work)
            self._told()

    async def take(self, app: str, limit: int, lease: float) -> list[OutboxEntry]:
        """Up to `limit` due rows of `app`, leased for `lease` seconds. On PostgreSQL, rows another process is
        taking are skipped (SKIP LOCKED), so each is taken by one process; on SQLite the file lock serializes."""
        clock = self.dialect.clock
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect.for_update else ""

        async def work(conn: Conn) -> list[OutboxEntry]:
            recs = await conn.fetch(
                "SELECT app, type, resource_id, generation, attempts, name FROM hub_outbox"
                " WHERE app = ? AND state = 'pending'"
                f" AND due <= {clock} AND (lease_until IS NULL OR lease_until < {clock})"
                # Users before groups: a group's members are then in the app when it is delivered.
                f" ORDER BY due, type DESC LIMIT ?{lock}",
                app,
                limit,
            )
            for r in recs:
                await conn.execute(
                    f"UPDATE hub_outbox SET lease_until = {clock} + ? WHERE {_KEY}", lease, app, r["type"], r["resource_id"]
                )
            return [OutboxEntry(r["app"], r["type"], r["resource_id"], r["generation"], r["attempts"], r["name"]) for r in recs]

        taken: list[OutboxEntry] = await self._tx(work)
        return taken

    async def delivered(self, entry: OutboxEntry) -> bool:
        """Mark the row delivered, if no change came meanwhile (False: it stays pending, due now)."""
        clock = self.dialect.clock

        async def work(conn: Conn) -> bool:
            n = await conn.execute(
                f"UPDATE hub_outbox SET state = 'done', lease_until = NULL, attempts = 0, last_error = NULL,"
                f" delivered_at = {clock} WHERE {_KEY} AND generation = ?",
                entry.app,
                entry.type,
                entry.resource_id,
                entry.generation,
            )
            if n == 0:
                await conn.execute(
                    f"UPDATE hub_outbox SET lease_until = NULL WHERE {_KEY}", entry.app, entry.type, entry.resource_id
                )
            return n > 0

        done: bool = await self._tx(work)
        return done

    async def failed(self, entry: OutboxEntry, error: str, *, max_attempts: int, backoff: float, max_backoff: float) -> bool:
        """Count a failed delivery: due again after an exponential back-off with full jitter, or dead after
        `max_attempts` (unless a change came meanwhile). True when it is dead now."""
        attempts = entry.attempts + 1
        delay = random.uniform(0.5, 1.0) * min(max_backoff, backoff * 2 ** (attempts - 1))
        clock = self.dialect.clock

        async def work(conn: Conn) -> bool:
            rec = await conn.fetchrow(
                f"UPDATE hub_outbox SET attempts = attempts + 1, last_error = ?, last_at = {clock}, lease_until = NULL,"
                f" due = {clock} + ?, state = CASE WHEN attempts + 1 >= ? AND generation = ? THEN 'dead' ELSE 'pending' END"
                f" WHERE {_KEY} RETURNING state",
                error[:1000],
                delay,
                max_attempts,
                entry.generation,
                entry.app,
                entry.type,
                entry.resource_id,
            )
            return rec is not None and rec["state"] == "dead"

        dead: bool = await self._tx(work)
        return dead

    async def postpone_delivery(self, entry: OutboxEntry, seconds: float, why: str) -> None:
        """Not attempted (the app's circuit is open, its connector not open): due again later, no attempt spent."""
        clock = self.dialect.clock
        await self._tx(
            lambda conn: conn.execute(
                f"UPDATE hub_outbox SET lease_until = NULL, due = {clock} + ?, last_error = ?, last_at = {clock} WHERE {_KEY}",
                seconds,
                why[:1000],
                entry.app,
                entry.type,
                entry.resource_id,
            )
        )

    async def renew(self, entries: Sequence[OutboxEntry], lease: float) -> None:
        """Extend the leases of entries still being delivered (a live process keeps its own; a dead one's lapse)."""
        clock = self.dialect.clock

        async def work(conn: Conn) -> None:
            for e in entries:
                await conn.execute(
                    f"UPDATE hub_outbox SET lease_until = {clock} + ? WHERE {_KEY}", lease, e.app, e.type, e.resource_id
                )

        if entries:
            await self._tx(work)

    async def release_leases(self) -> int:
        """Free every lease: at the start of a process that is the store's only one, those are a dead process's."""
        n: int = await self._tx(
            lambda conn: conn.execute("UPDATE hub_outbox SET lease_until = NULL WHERE lease_until IS NOT NULL")
        )
        return n

    async def unsettled(self, app: str, kind: str, unique_key: str) -> bool:
        """Whether a write of `app` still in its journal (a create cut short, not yet recovered) holds this name."""
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(
                "SELECT 1 AS held FROM resources WHERE app = ? AND type = ? AND unique_key = ?"
                " AND (state <> 'active' OR pending_seq IS NOT NULL)",
                app,
                kind,
                unique_key,
            )
        return rec is not None

    # -- links

    async def link_of(self, app: str, kind: str, hub_id: str) -> str | None:
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow("SELECT app_id FROM hub_links WHERE app = ? AND type = ? AND hub_id = ?", app, kind, hub_id)
        return None if rec is None else str(rec["app_id"])

    async def links_of(self, app: str, kind: str, hub_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        async with self.dialect.access() as conn:
            for chunk in self.dialect.chunks(list(hub_ids)):
                among, params = self.dialect.among("hub_id", chunk)
                sql = f"SELECT hub_id, app_id FROM hub_links WHERE app = ? AND type = ? AND {among}"
                for rec in await conn.fetch(sql, app, kind, *params):
                    out[rec["hub_id"]] = rec["app_id"]
        return out

    async def hub_id_of(self, app: str, kind: str, app_id: str) -> str | None:
        """The hub resource an app record is linked to, if any (a link is one-to-one)."""
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow("SELECT hub_id FROM hub_links WHERE app = ? AND type = ? AND app_id = ?", app, kind, app_id)
        return None if rec is None else str(rec["hub_id"])

    async def set_link(self, app: str, kind: str, hub_id: str, app_id: str) -> None:
        """Link `hub_id` to the app record `app_id` (and forget the create in doubt). LinkedElsewhere when that
        record is linked to another hub resource: never two hub resources for one app record."""

        async def work(conn: Conn) -> None:
            other = await conn.fetchrow(
                "SELECT hub_id FROM hub_links WHERE app = ? AND app_id = ? AND NOT (type = ? AND hub_id = ?)",
                app,
                app_id,
                kind,
                hub_id,
            )
            if other is not None:
                raise LinkedElsewhere(f"{kind} {app_id} of app {app} is linked to hub resource {other['hub_id']} already")
            await conn.execute(
                "INSERT INTO hub_links (app, type, hub_id, app_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (app, type, hub_id) DO UPDATE SET app_id = excluded.app_id",
                app,
                kind,
                hub_id,
                app_id,
            )
            await conn.execute(f"UPDATE hub_outbox SET creating = NULL WHERE {_KEY}", app, kind, hub_id)

        await self._tx(work)

    async def creating_of(self, app: str, kind: str, hub_id: str) -> str | None:
        """The unique name of a create sent for `hub_id` and not linked yet (a kill may have cut it short)."""
        async with self.dialect.access() as conn:
            rec = await conn.fetchrow(f"SELECT creating FROM hub_outbox WHERE {_KEY}", app, kind, hub_id)
        return None if rec is None or rec["creating"] is None else str(rec["creating"])

    async def set_creating(self, app: str, kind: str, hub_id: str, name: str | None) -> None:
        """Before a create is sent: its unique name, durable (None: no create in doubt any more)."""
        await self._tx(lambda conn: conn.execute(f"UPDATE hub_outbox SET creating = ? WHERE {_KEY}", name, app, kind, hub_id))

    async def drop_link(self, app: str, kind: str, hub_id: str) -> None:
        await self._tx(
            lambda conn: conn.execute("DELETE FROM hub_links WHERE app = ? AND type = ? AND hub_id = ?", app, kind, hub_id)
        )

    # -- status, replay, sync

    async def status(self, user: str | None = None, app: str | None = None) -> list[DeliveryState]:
        """Every outbox row (one per app and resource), with its hub name and app id; `user`: a unique key (any case) or hub id."""
        where, params = ["1 = 1"], []
        if user is not None:
            where.append("(o.resource_id = ? OR (r.unique_key = ? AND o.type = 'User'))")
            params += [user, user.lower()]
        if app is not None:
            where.append("o.app = ?")
            params.append(app)
        return await self._states(" AND ".join(where), params, "o.type DESC, r.unique_key, o.resource_id, o.app")

    async def failing(self, limit: int) -> list[DeliveryState]:
        """The deliveries dead-lettered or failing and retried, the latest failure first (the admin page's list)."""
        where = "(o.state = 'dead' OR (o.state = 'pending' AND o.last_error IS NOT NULL))"
        return await self._states(where, [], f"o.last_at DESC LIMIT {int(limit)}")

    async def _states(self, where: str, params: list[Any], order: str) -> list[DeliveryState]:
        async with self.dialect.access() as conn:
            recs = await conn.fetch(
                "SELECT o.*, r.unique_key AS name, l.app_id AS app_id FROM hub_outbox o"
                " LEFT JOIN resources r ON r.id = o.resource_id AND r.app = ? AND r.state = 'active'"
                " LEFT JOIN hub_links l ON l.app = o.app AND l.type = o.type AND l.hub_id = o.resource_id"
                f" WHERE {where} ORDER BY {order}",
                self.hub,
                *params,
            )
        return [
            DeliveryState(
                r["app"],
                r["type"],
                r["resource_id"],
                r["name"],
                r["state"],
                r["attempts"],
                r["last_error"],
                r["last_at"],
                r["delivered_at"],
                r["changed"],
                r["app_id"],
            )
            for r in recs
        ]

    async def replay(self, app: str | None = None, user: str | None = None) -> int:
        """Dead rows back to pending, due now, attempts reset; how many."""
        where, params = ["state = 'dead'"], []
        if app is not None:
            where.append("app = ?")
            params.append(app)
        if user is not None:
            where.append(
                "(resource_id = ? OR resource_id IN (SELECT id FROM resources WHERE app = ? AND type = 'User' AND unique_key = ?))"
            )
            params += [user, self.hub, user.lower()]
        clock = self.dialect.clock
        n: int = await self._tx(
            lambda conn: conn.execute(
                f"UPDATE hub_outbox SET state = 'pending', attempts = 0, due = {clock}, lease_until = NULL WHERE {' AND '.join(where)}",
                *params,
            )
        )
        if n:
            self._told()
        return n

    async def hub_resources(self) -> list[tuple[str, str]]:
        """(type, id) of every hub resource, users first."""
        async with self.dialect.access() as conn:
            recs = await conn.fetch(
                "SELECT type, id FROM resources WHERE app = ? AND state = 'active' ORDER BY type DESC, seq", self.hub
            )
        return [(r["type"], r["id"]) for r in recs]


__all__ = ["DeliveryState", "HubStore", "LinkedElsewhere", "OutboxEntry", "Router"]
