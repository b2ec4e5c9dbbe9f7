"""Reads: a resource from the gateway's copy or live from the app, and the copy kept up with the app.

`reads: live` (the default): GET by id reads the app's record and overlays it on the copy, so a change made
in the app shows at once, and the copy (what lists and filters answer from) is refreshed as a new version.
A record the app deleted itself makes the resource go. `reads: cached` answers from the copy alone.
"""

from __future__ import annotations

import logging
from typing import Any

from ..connectors.errors import AppError
from ..mapping.compile import CompiledResource, TemplateError
from ..mapping.translate import overlay, write_rule
from ..schema import Resolved, json_copy
from ..store import Member, Row
from ..store import query as q
from .context import Context
from .errors import NotFound
from .membership import UserFieldMembership
from .pipeline import utc_now
from .resource import Resource

log = logging.getLogger(__name__)


class Reads:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def get(self, kind: str, rid: str, *, live: bool = True, members: bool = True) -> Resource:
        cres = self.ctx.resource(kind)
        row = await self.ctx.store.get(self.ctx.app, kind, rid)
        if row is None:
            raise NotFound(f"{kind} {rid} not found")
        if live:
            data, record = await self._live(cres, row)
            in_app = await self.app_members(cres, row) if members else None
            groups = await self.ctx.listed_groups(cres, record) if members else None
            row = await self.sync_copy(cres, row, data, in_app, groups)
            if in_app is not None:
                return Resource(row, data, in_app)
        else:
            data = row.data
        return Resource(row, data, await self.related(kind, row.id) if members else None)

    async def app_members(self, cres: CompiledResource, row: Row) -> list[Member] | None:
        """A group's members as the app lists them now (those the gateway has linked), where the app can be asked
        cheaply (its own member calls, or a member list on the group's record); None otherwise (`reads: cached`,
        membership kept on each user's record, no app record)."""
        if cres.name != "Group" or not cres.reads_live or row.native_id is None or cres.members is None:
            return None
        via = cres.members.via
        if via == "connector" and not self.ctx.connector.caps.membership:
            return None
        membership = self.ctx.memberships.get("Group")
        if via == "user_field" and not (isinstance(membership, UserFieldMembership) and membership.lists_cheaply):
            return None  # finding the users that hold it would read every user
        try:
            found = await self.ctx.members_from_app(row.native_id)
        except AppError as exc:
            # The record was read, its member list cannot be (a call the app refuses the gateway): the copy's
            # members answer, rather than a 503 for the whole group.
            log.warning(
                "%s: reading the members of %s %s failed (%s): answered from the copy",
                self.ctx.app,
                cres.name,
                row.id,
                exc.detail,
            )
            return None
        copied = {m.id: m for m in await self.ctx.store.members(self.ctx.app, row.id)}
        # As the copy shows them (their display), where it has them; and those the app cannot list (no record now).
        return [copied.get(m.id, m) for m in found] + await self.ctx.recordless_members(row.id)

    async def related(self, kind: str, rid: str) -> list[Member]:
        """A group's members, or the groups a user is in."""
        if kind == "Group":
            return await self.ctx.store.members(self.ctx.app, rid)
        if kind == "User":
            return await self.ctx.store.groups_of(self.ctx.app, rid)
        return []

    async def related_of_many(self, kind: str, rids: list[str]) -> dict[str, list[Member]]:
        """`related` for a whole page in one query."""
        if kind == "Group":
            return await self.ctx.store.members_of_many(self.ctx.app, rids)
        if kind == "User":
            return await self.ctx.store.groups_of_many(self.ctx.app, rids)
        return {}

    async def live_data(self, cres: CompiledResource, row: Row) -> dict[str, Any]:
        """The copy with every mapped attribute as the app has it now (the copy itself for `reads: cached`)."""
        return (await self._live(cres, row))[0]

    async def _live(self, cres: CompiledResource, row: Row) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """`live_data`, and the app's record it came from (None: not read)."""
        if row.native_id is None or not cres.reads_live:
            return row.data, None
        native_id = row.native_id
        record = await self.ctx.call(f"reading {cres.name} {row.id}", lambda: self.ctx.connector.get(cres.name, native_id))
        if record is None:
            await self.forget_vanished(cres, row)
            raise NotFound(f"{cres.name} {row.id} no longer exists in the app")
        return await self.ctx.overlay(cres, row.data, record), record

    async def forget_vanished(self, cres: CompiledResource, row: Row, payload: dict[str, Any] | None = None) -> bool:
        """The app deleted the record itself: the resource is gone, so its id and unique name are released.
        False when a write holds it. `payload`: why, for the journal (a reconcile fix)."""
        if not await self.ctx.pipeline.forget(cres.name, row.id, payload):
            return False
        log.info("%s: %s %s was deleted in the app; the gateway forgot it", self.ctx.app, cres.name, row.id)
        await self.forget_references(cres.name, row.id)
        return True

    async def sync_copy(
        self,
        cres: CompiledResource,
        row: Row,
        live: dict[str, Any],
        members: list[Member] | None = None,
        groups: list[Member] | None = None,
    ) -> Row:
        """Bring the copy up to what the app holds; a change is a new version (and a rename in the app follows).
        `members`: a group's members as the app lists them, `groups`: a user's groups as its record lists them;
        a membership changed in the app is drift too."""
        store, app = self.ctx.store, self.ctx.app
        if members is not None and {m.id for m in members} == {m.id for m in await store.members(app, row.id)}:
            members = None
        if groups is not None and {g.id for g in groups} == {g.id for g in await store.groups_of(app, row.id)}:
            groups = None
        if live == row.data and members is None and groups is None:
            return row
        name = live.get(cres.unique_attr)
        key = name.lower() if isinstance(name, str) and name.strip() else None
        refreshed = await store.refresh(app, cres.name, row.id, live, utc_now(), key, members, groups)
        return refreshed or row

    async def read_back(self, cres: CompiledResource, native_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """What the app holds after a write, over what was sent (the app may normalise or default values)."""
        return (await self.read_back_many(cres, [(native_id, data)]))[0]

    async def read_back_many(self, cres: CompiledResource, written: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """`read_back` for several records in one read. A failed read leaves what was sent: the write happened."""
        if not cres.reads_live or not written:
            return [data for _, data in written]
        try:
            if len(written) == 1:
                record = await self.ctx.connector.get(cres.name, written[0][0])
                records = {} if record is None else {written[0][0]: record}
            else:
                records = await self.ctx.connector.get_many(cres.name, [native_id for native_id, _ in written])
        except AppError as exc:
            log.warning("%s: reading back %d written %s record(s) failed: %s", self.ctx.app, len(written), cres.name, exc.detail)
            return [data for _, data in written]
        out = []
        for native_id, data in written:
            record = records.get(native_id)
            try:
                out.append(data if record is None else await overlay(cres, data, record, self.ctx.refs))
            except TemplateError:
                out.append(data)
        return out

    async def forget_references(self, kind: str, rid: str) -> None:
        """Drop a deleted resource's id from every `ref:` attribute of the copies (e.g. the reports' manager)."""
        for cres in self.ctx.mapping.resources.values():
            for rule in cres.rules:
                if rule.rule.ref != kind or rule.selector is not None:
                    continue
                _total, rows = await self.ctx.store.query(self.ctx.app, cres.name, q.Query(where=_holds(rule.resolved, rid)))
                for row in rows:
                    data = json_copy(row.data)
                    write_rule(data, rule, None)
                    await self.ctx.store.refresh(self.ctx.app, cres.name, row.id, data, utc_now())


def _holds(resolved: Resolved, rid: str) -> q.Condition:
    """The copies whose attribute (one value, or an element of a list) is this id."""
    if not resolved.attribute.multi_valued:
        return q.Compare(q.Field(resolved.keys), "eq", rid)
    element = () if resolved.sub is None else (resolved.sub.name,)
    return q.AnyElement(Resolved(resolved.urn, resolved.attribute).keys, q.Compare(q.Element(element), "eq", rid))


__all__ = ["Reads"]
