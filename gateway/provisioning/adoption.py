"""Adoption: records the app already has that no SCIM resource is linked to get a SCIM id, instead of a duplicate.

Three ways in: `scim-gateway import` (every record, `import_existing`), an IdP's lookup by unique name before
it creates (search.py), and a pushed-down filter that finds a record the gateway has never seen.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from ..mapping.compile import CompiledResource
from ..store import Member, Row, UniqueConflict
from .context import Context
from .errors import Unsupported
from .pipeline import utc_now

log = logging.getLogger(__name__)


class Adoption:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def link(self, cres: CompiledResource, native_id: str, record: dict[str, Any]) -> Row | None:
        """A new SCIM id for an app record the gateway has never linked, its attributes read from the record.

        None when the record has no unique name, or the name (or the record) is another resource's by now.
        """
        ctx = self.ctx
        data = await ctx.overlay(cres, {}, record)
        name = data.get(cres.unique_attr)
        if not isinstance(name, str) or not name.strip():
            return None
        members: list[Member] = []
        if cres.name == "Group" and cres.members:
            members = await ctx.call(
                f"reading the members of the app's group {native_id}", lambda: ctx.members_from_app(native_id)
            )
        try:
            row = await ctx.store.link(ctx.app, cres.name, str(uuid.uuid4()), native_id, name.lower(), data, utc_now(), members)
        except UniqueConflict:
            return None  # linked meanwhile by another request, or the name belongs to another resource
        log.info("%s: adopted the app's existing %s %s as %s", ctx.app, cres.name, native_id, row.id)
        groups = await ctx.listed_groups(cres, record)
        if groups:  # membership kept on the user: the groups its record lists that the gateway has linked
            row = await ctx.store.refresh(ctx.app, cres.name, row.id, row.data, utc_now(), None, None, groups) or row
        return row

    async def relink(self, cres: CompiledResource, row: Row, native_id: str, record: dict[str, Any], why: str) -> Row:
        """Point an existing resource whose app record is gone (or that has none) at the record its match attribute
        found (`reconcile --fix`), journaled as an update; its attributes are read from the record, as a link's.

        NotFound when the resource is gone or busy; the store's NativeConflict when the record is linked meanwhile.
        """
        ctx = self.ctx
        seq, claimed = await ctx.pipeline.claim(cres.name, row.id, "update", payload={"fix": why, "native_id": native_id})
        try:
            data = await ctx.overlay(cres, claimed.data, record)
            members = None
            if cres.name == "Group" and cres.members:
                members = await ctx.call(
                    f"reading the members of the app's group {native_id}", lambda: ctx.members_from_app(native_id)
                )
            settled = await ctx.pipeline.settle_update(
                seq, data, claimed.unique_key, relink=True, native_id=native_id, replace_members=members
            )
        except BaseException as exc:
            await ctx.pipeline.abort(seq, f"reconcile: linking failed: {type(exc).__name__}")
            raise
        log.info("%s: linked %s %s to the app's record %s (%s)", ctx.app, cres.name, row.id, native_id, why)
        groups = await ctx.listed_groups(cres, record)
        if groups is not None:
            settled = await ctx.store.refresh(ctx.app, cres.name, row.id, settled.data, utc_now(), None, None, groups) or settled
        return settled

    async def import_existing(self, kind: str, progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        """Link every record the app already has that no SCIM resource is linked to (`scim-gateway import`).

        Idempotent: a record already linked is counted and left alone. A record whose unique name another
        resource already holds is a conflict, reported, not linked.
        """
        ctx = self.ctx
        cres = ctx.resource(kind)
        if not ctx.connector.caps.list_all:
            raise Unsupported(f"the {ctx.mapping.config.connector['type']} connector of {ctx.app} cannot list records")
        counts = {"read": 0, "linked": 0, "already": 0, "conflicts": 0, "unnamed": 0, "repaired": 0}
        async for native_id, record in ctx.connector.list_all(kind):
            counts["read"] += 1
            linked = await ctx.store.by_native(ctx.app, kind, native_id)
            if linked is not None:
                counts["already"] += 1
                if await self._repair_members(cres, linked) or await self._repair_groups(cres, linked, record):
                    counts["repaired"] += 1
            else:
                name = (await ctx.overlay(cres, {}, record)).get(cres.unique_attr)
                if not isinstance(name, str) or not name.strip():
                    counts["unnamed"] += 1
                    log.warning("%s: %s %s has no %s: not imported", ctx.app, kind, native_id, cres.unique_attr)
                elif await self.link(cres, native_id, record) is None:
                    counts["conflicts"] += 1
                    log.warning(
                        "%s: %s %s: %s %r is already taken by another resource", ctx.app, kind, native_id, cres.unique_attr, name
                    )
                else:
                    counts["linked"] += 1
            if progress is not None:
                progress(counts)
        return counts

    async def _repair_groups(self, cres: CompiledResource, row: Row, record: dict[str, Any]) -> bool:
        """A user whose record lists its groups (`via: user_field`): the copy's memberships become those."""
        ctx = self.ctx
        groups = await ctx.listed_groups(cres, record)
        if groups is None or row.state != "active":
            return False
        if {g.id for g in groups} == {g.id for g in await ctx.store.groups_of(ctx.app, row.id)}:
            return False
        return await ctx.store.refresh(ctx.app, cres.name, row.id, row.data, utc_now(), None, None, groups) is not None

    async def _repair_members(self, cres: CompiledResource, row: Row) -> bool:
        """A group linked before its members were (adopted on a lookup, then its users linked): its members in the
        copy become the ones the app lists, now linked. Whether it changed anything."""
        ctx = self.ctx
        if cres.name != "Group" or cres.members is None or row.native_id is None or row.state != "active":
            return False
        if cres.members.via == "user_field":
            return False  # the users' own records carry it: import repairs them user by user (_repair_groups)
        native_id = row.native_id
        in_app = await ctx.call(f"reading the members of the app's group {native_id}", lambda: ctx.members_from_app(native_id))
        copied = {m.id for m in await ctx.store.members(ctx.app, row.id)}
        if {m.id for m in in_app} == copied:
            return False
        refreshed = await ctx.store.refresh(ctx.app, cres.name, row.id, row.data, utc_now(), None, in_app)
        if refreshed is not None:
            log.info("%s: %s %s now has the %d members the app lists", ctx.app, cres.name, row.id, len(in_app))
        return refreshed is not None


__all__ = ["Adoption"]
