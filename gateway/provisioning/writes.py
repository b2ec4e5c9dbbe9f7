"""Writes of one resource: create, replace (PUT), patch, delete, each through the write pipeline.

Each validates and translates first (nothing touched yet), then claims, calls the app, reads back and
settles. Writes to one resource are serialized: in this process by a lock, across processes by the claim
and its version check (a write that loses the race recomputes on the new version, or is refused with
If-Match). What deactivate means is the mapping's: a field, the app's own disable call, or deleting the
app's record (and creating it again on reactivation).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ..connectors.base import WRITE_KEY
from ..connectors.errors import AppBadResponse, AppError, AppNotFound
from ..mapping.compile import CompiledResource
from ..mapping.translate import read_rule
from ..store import Member, NativeConflict, Row, VersionMismatch
from ..store import query as q
from .context import Context, copy_of, write_only_values
from .errors import BadAnswer, Invalid, NotFound, Stale, Unavailable
from .membership import UserFieldMembership
from .reads import Reads
from .resource import Resource

VERSION_RETRIES = 20


log = logging.getLogger(__name__)


class Writes:
    def __init__(self, ctx: Context, reads: Reads) -> None:
        self.ctx = ctx
        self.reads = reads
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, rid: str) -> asyncio.Lock:
        lock = self._locks.get(rid)
        if lock is None:
            lock = self._locks[rid] = asyncio.Lock()
        return lock

    async def _answer(self, cres: CompiledResource, row: Row, members: bool = True) -> Resource:
        return Resource(row, row.data, await self.reads.related(cres.name, row.id) if members else None)

    # ------------------------------------------------------------------ create

    async def create(self, kind: str, resource: dict[str, Any]) -> Resource:
        ctx = self.ctx
        cres = ctx.resource(kind)
        unique_key = ctx.unique_key(cres, resource)
        members = await ctx.members_for_write(resource) if cres.name == "Group" else []
        if members and not cres.members:
            raise Invalid("members: this app's mapping does not manage group membership")
        record = await ctx.create_record(cres, resource)
        data = copy_of(cres, resource)
        rid = str(uuid.uuid4())
        secrets = write_only_values(cres, resource, record)

        async def call() -> str | None:
            if resource.get("active") is False and cres.deactivate.via == "delete":
                return None  # an inactive account has no record in this app until it is activated
            key = WRITE_KEY.set(rid)  # the app's idempotency key, where it takes one: recovery sends the same
            try:
                native_id: str = await ctx.memberships[kind].create(record, await ctx.natives(members))
            except AppBadResponse as exc:
                native_id = await self._created_anyway(cres, resource, exc)
            finally:
                WRITE_KEY.reset(key)
            if resource.get("active") is False:
                await self.set_active(cres, native_id, False)
            return native_id

        async def settle(native_id: str | None) -> Row:
            settled = data if native_id is None else await self.reads.read_back(cres, native_id, data)
            try:
                return await ctx.pipeline.settle_create(seq, native_id, settled, members)
            except NativeConflict:
                # The app answered with an id another resource already has: it did not create a new record.
                await ctx.pipeline.abort(seq, "app returned a native id that is already linked")
                raise BadAnswer(f"creating {kind}: the app returned the id of an existing record") from None

        # Admitted by the breaker before the claim: a write it refuses leaves no journal entry.
        async with ctx.pipeline.admitted(f"creating {kind}"):
            seq = await ctx.pipeline.claim_create(
                kind,
                rid,
                unique_key,
                data,
                name=ctx.unique_name(cres, resource),
                members=members,
                secret=bool(secrets),
                keyed=kind in ctx.connector.caps.idempotent_create,
            )
            row = await ctx.pipeline.run(seq, f"creating {kind}", call, settle, secrets)
        return await self._answer(cres, row)

    async def _created_anyway(self, cres: CompiledResource, resource: dict[str, Any], exc: AppBadResponse) -> str:
        """A create the app answered with something unreadable (no id where the mapping says, a body cut short)
        may have made the record: find it by the match attribute, as recovery does, and link it, rather than
        leave an orphan in the app; if it cannot be found, say where to look."""
        ctx = self.ctx
        value = read_rule(resource, cres.match_rule)
        try:
            found = await ctx.find_by_match(cres, value)
        except AppError:
            found = None
        if found is not None and len(found) == 1 and await ctx.store.by_native(ctx.app, cres.name, found[0][0]) is None:
            log.warning(
                "%s: the app's answer to creating %s could not be read (%s); linked its record %s, found by %s",
                ctx.app,
                cres.name,
                exc.detail,
                found[0][0],
                cres.match_rule.resolved,
            )
            return found[0][0]
        if found == []:
            raise exc  # the app holds no such record: nothing was created
        where = f"{cres.match_rule.field} = {value!r}"
        log.error("%s: creating %s: %s; the app may hold an orphan record at %s", ctx.app, cres.name, exc.detail, where)
        raise AppBadResponse(f"{exc.detail}; the app may have created the record: look for {where}") from None

    # ------------------------------------------------------------------ updates

    async def replace(
        self, kind: str, rid: str, resource: dict[str, Any], if_match: int | None = None, *, with_members: bool = True
    ) -> Resource:
        """PUT: the resource becomes `resource`; membership is replaced only when the body names `members`."""
        return await self._update(kind, rid, lambda _current: resource, if_match, replace_members=with_members)

    async def patch(
        self,
        kind: str,
        rid: str,
        apply: Callable[[dict[str, Any]], dict[str, Any]],
        if_match: int | None = None,
        *,
        member_changes: dict[str, dict[str, Any] | None] | None = None,
        with_members: bool = True,
    ) -> Resource:
        """PATCH by `apply` on the whole resource, or, for a Group PATCH that only adds or removes members
        (`member_changes`: id -> member to add, or None to remove), on just those members: the same result,
        whatever the group's size. `with_members=False`: the answer will not show members, so they are not read."""
        if member_changes is not None and kind == "Group" and self.ctx.resource(kind).members is not None:
            return await self._patch_members(kind, rid, member_changes, if_match, with_members)
        return await self._update(kind, rid, apply, if_match, replace_members=True)

    async def _current(self, kind: str, rid: str, if_match: int | None) -> Row:
        """The resource to update: NotFound when it does not exist, Stale when If-Match names another version."""
        row = await self.ctx.store.get(self.ctx.app, kind, rid)
        if row is None:
            raise NotFound(f"{kind} {rid} not found")
        if if_match is not None and row.version != if_match:
            raise Stale(f"{kind} {rid} has changed", row.version)
        return row

    async def _claim_at(self, row: Row, if_match: int | None, **kwargs: Any) -> tuple[int, Row] | None:
        """Claim the resource for an update computed on `row`'s version; None when another write got in first
        (the caller recomputes), Stale when the client named that version (If-Match)."""
        try:
            return await self.ctx.pipeline.claim(row.type, row.id, "update", if_match=row.version, **kwargs)
        except VersionMismatch:
            if if_match is not None:
                raise Stale(f"{row.type} {row.id} has changed") from None
            return None

    async def _optimistic(
        self, kind: str, rid: str, if_match: int | None, attempt: Callable[[Row], Awaitable[Resource | None]]
    ) -> Resource:
        """Run `attempt` on the resource as it is now until no other write overtakes it (None: overtaken; bounded)."""
        async with self._lock(rid):
            for _attempt in range(VERSION_RETRIES):
                done = await attempt(await self._current(kind, rid, if_match))
                if done is not None:
                    return done
            raise Unavailable(f"{kind} {rid} is changing too often to update; retry", 2)

    async def _patch_members(
        self, kind: str, rid: str, changes: dict[str, dict[str, Any] | None], if_match: int | None, with_members: bool
    ) -> Resource:
        ctx = self.ctx
        cres = ctx.resource(kind)

        async def attempt(row: Row) -> Resource | None:
            present = await ctx.store.member_ids_among(ctx.app, rid, list(changes))
            wanted = await ctx.members_for_write({"members": [item for item in changes.values() if item is not None]})
            add = [m for m in wanted if m.id not in present]
            remove = [Member(i, "User", None) for i, item in changes.items() if item is None and i in present]
            # A member the IdP removes that the copy does not list may still be in the app (added there by hand):
            # it is removed there too, at the cost of the change whatever the group's size. The copy does not
            # change, so this call needs no claim; the app takes the removal of one it lacks as done.
            unlisted = [i for i, item in changes.items() if item is None and i not in present]
            if unlisted and row.native_id is not None:
                await self._remove_in_app(cres, row.native_id, unlisted)
            if not add and not remove:
                return await self._answer(cres, row, with_members)
            async with ctx.pipeline.admitted(f"updating {cres.name} {rid}"):
                claim = await self._claim_at(
                    row,
                    if_match,
                    new_unique_key=row.unique_key,
                    payload={"add": [m.id for m in add], "remove": [m.id for m in remove], "intent": row.data},
                )
                if claim is None:
                    return None
                seq, claimed = claim
                # No record change: the app is asked only to add and remove these members.
                written = await self._apply(cres, seq, claimed, {}, row.data, row.unique_key, add, remove)
            return await self._answer(cres, written, with_members)

        return await self._optimistic(kind, rid, if_match, attempt)

    async def _remove_in_app(self, cres: CompiledResource, group_native: str, member_ids: list[str]) -> None:
        ctx = self.ctx
        natives = await ctx.natives([Member(i, "User", None) for i in member_ids])
        if natives:
            await ctx.call(
                f"removing members of {cres.name}", lambda: ctx.memberships[cres.name].write(group_native, {}, [], natives)
            )

    async def _update(
        self,
        kind: str,
        rid: str,
        compute: Callable[[dict[str, Any]], dict[str, Any]],
        if_match: int | None,
        *,
        replace_members: bool,
    ) -> Resource:
        ctx = self.ctx
        cres = ctx.resource(kind)

        async def attempt(row: Row) -> Resource | None:
            # Start from what the app holds now, not only the copy: a change made in the app (or a reference it
            # cleared) must not be reverted by a PATCH about something else.
            live = await self.reads.live_data(cres, row)
            current = {"id": row.id, **copy.deepcopy(live)}
            old_members: list[Member] = []
            copied: list[Member] = []
            if cres.name == "Group":
                copied = await ctx.store.members(ctx.app, rid)
                in_app = await self.reads.app_members(cres, row)
                old_members = copied if in_app is None else in_app  # the app's members where it can be asked
                if old_members:
                    current["members"] = [{"value": m.id, "type": m.type} for m in old_members]
            new = compute(current)
            unique_key = ctx.unique_key(cres, new)
            add: list[Member] = []
            remove: list[Member] = []
            if cres.name == "Group" and replace_members:
                wanted = await ctx.members_for_write(new)
                if wanted and not cres.members:
                    raise Invalid("members: this app's mapping does not manage group membership")
                old_ids, new_ids = {m.id for m in old_members}, {m.id for m in wanted}
                add = [m for m in wanted if m.id not in old_ids]
                remove = [m for m in old_members if m.id not in new_ids]
            # The copy follows the app: members the app dropped leave it, and ones it had that stay join it.
            copy_ids = {m.id for m in copied}
            app_ids = {m.id for m in old_members}
            kept = {m.id for m in wanted} if cres.name == "Group" and replace_members else app_ids
            copy_fix = (
                [m for m in old_members if m.id not in copy_ids and m.id in kept],
                [m.id for m in copied if m.id not in app_ids],
            )
            switch = None if current.get("active") is new.get("active") or new.get("active") is None else bool(new.get("active"))
            relink = _relink(cres, row, switch)
            # What the app is sent: the fields that change (for a record created again, every field it has).
            if relink == "create":
                record = await ctx.create_record(cres, new)
            else:
                record = await ctx.update_record(cres, current, new)
            data = copy_of(cres, new)
            given_write_only = bool(write_only_values(cres, new, {}))  # a password is a change though the copy has none
            if not add and not remove and not given_write_only and data == copy_of(cres, current) and not any(copy_fix):
                # Nothing to change: no app call and no new version (beyond catching up with the app).
                return await self._answer(cres, await self.reads.sync_copy(cres, row, live))
            async with ctx.pipeline.admitted(f"updating {cres.name} {rid}"):
                claim = await self._claim_at(
                    row,
                    if_match,
                    new_unique_key=unique_key,
                    name=ctx.unique_name(cres, new),
                    # What the write means (the copy it leaves, the members it adds and removes): recovery finishes it.
                    payload={
                        "add": [m.id for m in add],
                        "remove": [m.id for m in remove],
                        "intent": data,
                        "switch": switch,
                        **({"relink": relink} if relink else {}),
                    },
                )
                if claim is None:
                    return None
                seq, claimed = claim
                written = await self._apply(cres, seq, claimed, record, data, unique_key, add, remove, switch, relink, copy_fix)
            return await self._answer(cres, written)

        return await self._optimistic(kind, rid, if_match, attempt)

    async def _apply(
        self,
        cres: CompiledResource,
        seq: int,
        row: Row,
        record: dict[str, Any],
        data: dict[str, Any],
        unique_key: str,
        add: list[Member],
        remove: list[Member],
        switch: bool | None = None,
        relink: str | None = None,
        copy_fix: tuple[list[Member], list[str]] = ([], []),
    ) -> Row:
        """The claimed update's app calls and settle; `copy_fix`: members the copy gains and loses to match the
        app, beyond what the calls change."""
        ctx = self.ctx
        native_id, rid = row.native_id, row.id

        async def call() -> str | None:
            if relink == "drop":
                assert native_id is not None
                try:
                    await ctx.connector.delete(cres.name, native_id)
                except AppNotFound:
                    pass
                return None
            if relink == "create":
                created: str = await ctx.memberships[cres.name].create(record, [])
                await self.rejoin_groups(rid, created)
                await self.repoint_references(cres.name, rid, created)
                return created
            if native_id is None:
                return None  # deactivated by deleting it in the app: only the gateway's copy changes
            await ctx.memberships[cres.name].write_whole(native_id, record, await ctx.natives(add), await ctx.natives(remove))
            if switch is not None:
                await self.set_active(cres, native_id, switch)
            return native_id

        async def settle(current_native: str | None) -> Row:
            settled = data if current_native is None else await self.reads.read_back(cres, current_native, data)
            try:
                return await ctx.pipeline.settle_update(
                    seq,
                    settled,
                    unique_key,
                    add_members=[*add, *copy_fix[0]],
                    remove_members=[m.id for m in remove] + copy_fix[1],
                    relink=relink is not None,
                    native_id=current_native,
                )
            except NativeConflict:
                await ctx.pipeline.abort(seq, "app returned a native id that is already linked")
                raise BadAnswer(f"re-creating {cres.name} {rid}: the app returned the id of an existing record") from None

        return await ctx.pipeline.run(seq, f"updating {cres.name} {rid}", call, settle, write_only_values(cres, {}, record))

    # ------------------------------------------------------------------ delete

    async def delete(self, kind: str, rid: str, if_match: int | None = None) -> None:
        ctx = self.ctx
        cres = ctx.resource(kind)
        async with self._lock(rid), ctx.pipeline.admitted(f"deleting {kind} {rid}"):
            try:
                seq, row = await ctx.pipeline.claim(kind, rid, "delete", if_match=if_match)
            except VersionMismatch:
                raise Stale(f"{kind} {rid} has changed") from None
            native_id = row.native_id

            async def call() -> None:
                await self.remove_from_app(cres, native_id, row.data)

            async def settle(_: None) -> None:
                await ctx.pipeline.settle_delete(seq)

            await ctx.pipeline.run(seq, f"deleting {kind} {rid}", call, settle)
        await self.reads.forget_references(kind, rid)

    async def remove_from_app(self, cres: CompiledResource, native_id: str | None, data: dict[str, Any]) -> None:
        """What a DELETE does in the app (the mapping's `delete`): the record deleted, or deactivated as `deactivate`
        says. Idempotent, so recovery sends it again for a delete cut short."""
        if native_id is None:
            return  # deactivated by deleting it in the app: nothing left there
        ctx = self.ctx
        try:
            if cres.delete_mode == "deactivate" and cres.deactivate.via == "delete":
                await ctx.connector.delete(cres.name, native_id)
            elif cres.delete_mode == "deactivate" and cres.deactivate.via == "action":
                await self.set_active(cres, native_id, False)
            elif cres.delete_mode == "deactivate":
                await ctx.connector.update(cres.name, native_id, await ctx.record(cres, {**data, "active": False}))
            else:
                await ctx.connector.delete(cres.name, native_id)
        except AppNotFound:
            pass  # already gone in the app: the delete's goal holds

    # ------------------------------------------------------------------ what deactivation means in this app

    async def set_active(self, cres: CompiledResource, native_id: str, active: bool) -> None:
        """`deactivate: {via: action}`: the app's own disable / enable call (a field rule needs nothing more)."""
        if cres.deactivate.via != "action":
            return
        action = cres.deactivate.enable if active else cres.deactivate.disable
        assert action is not None
        await self.ctx.connector.action(cres.name, native_id, action)

    async def repoint_references(self, kind: str, rid: str, native_id: str) -> None:
        """A resource created again in the app (reactivation): the records whose copies refer to it (a manager)
        and that the app was sent none for while it had no record get the reference back."""
        ctx = self.ctx
        for holder in ctx.mapping.resources.values():
            for rule in holder.rules:
                if rule.rule.ref != kind or not rule.writes:
                    continue
                _total, rows = await ctx.store.query(
                    ctx.app, holder.name, q.Query(where=q.Compare(q.Field(rule.resolved.keys), "eq", rid))
                )
                for row in rows:
                    if row.native_id is None or row.state != "active" or row.id == rid:
                        continue
                    value = rule.to_app(value=native_id, resource=row.data) if rule.to_app is not None else native_id
                    await ctx.connector.update(holder.name, row.native_id, {rule.field: value})
                    log.info("%s: %s %s refers to %s %s again in the app", ctx.app, holder.name, row.id, kind, rid)

    async def rejoin_groups(self, rid: str, native_id: str) -> None:
        """A user created again in the app (reactivation) rejoins the groups the gateway still lists it in."""
        ctx = self.ctx
        groups = ctx.memberships.get("Group")
        if groups is None:
            return
        listed = [g.id for g in await ctx.store.groups_of(ctx.app, rid)]
        found = await ctx.store.native_ids(ctx.app, "Group", listed)
        natives = [native for g in listed if g in found and (native := found[g][1]) is not None]
        if isinstance(groups, UserFieldMembership):
            # The list lives on the re-created record itself: one update sets it, not one edit per group.
            if natives:
                await ctx.connector.update("User", native_id, {groups.field: groups.ids.render(natives)})
            return
        for group_native in natives:
            await groups.write(group_native, {}, [("User", native_id)], [])


def _relink(cres: CompiledResource, row: Row, switch: bool | None) -> str | None:
    """`deactivate: {via: delete}`: "drop" the app's record on deactivation, "create" it again on reactivation."""
    if cres.deactivate.via != "delete":
        return None
    if switch is False and row.native_id is not None:
        return "drop"
    if switch is True and row.native_id is None:
        return "create"
    return None


__all__ = ["Writes"]
