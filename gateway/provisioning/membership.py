"""How a group's membership reaches the app, in whichever of three ways the app models it.

- connector: the app has its own add / remove member calls (a join table, member
  sub-resources); the connector does it, atomically with the record where it can.
- group_field: the group record carries a list of its members' native ids.
- user_field: each user record carries a list of its groups' native ids
  (a role list on the user).

The provisioner calls one of these for every group write; a connector never
learns which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ..connectors.base import Connector, NativeId, PartlyDone, Record
from ..connectors.errors import AppError, AppNotFound
from ..mapping.model import MembersConfig

Pair = tuple[str, NativeId]  # (member kind, member native id)


class IdList:
    """An id list as the app keeps it: a JSON list, or text joined by a separator (a column)."""

    def __init__(self, separator: str | None, id_type: str = "auto") -> None:
        self.separator = separator
        self.id_type = id_type  # auto: as the app's list holds them (text when it holds none); number; text

    def parse(self, value: Any) -> list[str]:
        if value is None or value == "":
            return []
        if isinstance(value, str):
            sep = self.separator or ","
            return [v.strip() for v in value.split(sep) if v.strip()]
        if isinstance(value, Iterable):
            return [str(v) for v in value if v is not None]
        return [str(value)]

    def render(self, ids: list[str], like: Any = None) -> Any:
        if self.separator is not None:
            return self.separator.join(ids) if ids else None
        numbers = self.id_type == "number" or (
            self.id_type == "auto" and isinstance(like, list) and like and all(isinstance(v, int) for v in like)
        )
        if numbers:
            return [int(v) if v.lstrip("-").isdigit() else v for v in ids]  # numbers stay numbers
        return ids


class Membership:
    """The connector's own member calls (via: connector), and the base of the other two."""

    def __init__(self, connector: Connector, kind: str) -> None:
        self.connector = connector
        self.kind = kind

    async def create(self, record: Record, members: list[Pair]) -> NativeId:
        return await self.connector.create_with_members(self.kind, record, members)

    async def write(self, native_id: NativeId, changes: Record, add: list[Pair], remove: list[Pair]) -> None:
        await self.connector.write(self.kind, native_id, changes, add, remove)

    async def members_of(self, native_id: NativeId) -> list[Pair]:
        return await self.connector.list_members(self.kind, native_id)

    @property
    def lists(self) -> bool:
        """Whether `members_of` can say who the app holds as members now."""
        return self.connector.caps.membership

    async def write_whole(self, native_id: NativeId, changes: Record, add: list[Pair], remove: list[Pair]) -> None:
        """`write`, all of it or none: when it fails after some of its member calls took effect (the app's own
        calls, one a member), those are undone (the removed added again, the added removed) before the failure is
        raised. PartlyDone when the app cannot say which took effect, or undoing them fails too, or the record
        change (made first) took effect with them: the app then holds part of the change."""
        try:
            await self.write(native_id, changes, add, remove)
        except AppError as exc:
            if len(add) + len(remove) + bool(changes) < 2:
                raise  # one call: it took effect or not
            if not self.lists:
                raise PartlyDone(exc) from None
            try:
                now = {n for _k, n in await self.members_of(native_id)}
            except AppError:
                raise PartlyDone(exc) from None
            removed = [p for p in remove if p[1] not in now]
            added = [p for p in add if p[1] in now]
            if not removed and not added:
                raise  # no member call took effect (a record change before them is not told apart: see the report)
            if changes:
                raise PartlyDone(exc) from None  # the record change took effect before them; it is not undone here
            try:
                await self.write(native_id, {}, removed, added)
            except AppError:
                raise PartlyDone(exc) from None
            raise

    def plan(
        self, native_id: NativeId | None, record: Record | None, add: list[Pair], remove: list[Pair]
    ) -> list[dict[str, Any]]:
        calls = []
        if record:
            calls += self.connector.plan("create" if native_id is None else "update", self.kind, native_id, record)
        if remove:
            calls += self.connector.plan("remove_members", self.kind, native_id, members=remove)
        if add:
            calls += self.connector.plan("add_members", self.kind, native_id, members=add)
        return calls


class GroupFieldMembership(Membership):
    """The group record's `field` lists its members' native ids."""

    def __init__(self, connector: Connector, kind: str, field: str, ids: IdList, member_kind: str = "User") -> None:
        super().__init__(connector, kind)
        self.field = field
        self.ids = ids
        self.member_kind = member_kind

    async def create(self, record: Record, members: list[Pair]) -> NativeId:
        return await self.connector.create(self.kind, {**record, self.field: self.ids.render([n for _k, n in members])})

    async def write(self, native_id: NativeId, changes: Record, add: list[Pair], remove: list[Pair]) -> None:
        if add or remove:
            current = await self.connector.get(self.kind, native_id)
            if current is None:
                raise AppNotFound(f"{self.kind} {native_id}")
            present = current.get(self.field)
            ids = self.ids.parse(present)
            gone = {n for _k, n in remove}
            ids = [i for i in ids if i not in gone]
            ids += [n for _k, n in add if n not in ids]
            changes = {**changes, self.field: self.ids.render(ids, present)}
        if changes:
            await self.connector.update(self.kind, native_id, changes)

    async def members_of(self, native_id: NativeId) -> list[Pair]:
        record = await self.connector.get(self.kind, native_id)
        return [(self.member_kind, i) for i in self.ids.parse(record.get(self.field))] if record else []

    async def write_whole(self, native_id: NativeId, changes: Record, add: list[Pair], remove: list[Pair]) -> None:
        await self.write(native_id, changes, add, remove)  # one update of the group's record: all of it or none

    def plan(
        self, native_id: NativeId | None, record: Record | None, add: list[Pair], remove: list[Pair]
    ) -> list[dict[str, Any]]:
        record = dict(record or {})
        if add or remove:
            record[self.field] = {"add": [n for _k, n in add], "remove": [n for _k, n in remove]}
        return self.connector.plan("create" if native_id is None else "update", self.kind, native_id, record)


