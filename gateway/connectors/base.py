"""The Connector contract: one instance per app, opened and closed with the app.

A connector reads and writes *app records*: plain dicts keyed by the app's own
field names. It never sees a SCIM attribute; the mapping translates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from .errors import AppError

Record = dict[str, Any]
NativeId = str

# The id of the SCIM request being served (its X-Request-Id), for connectors to pass on to the app's calls
# (the rest connector sends it as X-Request-Id) so the app's logs and the gateway's can be matched.
REQUEST_ID: ContextVar[str | None] = ContextVar("scim_gateway_request_id", default=None)
# A key naming the create being made, the same each time it is sent (by recovery after a crash, too): the SCIM
# id the gateway gave the resource. A connector whose app takes an idempotency key sends it with the create, so
# an app that got the create twice makes one record (the rest connector: `create.idempotency_header`).
WRITE_KEY: ContextVar[str | None] = ContextVar("scim_gateway_write_key", default=None)
# The same for create_many: one key per record, in the records' order. The default create_many sends each record
# under its own WRITE_KEY; a connector that overrides create_many for an app that takes keys must send them too.
WRITE_KEYS: ContextVar[Sequence[str] | None] = ContextVar("scim_gateway_write_keys", default=None)


class PartlyDone(AppError):
    """A write of several app calls failed (`cause`) after some of them took effect, which could not be undone (or
    which took effect could not be told): the app holds part of the write. The provisioner leaves its journal entry
    pending, for recovery to settle from the app, and answers the cause's error."""

    def __init__(self, cause: AppError) -> None:
        super().__init__(cause.detail, retry_after=cause.retry_after, answer=cause.answer)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the provisioner may ask of this connector."""

    membership: bool = False  # add_members / remove_members / list_members are implemented
    search: bool = False  # find() by one field's value (adoption, crash recovery, filter pushdown)
    search_ops: frozenset[str] = frozenset({"eq"})  # the operators find() understands: eq, co, sw, ew, pr (value "")
    list_all: bool = False  # iterate every record (import, reconcile)
    read: bool = True  # get() returns the app's record; False for apps that cannot be read back
    actions: frozenset[str] = frozenset()  # named calls for action() (e.g. disable / enable an account)
    idempotent_create: frozenset[str] = frozenset()  # kinds whose create() the app makes once per WRITE_KEY


@dataclass(frozen=True, slots=True)
class AppContext:
    """What a connector may know of the gateway: the app's name and where it may keep files."""

    name: str
    data_dir: Path


