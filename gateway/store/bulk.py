"""Many creates claimed, and settled, in one store transaction each: a Bulk import's store work, in set statements.

The same rows and journal entries as `begin_create` and `settle_create` one by one, and the same outcome for
each create: a name taken (by another resource, or by an earlier create of the batch) refuses that create
alone, found by one look-up of every name first (SQLite holds the file's write lock from BEGIN; on PostgreSQL
a peer that takes a name between the look-up and the insert fails the set statement, and the creates are
claimed one by one instead). Rows go in with multi-row INSERTs and executemany: no savepoint, no statement
per create. A store whose settles add to the transaction (the hub's outbox) settles one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import Gone, NativeConflict, Row, UniqueConflict
from .dialect import Conn, Dialect, Duplicate

ROWS_PER_INSERT = 100  # journal rows in one INSERT ... VALUES (...), (...) (7 parameters each)


@dataclass(slots=True)
class NewCreate:
    """One create of a batch, as `begin_create` takes it."""

    rid: str
    unique_key: str
    data: dict[str, Any]
    payload: dict[str, Any]


class BulkWrites:
    """Mixed into Store, which has the dialect and the one-by-one calls this falls back to."""

    dialect: Dialect
    settles_add = False  # a store whose settles add to the transaction (the hub's outbox) settles one by one

    async def begin_create_many(self, app: str, rtype: str, creates: Sequence[NewCreate], now: str) -> list[int | UniqueConflict]:
        """Journal every create and hold its name, in one transaction: for each, its journal entry's number or
        UniqueConflict (its name is taken, by another resource or by an earlier create of these)."""
        try:
            return await self.dialect.transaction(lambda conn: self._claim_all(conn, app, rtype, creates, now))
        except _Raced:  # a peer took a name after the look-up (PostgreSQL): one by one, each in its own savepoint
            out: list[int | UniqueConflict] = []
            store: Any = self  # the Store this is mixed into
            async with store.batch():
                for c in creates:
                    try:
                        out.append(await store.begin_create(app, rtype, c.rid, c.unique_key, c.data, now, c.payload))
                    except UniqueConflict as exc:
                        out.append(exc)
            return out

    async def _claim_all(
        self, conn: Conn, app: str, rtype: str, creates: Sequence[NewCreate], now: str
    ) -> list[int | UniqueConflict]:
        d = self.dialect
        taken: set[str] = set()
        keys = list({c.unique_key for c in creates})
        for chunk in d.chunks(keys):
            among, params = d.among("unique_key", chunk)
            recs = await conn.fetch(
                f"SELECT unique_key FROM resources WHERE app = ? AND type = ? AND {among}", app, rtype, *params
            )
            taken.update(r["unique_key"] for r in recs)
        out: list[int | UniqueConflict | None] = []
        fresh: list[NewCreate] = []
        for c in creates:
            if c.unique_key in taken:
                out.append(UniqueConflict(f"unique key {c.unique_key!r} is taken"))
                continue
            taken.add(c.unique_key)
            fresh.append(c)
            out.append(None)
        seqs: dict[str, int] = {}
        for start in range(0, len(fresh), ROWS_PER_INSERT):
            part = fresh[start : start + ROWS_PER_INSERT]
            values = ", ".join([f"({d.clock}, ?, ?, ?, 'create', 'pending', ?)"] * len(part))
            row_params: list[Any] = []
            for c in part:
                row_params += [app, rtype, c.rid, d.encode({**c.payload, "unique_key": c.unique_key})]
            recs = await conn.fetch(
                f"INSERT INTO journal (at, app, type, resource_id, op, state, payload) VALUES {values} RETURNING seq, resource_id",
                *row_params,
            )
            seqs.update((r["resource_id"], r["seq"]) for r in recs)
        try:
            await conn.executemany(
                "INSERT INTO resources (app, type, id, unique_key, created, last_modified, data, state, pending_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?)",
                [(app, rtype, c.rid, c.unique_key, now, now, d.encode(c.data), seqs[c.rid]) for c in fresh],
            )
        except Duplicate as exc:
            raise _Raced from exc  # the transaction is rolled back; begin_create_many claims one by one
        answers = iter(seqs[c.rid] for c in fresh)
        return [next(answers) if o is None else o for o in out]

    async def settle_create_many(self, settles: Sequence[tuple[int, str, dict[str, Any]]]) -> list[Row | NativeConflict]:
        """Settle many creates (journal number, the app's native id, the copy) in one transaction: for each, its row
        or NativeConflict (another resource, or an earlier settle of these, has that record). Gone when any entry is
        not pending (a peer's recovery took it): then none is settled."""
        if self.settles_add:
            return await self._settle_one_by_one(settles)
        try:
            return await self.dialect.transaction(lambda conn: self._settle_all(conn, settles))
        except _Raced:
            return await self._settle_one_by_one(settles)

    async def _settle_one_by_one(self, settles: Sequence[tuple[int, str, dict[str, Any]]]) -> list[Row | NativeConflict]:
        out: list[Row | NativeConflict] = []
        store: Any = self
        async with store.batch():
            for seq, native_id, data in settles:
                try:
                    out.append(await store.settle_create(seq, native_id, data, []))
                except NativeConflict as exc:
                    out.append(exc)
        return out

    async def _settle_all(self, conn: Conn, settles: Sequence[tuple[int, str, dict[str, Any]]]) -> list[Row | NativeConflict]:
        d = self.dialect
        entries: dict[int, Any] = {}
        for chunk in d.chunks([seq for seq, _, _ in settles]):
            among, params = d.among_numbers("seq", chunk)
            recs = await conn.fetch(
                f"SELECT seq, app, type, resource_id FROM journal WHERE state = 'pending' AND {among}{d.for_update}", *params
            )
            entries.update((r["seq"], r) for r in recs)
        if len(entries) != len({seq for seq, _, _ in settles}):
            raise Gone("a journal entry of the batch is not pending")
        linked: set[tuple[str, str, str]] = set()
        for (app, rtype), natives in _by_kind(entries, settles).items():
            for names in d.chunks(natives):
                among, params = d.among("native_id", names)
                recs = await conn.fetch(
                    f"SELECT native_id FROM resources WHERE app = ? AND type = ? AND {among}", app, rtype, *params
                )
                linked.update((app, rtype, r["native_id"]) for r in recs)
        out: list[Row | NativeConflict | None] = []
        done: list[tuple[int, str, dict[str, Any]]] = []
        for seq, native_id, data in settles:
            entry = entries[seq]
            key = (entry["app"], entry["type"], native_id)
            if key in linked:
                out.append(NativeConflict(f"native id {native_id!r} is linked already"))
                continue
            linked.add(key)
            done.append((seq, native_id, data))
            out.append(None)
        try:
            await conn.executemany(
                "UPDATE resources SET native_id = ?, data = ?, state = 'active', pending_seq = NULL WHERE id = ?",
                [(native_id, d.encode(data), entries[seq]["resource_id"]) for seq, native_id, data in done],
            )
        except Duplicate as exc:
            raise _Raced from exc
        await conn.executemany("UPDATE journal SET state = 'done' WHERE seq = ?", [(seq,) for seq, _, _ in done])
        rows: dict[str, Row] = {}
        by_id = {entries[seq]["resource_id"]: data for seq, _, data in done}
        for ids in d.chunks(list(by_id)):
            among, params = d.among("id", ids)
            recs = await conn.fetch(
                f"SELECT app, type, id, native_id, unique_key, version, created, last_modified, state FROM resources WHERE {among}",
                *params,
            )
            for r in recs:  # the copy as given: no need to read back and decode what was just written
                rows[r["id"]] = Row(
                    r["app"], r["type"], r["id"], r["native_id"], r["unique_key"], r["version"], r["created"],
                    r["last_modified"], by_id[r["id"]], r["state"],
                )  # fmt: skip
        answers = iter(rows[entries[seq]["resource_id"]] for seq, _, _ in done)
        return [next(answers) if o is None else o for o in out]


class _Raced(Exception):
    """A set statement met a unique key a peer wrote after the look-up: the transaction is rolled back."""


def _by_kind(entries: dict[int, Any], settles: Sequence[tuple[int, str, dict[str, Any]]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for seq, native_id, _ in settles:
        out.setdefault((entries[seq]["app"], entries[seq]["type"]), []).append(native_id)
    return out


__all__ = ["BulkWrites", "NewCreate"]