UserGuard = Callable[[NativeId], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _unguarded(_user: NativeId) -> AsyncIterator[None]:
    yield


class UserFieldMembership(Membership):
    """Each user record's `field` lists the native ids of its groups.

    Adding a member is a read-modify-write of that user's record, so each edit
    runs under `guard(user)`: the provisioner claims the user in the
    correlation store, which serializes edits of one user's list across
    requests and across processes.
    """

    def __init__(
        self, connector: Connector, kind: str, field: str, ids: IdList, user_kind: str = "User", guard: UserGuard = _unguarded
    ) -> None:
        super().__init__(connector, kind)
        self.field = field
        self.ids = ids
        self.user_kind = user_kind
        self.guard = guard

    async def _edit(self, user: NativeId, group: NativeId, present: bool) -> None:
        async with self.guard(user):
            record = await self.connector.get(self.user_kind, user)
            if record is None:
                return  # the user is gone from the app: it is in no group
            current = record.get(self.field)
            ids = self.ids.parse(current)
            if present == (group in ids):
                return
            ids = [*ids, group] if present else [i for i in ids if i != group]
            await self.connector.update(self.user_kind, user, {self.field: self.ids.render(ids, current)})

    async def create(self, record: Record, members: list[Pair]) -> NativeId:
        native_id = await self.connector.create(self.kind, record)
        try:
            for _k, user in members:
                await self._edit(user, native_id, True)
        except AppError as exc:
            if not await self._undo(native_id, members):
                raise PartlyDone(exc) from None  # recovery settles what the app holds
            raise
        except BaseException:
            await self._undo(native_id, members)
            raise
        return native_id

    async def _undo(self, group: NativeId, members: list[Pair]) -> bool:
        """Compensate a half-done create: no group and no user pointing at it; False when that failed."""
        undone = True
        for _k, user in members:
            try:
                await self._edit(user, group, False)
            except Exception:
                undone = False
        try:
            await self.connector.delete(self.kind, group)
        except Exception:
            undone = False
        return undone

    async def write(self, native_id: NativeId, changes: Record, add: list[Pair], remove: list[Pair]) -> None:
        if changes:
            await self.connector.update(self.kind, native_id, changes)
        for _k, user in remove:
            await self._edit(user, native_id, False)
        for _k, user in add:
            await self._edit(user, native_id, True)

    @property
    def lists(self) -> bool:
        return self.lists_cheaply or self.connector.caps.list_all

    @property
    def lists_cheaply(self) -> bool:
        """Whether a group's members can be found by asking the app for the users holding it (not reading all)."""
        return self.connector.finds_by(self.user_kind, self.field)

    async def members_of(self, native_id: NativeId) -> list[Pair]:
        if self.lists_cheaply:
            # A search by the list field finds (at least) the users holding the group: a text list is searched
            # as containing the id where the connector can, and every answer is checked against the parsed list.
            op = "co" if "co" in self.connector.caps.search_ops else "eq"
            found = await self.connector.find(self.user_kind, self.field, native_id, op)
            return [(self.user_kind, n) for n, rec in found if native_id in self.ids.parse(rec.get(self.field))]
        if self.connector.caps.list_all:
            return [
                (self.user_kind, n)
                async for n, rec in self.connector.list_all(self.user_kind)
                if native_id in self.ids.parse(rec.get(self.field))
            ]
        return []

    def plan(
        self, native_id: NativeId | None, record: Record | None, add: list[Pair], remove: list[Pair]
    ) -> list[dict[str, Any]]:
        calls = []
        if record:
            calls += self.connector.plan("create" if native_id is None else "update", self.kind, native_id, record)
        group = native_id or "<new group id>"
        for _k, user in remove:
            calls += self.connector.plan("update", self.user_kind, user, {self.field: {"remove": [group]}})
        for _k, user in add:
            calls += self.connector.plan("update", self.user_kind, user, {self.field: {"add": [group]}})
        return calls


def create_membership(connector: Connector, kind: str, config: MembersConfig | None, guard: UserGuard = _unguarded) -> Membership:
    if config is None or config.via == "connector":
        return Membership(connector, kind)
    assert config.field is not None
    ids = IdList(config.separator, config.id_type)
    if config.via == "group_field":
        return GroupFieldMembership(connector, kind, config.field, ids)
    return UserFieldMembership(connector, kind, config.field, ids, guard=guard)