class Connector(ABC):
    """Base class of every connector, built-in or third-party (entry point group `scim_gateway.connectors`)."""

    #: The pydantic model that validates this connector's `connector:` block (type included).
    Config: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: BaseModel, context: AppContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def capabilities_for(cls, config: BaseModel) -> Capabilities:
        """What an instance with this configuration can do (checked by the mapping at load).

        A connector whose abilities depend on its options (a REST app with or
        without member calls) overrides this; the default is the class's.
        """
        return cls.capabilities

    @property
    def caps(self) -> Capabilities:
        return type(self).capabilities_for(self.config)

    async def open(self) -> None:
        """Acquire pools and sessions. Called once when the app starts."""

    async def close(self) -> None:
        """Release everything `open` acquired."""

    @abstractmethod
    async def create(self, kind: str, record: Record) -> NativeId:
        """Create a record of `kind` (the mapping's resource type name); return its native id."""

    @abstractmethod
    async def get(self, kind: str, native_id: NativeId) -> Record | None:
        """The record, or None when the app has no such record."""

    @abstractmethod
    async def update(self, kind: str, native_id: NativeId, changes: Record) -> None:
        """Write the changed fields. Raises AppNotFound when the record is gone."""

    @abstractmethod
    async def delete(self, kind: str, native_id: NativeId) -> None:
        """Delete the record. Deleting a record that is already gone is not an error."""

    async def find(self, kind: str, field: str, value: Any, op: str = "eq") -> list[tuple[NativeId, Record]]:
        """Records whose `field` matches `value` by `op` (one of capabilities.search_ops).

        eq: equal (case-insensitively where the app compares so); co / sw / ew:
        contains / starts with / ends with, the value taken literally (a `%` or
        `_` in it is data, never a wildcard); pr: the field has a value (`value` is "").
        """
        raise NotImplementedError

    def list_all(self, kind: str) -> AsyncIterator[tuple[NativeId, Record]]:
        raise NotImplementedError

    def finds_by(self, kind: str, field: str) -> bool:
        """Whether `find` on this field asks the app for the matches (a query, a filter, a search parameter)
        rather than reading every record; the gateway asks only then where the answer must stay cheap (the
        users holding a group in a list on their records). Default: whenever the connector can search."""
        return self.caps.search

    async def add_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        """Add members, each (member kind, member native id); adding a present member is not an error."""
        raise NotImplementedError

    async def remove_members(self, kind: str, group_id: NativeId, members: list[tuple[str, NativeId]]) -> None:
        """Remove members; removing an absent member is not an error."""
        raise NotImplementedError

    async def list_members(self, kind: str, group_id: NativeId) -> list[tuple[str, NativeId]]:
        raise NotImplementedError

    async def finish_write(self, kind: str, native_id: NativeId, before: Record) -> None:
        """Crash recovery settles a write to this record as done in the app (an update, a delete, a deactivation by
        deletion): finish, idempotently, what the connector's write does after the record's own call, in case the
        process died in between. `before` is the record as it was before the write (computed from the gateway's
        copy); the record may be gone now. The LDAP connector renames or removes the member DNs and references that
        still name the entry by its old DN (a directory without the refint overlay). Default: nothing."""

    async def action(self, kind: str, native_id: NativeId, name: str) -> None:
        """Run a named call the connector's options declare (one of capabilities.actions), e.g. `disable`."""
        raise NotImplementedError

    async def check_schema(self) -> list[tuple[tuple[str | int, ...], str]]:
        """For `scim-gateway check --connect`: what the live app lacks that the options name.

        Each problem is (location inside the `connector:` block, message), e.g.
        (("tables", "User", "table"), "no table 'employes' (did you mean employees?)").
        Called after open(); the default checks nothing.
        """
        return []

    def fields(self, kind: str) -> set[str] | None:
        """For `scim-gateway check --connect`: the fields records of `kind` have in the live app.

        None when the connector cannot tell (the default); called after check_schema().
        """
        return None

    def plan(
        self,
        op: str,
        kind: str,
        native_id: NativeId | None = None,
        record: Record | None = None,
        members: list[tuple[str, NativeId]] | None = None,
    ) -> list[dict[str, Any]]:
        """For `scim-gateway translate` (a dry run): the app calls `op` would make, calling nothing.

        `op` is create, get, update, delete, add_members, remove_members or an action
        name. Each call is a JSON-able dict (REST: method, url, headers, body; SQL:
        statement and parameters) with every secret masked as "***".
        """
        return [{"operation": op, "kind": kind, "native_id": native_id, "record": record, "members": members}]

    # A Bulk import creates many records at once. A connector that can do that in one
    # round trip or transaction overrides these two; the defaults go one by one.

    async def create_many(self, kind: str, records: list[Record]) -> list[NativeId | AppError]:
        """Create the records, in order; each answer is the new native id or the AppError that refused that record.

        Raising instead means no record was created (the app is down, a batch rolled back whole).
        """
        answers: list[NativeId | AppError] = []
        keys = WRITE_KEYS.get()
        for i, record in enumerate(records):
            key = WRITE_KEY.set(keys[i] if keys is not None else None)
            try:
                answers.append(await self.create(kind, record))
            except AppError as exc:  # after some records were created: raising would lose their ids
                answers.append(exc)
            finally:
                WRITE_KEY.reset(key)
        return answers

    async def get_many(self, kind: str, native_ids: list[NativeId]) -> dict[NativeId, Record]:
        """The records that exist among `native_ids`, by native id."""
        found: dict[NativeId, Record] = {}
        for native_id in native_ids:
            record = await self.get(kind, native_id)
            if record is not None:
                found[native_id] = record
        return found

    # One SCIM write may touch the record and its membership. A connector that can
    # apply them atomically (one database transaction) overrides these two.

    async def create_with_members(self, kind: str, record: Record, members: list[tuple[str, NativeId]]) -> NativeId:
        native_id = await self.create(kind, record)
        if members:
            try:
                await self.add_members(kind, native_id, members)
            except AppError as exc:
                try:
                    await self.delete(kind, native_id)  # compensate: no half-created group
                except AppError:
                    raise PartlyDone(exc) from None  # the group stays in the app: recovery settles it
                raise
            except BaseException:
                await self.delete(kind, native_id)
                raise
        return native_id

    async def write(
        self,
        kind: str,
        native_id: NativeId,
        changes: Record,
        add_members: list[tuple[str, NativeId]],
        remove_members: list[tuple[str, NativeId]],
    ) -> None:
        if changes:
            await self.update(kind, native_id, changes)
        if remove_members:
            await self.remove_members(kind, native_id, remove_members)
        if add_members:
            await self.add_members(kind, native_id, add_members)
