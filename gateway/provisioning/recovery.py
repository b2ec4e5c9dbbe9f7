"""Recovery: settle every write a crash left pending, from what the app shows happened and what the journal meant.

A create is linked to the app's record if the app has it (found by the mapping's `match` attribute) and
rolled back if not; an update whose journal entry keeps its intent (the copy it was to leave) is settled with
that intent when the app's record shows it took effect, and sent again (state-based, so idempotent) when it
did not; a delete is finished or undone; a deactivation by deletion (or reactivation by re-creation) cut short
is finished if the app shows it happened. A group's member change whose effect the app cannot list is applied
again (adding a member twice, or removing one that is gone, is no change) and settled by its intent.

An entry recovery cannot decide (the app fails, or cannot tell) is postponed with backoff: the journal counts
the attempts and keeps the reason, a log line names it, `Store.undecided` lists it, and an operator can settle
it with `scim-gateway pending settle`. Run at start-up (every pending entry is stale then, postponed or not)
and by a sweep while serving (entries older than a bound, due again, that this process is not working on).
Every write recovery finds the app performed gets an audit line saying so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..audit import AuditLog
from ..connectors.base import WRITE_KEY
from ..connectors.errors import AppConflict, AppError, AppInvalid, AppNotFound
from ..mapping.compile import CompiledResource
from ..mapping.translate import read_rule
from ..store import PARKED, ROLLED_BACK, Gone, Member, NativeConflict, Pending, Row, UniqueConflict
from .context import Context
from .errors import Invalid
from .pipeline import utc_now
from .writes import Writes

log = logging.getLogger(__name__)

RETRY_FIRST = 15.0  # seconds before an undecided entry is tried again; doubling per attempt
RETRY_MAX = 900.0
LATE_WINDOW = 3600.0  # how long after rolling back a create the sweep looks for a record the app made late


class Undecided(Exception):
    """Recovery cannot tell yet how a pending entry ended: it is postponed, with this reason."""


def retry_delay(attempts: int) -> float:
    """The backoff before the next try of an entry tried `attempts` times (1 after its first failed try)."""
    return min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, attempts - 1))


class Recovery:
    def __init__(self, ctx: Context, writes: Writes, audit: AuditLog | None = None) -> None:
        self.ctx = ctx
        self.writes = writes
        self.audit = audit

    async def recover(self, older_than: float | None = None, *, due: bool = False) -> int:
        """Settle what is pending; how many entries were settled. `due`: leave the postponed ones not due yet.

        An entry that settles to a unique name another pending entry still holds (a rename cut short, and a
        create of the name it was giving up) is tried again once the others are settled; entries that hold
        each other's names (renames that swap names) give them up together and are settled then.
        """
        ctx = self.ctx
        pending = await ctx.store.pending(ctx.app, older_than, due=due)
        todo = [e for e in pending if not ctx.pipeline.in_flight(e.seq, e.resource_id)]
        # Users first: a group's entry settles its members from the app's list, which cannot name a member whose
        # deactivation by deletion is pending (its record gone): settled first, the member is kept as recordless.
        todo.sort(key=lambda e: e.type == "Group")
        repaired = 0
        parked = False
        while todo:
            waiting: list[Pending] = []
            for entry in todo:
                try:
                    await self._recover_entry(entry)
                    repaired += 1
                except UniqueConflict:
                    waiting.append(entry)
                except Gone:
                    pass  # settled meanwhile by another process's recovery
                except Undecided as exc:
                    await self._postpone(entry, str(exc))
                except AppError as exc:
                    await self._postpone(entry, exc.detail)  # the app's failure in the connector's words
                except Exception as exc:
                    # One entry that cannot be repaired must not stop the others, nor the gateway from starting.
                    log.exception("%s: recovery of journal entry %s failed", ctx.app, entry.seq)
                    await self._postpone(entry, f"gateway error: {type(exc).__name__}")
            if len(waiting) == len(todo):
                if not parked and len(waiting) > 1 and await self._only_these_pending(waiting):
                    # Each waits for a name another of them holds: they give up their names at once, then settle.
                    parked = True
                    for entry in waiting:
                        await ctx.store.release_name(entry.seq)
                    todo = waiting
                    continue
                for entry in waiting:  # a name held by a write in flight (maybe in another process), or by a settled resource
                    await self._postpone(entry, f"the unique name it settles to is held by another {entry.type}")
                break
            todo = waiting
        if due:
            await self._late_creates()
        return repaired

    async def _only_these_pending(self, entries: list[Pending]) -> bool:
        """No other write of the app is pending (in flight here or in another process): the names these wait for
        are held by one another (or by settled resources), so giving them up cannot let a live write take one."""
        seqs = {e.seq for e in entries}
        return all(e.seq in seqs for e in await self.ctx.store.pending(self.ctx.app))

    async def _postpone(self, entry: Pending, reason: str) -> None:
        ctx = self.ctx
        delay = retry_delay(entry.attempts + 1)
        attempts = await ctx.store.postpone(entry.seq, reason, delay)
        log.warning(
            "%s: recovery cannot settle journal entry %s (%s %s %s) yet: %s; attempt %d, next in %g s"
            " (`scim-gateway pending list` lists it, `pending settle` settles it by hand)",
            ctx.app,
            entry.seq,
            entry.op,
            entry.type,
            entry.resource_id,
            reason,
            attempts,
            delay,
        )

    def _audit(self, op: str, kind: str, rid: str, seq: int, outcome: str, **extra: Any) -> None:
        """One audit line for a write recovery settled (the app performed it, or it was rolled back)."""
        if self.audit is not None:
            record = {"app": self.ctx.app, "actor": "recovery", "op": op, "resource_type": kind, "id": rid}
            self.audit.write({**record, "outcome": outcome, "journal_seq": seq, **extra, "pid": os.getpid()})

    async def _recover_entry(self, entry: Pending) -> None:
        """Settle or roll back one pending entry. Undecided: it cannot tell yet; UniqueConflict: wait for the others."""
        ctx = self.ctx
        if entry.op == "reconcile":
            # A reconcile fix of an account no resource manages, cut short: the next reconcile sees what is left.
            await ctx.store.end_fix(entry.seq, False, "recovery: cut short; the next reconcile finds what is left")
            return
        cres = ctx.mapping.resources.get(entry.type)
        row = await ctx.store.get_any(entry.resource_id)
        if row is not None and row.unique_key.startswith(PARKED):
            row.unique_key = entry.payload.get("new_unique_key", row.unique_key)  # it gave up its name: the one it claimed
        try:
            if cres is None or row is None:
                await ctx.pipeline.abort(entry.seq, "recovery: resource type or row no longer exists")
            elif entry.op == "create":
                await self._create(cres, entry, row)
            elif entry.op == "update":
                await self._update(cres, entry, row)
            elif entry.op == "delete":
                await self._delete(cres, entry.seq, row)
        except NativeConflict:
            # The record the match found is already linked to another resource: not ours to take.
            await ctx.pipeline.abort(entry.seq, "recovery: the matching app record belongs to another resource")
            self._audit(
                entry.op, entry.type, entry.resource_id, entry.seq, "rolled back by recovery: the app record is another's"
            )

    # ------------------------------------------------------------------ creates

    async def _create(self, cres: CompiledResource, entry: Pending, row: Row) -> None:
        ctx = self.ctx
        matches = await ctx.find_by_match(cres, read_rule(row.data, cres.match_rule))
        if matches is None:
            raise Undecided("cannot tell whether the create reached the app: its connector cannot search")
        if len(matches) == 1:
            native_id, app_record = matches[0]
            data = await ctx.overlay(cres, row.data, app_record)
            members = await self._created_members(cres, entry, native_id)
            await ctx.pipeline.settle_create(entry.seq, native_id, data, members)
            log.info("%s: recovery linked %s %s to the app's record %s", ctx.app, cres.name, row.id, native_id)
            self._audit(
                "create", cres.name, row.id, entry.seq, "settled by recovery: the app had created it", native_id=native_id
            )
        elif not matches and self._can_create_again(cres, entry, row):
            # The app makes one record per idempotency key: send the create again with the same key. It is made now,
            # or the app answers with the record it made (maybe of the dead process's call, arriving late): decided.
            native_id = await self._create_again(cres, entry, row)
            data = await self.writes.reads.read_back(cres, native_id, row.data)
            members = [Member(m["id"], m["type"]) for m in entry.payload.get("members", [])]
            await ctx.pipeline.settle_create(entry.seq, native_id, data, members)
            log.info("%s: recovery created %s %s again with its idempotency key: %s", ctx.app, cres.name, row.id, native_id)
            self._audit("create", cres.name, row.id, entry.seq, "settled by recovery: sent again with its idempotency key")
        elif not matches:
            await ctx.pipeline.abort(entry.seq, ROLLED_BACK)
            log.info("%s: recovery rolled back the unfinished create of %s %s", ctx.app, cres.name, row.id)
            self._audit("create", cres.name, row.id, entry.seq, "rolled back by recovery: the app has no such record")
        else:
            raise Undecided(f"the app holds {len(matches)} records matching its {cres.match_rule.resolved}")

    def _can_create_again(self, cres: CompiledResource, entry: Pending, row: Row) -> bool:
        """The app takes an idempotency key for this kind and the create was sent with one, the journal keeps all it
        sent (no password), and it was to make a record (an account created inactive, deactivated by deletion, has none)."""
        payload = entry.payload
        if cres.name not in self.ctx.connector.caps.idempotent_create or not payload.get("keyed") or payload.get("secret", True):
            return False  # the dead process's call carried no key (a Bulk batch, an older mapping): a second could double it
        return not (row.data.get("active") is False and cres.deactivate.via == "delete")

    async def _create_again(self, cres: CompiledResource, entry: Pending, row: Row) -> str:
        ctx = self.ctx
        record = await ctx.create_record(cres, row.data)
        members = await ctx.natives([Member(m["id"], m["type"]) for m in entry.payload.get("members", [])])
        key = WRITE_KEY.set(row.id)
        try:
            native_id: str = await ctx.memberships[cres.name].create(record, members)
        finally:
            WRITE_KEY.reset(key)
        if row.data.get("active") is False:
            await self.writes.set_active(cres, native_id, False)
        return native_id

    async def _created_members(self, cres: CompiledResource, entry: Pending, native_id: str) -> list[Member]:
        """A group created with members: as the app lists them; where it cannot list them, the intended ones, added
        again (adding a member twice is no change)."""
        ctx = self.ctx
        if cres.name != "Group" or not cres.members:
            return []
        try:
            return await ctx.members_from_app(native_id)
        except AppError as exc:
            intended = [Member(m["id"], m["type"]) for m in entry.payload.get("members", [])]
            log.warning(
                "%s: recovery cannot read the members of %s %s (%s): it adds the %d it was created with again",
                ctx.app,
                cres.name,
                entry.resource_id,
                exc.detail,
                len(intended),
            )
            natives = await ctx.natives(intended)
            if natives:
                await ctx.memberships[cres.name].write(native_id, {}, natives, [])
            return intended

    async def _late_creates(self) -> None:
        """A create the dead process had sent in full may be performed by the app after recovery rolled it back:
        look for such records (for an hour) and link them with the SCIM id the create was given, or report them."""
        ctx = self.ctx
        for entry in await ctx.store.rolled_back_creates(ctx.app, LATE_WINDOW):
            cres = ctx.mapping.resources.get(entry.type)
            data = entry.payload.get("data")
            if cres is None or not isinstance(data, dict):
                continue
            try:
                matches = await ctx.find_by_match(cres, read_rule(data, cres.match_rule))
            except AppError:
                continue  # the next sweep looks again
            if not matches or len(matches) != 1:
                continue
            native_id, record = matches[0]
            if await ctx.store.by_native(ctx.app, cres.name, native_id) is not None:
                await ctx.store.note(entry.seq, f"{ROLLED_BACK}; its late record {native_id} is linked to another resource")
                continue
            data = await ctx.overlay(cres, data, record)
            try:
                members = await ctx.members_from_app(native_id) if cres.name == "Group" and cres.members else []
                await ctx.store.link(
                    ctx.app, cres.name, entry.resource_id, native_id, entry.payload["unique_key"], data, utc_now(), members
                )
            except (UniqueConflict, AppError) as exc:
                why = "its name is another resource's now" if isinstance(exc, UniqueConflict) else exc.detail
                log.error(
                    "%s: the app created %s %s late, after recovery rolled back its create (%s): it is not linked (%s);"
                    " adopt it with `scim-gateway import` or delete it in the app",
                    ctx.app,
                    cres.name,
                    native_id,
                    entry.resource_id,
                    why,
                )
                await ctx.store.note(entry.seq, f"{ROLLED_BACK}; the app created it late as {native_id}, not linked: {why}")
                continue
            await ctx.store.note(entry.seq, f"{ROLLED_BACK}; the app created it late as {native_id}: linked by recovery")
            log.warning(
                "%s: the app created %s %s late; recovery linked it as %s", ctx.app, cres.name, native_id, entry.resource_id
            )
            self._audit("create", cres.name, entry.resource_id, entry.seq, "settled by recovery: created late by the app")

    # ------------------------------------------------------------------ updates

    async def _update(self, cres: CompiledResource, entry: Pending, row: Row) -> None:
        ctx = self.ctx
        seq, payload = entry.seq, entry.payload
        relink = payload.get("relink")
        if relink is not None:
            await self._relink(cres, seq, row, relink, payload.get("intent"))
            return
        if row.native_id is None:
            await ctx.pipeline.abort(seq, "recovery: only the gateway's copy was to change; the IdP retries the write")
            return
        if isinstance(payload.get("intent"), dict):
            await self._finish_update(cres, entry, row, row.native_id)
            return
        # Journaled without its intent (a user held while its group list is edited, or an older release).
        if not cres.reads_live:
            await ctx.pipeline.abort(seq, "recovery: the app cannot be read back; the unacknowledged update is dropped")
            return
        record = await ctx.connector.get(cres.name, row.native_id)
        if record is None:
            await ctx.pipeline.abort(seq, "recovery: the app no longer has the record")
            return
        data = await ctx.overlay(cres, row.data, record)
        members = None
        if cres.name == "Group" and cres.members:
            members = [*await ctx.members_from_app(row.native_id), *await ctx.recordless_members(row.id)]
        await ctx.pipeline.settle_update(seq, data, _key(cres, data, row.unique_key), replace_members=members)
        self._audit("update", cres.name, row.id, seq, "settled by recovery: as the app's record shows it")

    async def _finish_update(self, cres: CompiledResource, entry: Pending, row: Row, native_id: str) -> None:
        """Settle an update with what it meant: the app's record shows it took effect, or it is sent again."""
        ctx = self.ctx
        seq, payload = entry.seq, entry.payload
        intent: dict[str, Any] = payload["intent"]
        add = [Member(i, "User") for i in payload.get("add", [])]
        remove = [Member(i, "User") for i in payload.get("remove", [])]
        record = await ctx.connector.get(cres.name, native_id) if cres.reads_live else None
        if cres.reads_live and record is None:
            await ctx.pipeline.abort(seq, "recovery: the app no longer has the record")
            self._audit("update", cres.name, row.id, seq, "rolled back by recovery: the app no longer has the record")
            return
        took = record is not None and await ctx.overlay(cres, intent, record) == intent
        in_app: list[Member] | None = None
        if cres.name == "Group" and cres.members and cres.reads_live:  # `reads: cached`: the app's list is not read back
            try:
                in_app = await ctx.members_from_app(native_id)
            except AppError as exc:
                log.warning("%s: recovery cannot read the members of %s %s: %s", ctx.app, cres.name, row.id, exc.detail)
            if in_app is not None and (add or remove):
                listed = {m.id for m in in_app}
                took = took and all(m.id in listed for m in add) and not any(m.id in listed for m in remove)
        how = "the app's record shows it took effect"
        if not took or (in_app is None and (add or remove)):
            # Not (all) done, or the app cannot say: send it again. State-based (the fields from the copy before to
            # the intent; members added or removed), so what already happened is no change.
            changes = {} if took else await ctx.update_record(cres, row.data, intent)
            try:
                await ctx.memberships[cres.name].write(native_id, changes, await ctx.natives(add), await ctx.natives(remove))
                switch = payload.get("switch")
                if switch is not None and not took:
                    await self.writes.set_active(cres, native_id, bool(switch))
            except (AppConflict, AppInvalid, AppNotFound) as exc:
                await ctx.pipeline.abort(seq, f"recovery: sent again, the app refused it: {exc.detail}")
                self._audit("update", cres.name, row.id, seq, "rolled back by recovery: the app refused it", reason=exc.detail)
                return
            how = "sent again by recovery" if not took else "members applied again by recovery (the app cannot list them)"
            in_app = None if in_app is None else await ctx.members_from_app(native_id)
        await self._finish_write(cres, row, native_id)
        data = await self.writes.reads.read_back(cres, native_id, intent)
        key = _key(cres, data, row.unique_key)
        if in_app is not None:
            in_app += await ctx.recordless_members(row.id, add, remove)
            await ctx.pipeline.settle_update(seq, data, key, replace_members=in_app)
        else:
            await ctx.pipeline.settle_update(seq, data, key, add_members=add, remove_members=[m.id for m in remove])
        log.info("%s: recovery settled the update of %s %s (%s)", ctx.app, cres.name, row.id, how)
        self._audit("update", cres.name, row.id, seq, f"settled by recovery: {how}")

    async def _relink(self, cres: CompiledResource, seq: int, row: Row, relink: str, intent: Any = None) -> None:
        """A deactivation by deletion, or a reactivation by re-creation, cut short: finish it if the app shows it happened,
        with what the write meant (`intent`, the copy it leaves: the other attributes the PATCH changed too)."""
        ctx = self.ctx
        meant = intent if isinstance(intent, dict) else row.data
        if relink == "drop":
            assert row.native_id is not None
            if await ctx.connector.get(cres.name, row.native_id) is None:
                await self._finish_write(cres, row, row.native_id)
                data = {**meant, "active": False}
                await ctx.pipeline.settle_update(seq, data, _key(cres, data, row.unique_key), relink=True, native_id=None)
                self._audit("update", cres.name, row.id, seq, "settled by recovery: deactivated (the app deleted the record)")
            else:
                await ctx.pipeline.abort(seq, "recovery: the app still has the record; the deactivation did not happen")
            return
        matches = await ctx.find_by_match(cres, read_rule(meant, cres.match_rule))
        if matches and len(matches) == 1 and await ctx.store.by_native(ctx.app, cres.name, matches[0][0]) is None:
            native_id, record = matches[0]
            await self.writes.rejoin_groups(row.id, native_id)
            data = await ctx.overlay(cres, {**meant, "active": True}, record)
            await ctx.pipeline.settle_update(seq, data, _key(cres, data, row.unique_key), relink=True, native_id=native_id)
            self._audit("update", cres.name, row.id, seq, "settled by recovery: reactivated (the app re-created the record)")
        else:
            await ctx.pipeline.abort(seq, "recovery: the app has no re-created record; the reactivation did not happen")

    # ------------------------------------------------------------------ deletes

    async def _delete(self, cres: CompiledResource, seq: int, row: Row) -> None:
        ctx = self.ctx
        if row.native_id is None:
            await ctx.pipeline.settle_delete(seq)  # nothing of it is left in the app
        elif not cres.reads_live and cres.delete_mode == "delete":
            await ctx.connector.delete(cres.name, row.native_id)  # cannot look: finish it (idempotent)
            await self._finish_write(cres, row, row.native_id)
            await ctx.pipeline.settle_delete(seq)
        elif cres.delete_mode == "deactivate":
            # The record stays in the app either way: whether the deactivation happened cannot be told by it being
            # there. Send it again (idempotent), then settle: settling alone left an active record linked to nothing.
            await self.writes.remove_from_app(cres, row.native_id, row.data)
            await self._finish_write(cres, row, row.native_id)
            await ctx.pipeline.settle_delete(seq)
        elif await ctx.connector.get(cres.name, row.native_id) is None:
            await self._finish_write(cres, row, row.native_id)
            await ctx.pipeline.settle_delete(seq)
        else:
            await ctx.pipeline.abort(seq, "recovery: the app still has the record")
            return
        self._audit("delete", cres.name, row.id, seq, "settled by recovery: the delete is done in the app")

    async def _finish_write(self, cres: CompiledResource, row: Row, native_id: str) -> None:
        """A write settled as done in the app: the connector finishes what it does after the record's own call (an
        LDAP directory's member DNs still naming a renamed or deleted entry), from the record before (the copy's)."""
        try:
            before = await self.ctx.record(cres, row.data)
        except Invalid:
            before = {}  # the copy's record cannot be computed: the connector finishes what it can without it
        await self.ctx.connector.finish_write(cres.name, native_id, before)


def _key(cres: CompiledResource, data: dict[str, Any], default: str) -> str:
    value = data.get(cres.unique_attr)
    return value.lower() if isinstance(value, str) and value.strip() else default


__all__ = ["LATE_WINDOW", "RETRY_FIRST", "RETRY_MAX", "Recovery", "Undecided", "retry_delay"]
