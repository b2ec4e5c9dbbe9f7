"""Recovery: settle every write a crash left pending, from what the app shows happened.

A create is linked to the app's record if the app has it (found by the mapping's `match` attribute) and
rolled back if not; an update takes the app's record as it is now; a delete is finished or undone; a
deactivation by deletion (or reactivation by re-creation) cut short is finished if the app shows it
happened. Run at start-up (every pending entry is stale then) and by a sweep while serving (only entries
older than a bound that this process is not working on).
"""

from __future__ import annotations

import logging

from ..connectors.errors import AppError
from ..mapping.compile import CompiledResource
from ..mapping.translate import overlay, read_rule
from ..store import Member, NativeConflict, Pending, Row, UniqueConflict
from .context import Context
from .writes import Writes

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, ctx: Context, writes: Writes) -> None:
        self.ctx = ctx
        self.writes = writes

    async def recover(self, older_than: float | None = None) -> int:
        """Settle what is pending; how many entries were settled.

        An entry that settles to a unique name another pending entry still holds (a rename cut short, and a
        create of the name it was giving up) is tried again once the others are settled.
        """
        ctx = self.ctx
        todo = [e for e in await ctx.store.pending(ctx.app, older_than) if not ctx.pipeline.in_flight(e.seq)]
        repaired = 0
        while todo:
            waiting: list[Pending] = []
            for entry in todo:
                try:
                    if await self._recover_entry(entry):
                        repaired += 1
                except UniqueConflict:
                    waiting.append(entry)
                except AppError as exc:
                    log.warning("%s: recovery of journal entry %s postponed, the app failed: %s", ctx.app, entry.seq, exc.detail)
                except Exception:
                    # One entry that cannot be repaired must not stop the others, nor the gateway from starting.
                    log.exception("%s: recovery of journal entry %s failed; it is retried by the next sweep", ctx.app, entry.seq)
            if len(waiting) == len(todo):
                for entry in waiting:  # held by a write of another process, or names swapped crosswise: the next sweep
                    log.warning(
                        "%s: recovery of journal entry %s waits: the unique name of %s %s is held by another write",
                        ctx.app,
                        entry.seq,
                        entry.type,
                        entry.resource_id,
                    )
                break
            todo = waiting
        return repaired

    async def _recover_entry(self, entry: Pending) -> bool:
        """Settle or roll back one pending entry; False when it cannot tell yet. UniqueConflict: wait for the others."""
        ctx = self.ctx
        if entry.op == "reconcile":
            # A reconcile fix of an account no resource manages, cut short: the next reconcile sees what is left.
            await ctx.store.end_fix(entry.seq, False, "recovery: cut short; the next reconcile finds what is left")
            return True
        cres = ctx.mapping.resources.get(entry.type)
        row = await ctx.store.get_any(entry.resource_id)
        try:
            if cres is None or row is None:
                await ctx.pipeline.abort(entry.seq, "recovery: resource type or row no longer exists")
            elif entry.op == "create":
                return await self._create(cres, entry.seq, row)
            elif entry.op == "update":
                await self._update(cres, entry.seq, row, entry.payload.get("relink"))
            elif entry.op == "delete":
                await self._delete(cres, entry.seq, row)
        except NativeConflict:
            # The record the match found is already linked to another resource: not ours to take.
            await ctx.pipeline.abort(entry.seq, "recovery: the matching app record belongs to another resource")
        return True

    async def _create(self, cres: CompiledResource, seq: int, row: Row) -> bool:
        ctx = self.ctx
        matches = await ctx.find_by_match(cres, read_rule(row.data, cres.match_rule))
        if matches is None:
            log.warning("%s: cannot tell whether %s %s reached the app (its connector cannot search)", ctx.app, cres.name, row.id)
            return False
        if len(matches) == 1:
            native_id, app_record = matches[0]
            data = await overlay(cres, row.data, app_record, ctx.refs)
            members: list[Member] = []
            if cres.name == "Group" and cres.members:
                members = await ctx.members_from_app(native_id)
            await ctx.pipeline.settle_create(seq, native_id, data, members)
            log.info("%s: recovery linked %s %s to the app's record %s", ctx.app, cres.name, row.id, native_id)
        else:
            await ctx.pipeline.abort(seq, "recovery: the app has no such record")
            log.info("%s: recovery rolled back the unfinished create of %s %s", ctx.app, cres.name, row.id)
        return True

    async def _update(self, cres: CompiledResource, seq: int, row: Row, relink: str | None = None) -> None:
        ctx = self.ctx
        if relink is not None:
            await self._relink(cres, seq, row, relink)
            return
        if row.native_id is None:
            await ctx.pipeline.abort(seq, "recovery: only the gateway's copy was to change; the IdP retries the write")
            return
        if not cres.reads_live:
            # The app cannot be read back: the copy keeps what was acknowledged before; the IdP retries the write.
            await ctx.pipeline.abort(seq, "recovery: the app cannot be read back; the unacknowledged update is dropped")
            return
        record = await ctx.connector.get(cres.name, row.native_id)
        if record is None:
            await ctx.pipeline.abort(seq, "recovery: the app no longer has the record")
            return
        data = await overlay(cres, row.data, record, ctx.refs)
        unique_value = data.get(cres.unique_attr)
        unique_key = unique_value.lower() if isinstance(unique_value, str) else row.unique_key
        if cres.name == "Group" and cres.members:
            members = await ctx.members_from_app(row.native_id)
            await ctx.pipeline.settle_update(seq, data, unique_key, replace_members=members)
        else:
            await ctx.pipeline.settle_update(seq, data, unique_key)

    async def _relink(self, cres: CompiledResource, seq: int, row: Row, relink: str) -> None:
        """A deactivation by deletion, or a reactivation by re-creation, cut short: finish it if the app shows it happened."""
        ctx = self.ctx
        if relink == "drop":
            assert row.native_id is not None
            if await ctx.connector.get(cres.name, row.native_id) is None:
                await ctx.pipeline.settle_update(seq, {**row.data, "active": False}, row.unique_key, relink=True, native_id=None)
            else:
                await ctx.pipeline.abort(seq, "recovery: the app still has the record; the deactivation did not happen")
            return
        matches = await ctx.find_by_match(cres, read_rule(row.data, cres.match_rule))
        if matches and len(matches) == 1 and await ctx.store.by_native(ctx.app, cres.name, matches[0][0]) is None:
            native_id, record = matches[0]
            await self.writes.rejoin_groups(row.id, native_id)
            data = await overlay(cres, {**row.data, "active": True}, record, ctx.refs)
            await ctx.pipeline.settle_update(seq, data, row.unique_key, relink=True, native_id=native_id)
        else:
            await ctx.pipeline.abort(seq, "recovery: the app has no re-created record; the reactivation did not happen")

    async def _delete(self, cres: CompiledResource, seq: int, row: Row) -> None:
        ctx = self.ctx
        if row.native_id is None:
            await ctx.pipeline.settle_delete(seq)  # nothing of it is left in the app
        elif not cres.reads_live and cres.delete_mode == "delete":
            await ctx.connector.delete(cres.name, row.native_id)  # cannot look: finish it (idempotent)
            await ctx.pipeline.settle_delete(seq)
        elif cres.delete_mode == "deactivate" or await ctx.connector.get(cres.name, row.native_id) is None:
            await ctx.pipeline.settle_delete(seq)
        else:
            await ctx.pipeline.abort(seq, "recovery: the app still has the record")


__all__ = ["Recovery"]
