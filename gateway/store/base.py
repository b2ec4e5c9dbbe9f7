"""The correlation store contract: SCIM ids, native ids, the gateway's copy, and the write journal.

A row per resource: gateway-issued SCIM `id`, the app's native id, a
`unique_key` (lower-cased userName / displayName) enforced unique by the
database, a `version` for ETags, and `data`, the gateway's copy of the SCIM
resource (so attributes the app does not store still round-trip and filters
can be answered without the app). Group membership lives in its own table so a
member change touches one row, not the whole list.

Every write goes: begin (journal entry, row claimed) -> app call -> settle or
abort. A claim left behind by a crash is found by `pending()` and repaired by
the provisioner on start-up.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..scim.query import Query
from ..scim.schema import ResourceType

__all__ = ["Busy", "Gone", "Member", "NativeConflict", "Pending", "Query", "Row", "Store", "StoreError", "StoreUnavailable", "UniqueConflict", "VersionMismatch"]


class StoreError(Exception):
    pass


class UniqueConflict(StoreError):
    """Another resource of this app and type already holds the unique key."""


class NativeConflict(StoreError):
    """The app's native id is already linked to another SCIM resource."""


class VersionMismatch(StoreError):
    """If-Match did not match the current version."""


class Busy(StoreError):
    """Another write to this resource is in flight (possibly in another process)."""


class StoreUnavailable(StoreError):
    """The store's database failed (locked past the timeout, disk error, down): the IdP should retry."""


class Gone(StoreError):
    """No such resource (or it is being created / deleted)."""


@dataclass(slots=True)
class Row:
    app: str
    type: str
    id: str
    native_id: str | None
    unique_key: str
    version: int
    created: str
    last_modified: str
    data: dict[str, Any]
    state: str = "active"


@dataclass(slots=True)
class Member:
    id: str
    type: str
    display: str | None = None


@dataclass(slots=True)
class Pending:
    """An unsettled journal entry: a write whose app call may or may not have happened."""

    seq: int
    app: str
    type: str
    resource_id: str
    op: str
    payload: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def batch(self) -> AbstractAsyncContextManager[None]:
        """The calling task's store writes inside share one transaction where that saves work (a Bulk import)."""
        ...

    # --- creates
    async def begin_create(self, app: str, rtype: str, rid: str, unique_key: str, data: dict[str, Any], now: str) -> int: ...
    async def settle_create(self, seq: int, native_id: str | None, data: dict[str, Any], members: list[Member]) -> Row: ...

    # --- updates and deletes
    async def begin_write(
        self, app: str, rtype: str, rid: str, op: str, *, if_match: int | None = None, new_unique_key: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> tuple[int, Row]: ...
    async def settle_update(
        self, seq: int, data: dict[str, Any], now: str, unique_key: str, *, add_members: list[Member] = ..., remove_members: list[str] = ...,
        replace_members: list[Member] | None = None, relink: bool = False, native_id: str | None = None,
    ) -> Row: ...
    async def settle_delete(self, seq: int) -> None: ...
    async def abort(self, seq: int, reason: str) -> None: ...
    async def refresh(self, app: str, rtype: str, rid: str, data: dict[str, Any], now: str, unique_key: str | None = None) -> Row | None: ...
    async def pending(self, app: str, older_than: float | None = None) -> list[Pending]: ...
    async def get_any(self, rid: str) -> Row | None: ...

    # --- reads
    async def get(self, app: str, rtype: str, rid: str) -> Row | None: ...
    async def by_native(self, app: str, rtype: str, native_id: str) -> Row | None: ...
    async def native_ids(self, app: str, rtype: str | None, rids: list[str]) -> dict[str, tuple[str, str]]: ...
    async def scim_ids(self, app: str, rtype: str, native_ids: list[str]) -> dict[str, str]: ...
    async def members(self, app: str, group_id: str) -> list[Member]: ...
    async def groups_of(self, app: str, member_id: str) -> list[Member]: ...
    async def member_ids_among(self, app: str, group_id: str, ids: list[str]) -> set[str]: ...
    async def members_of_many(self, app: str, group_ids: list[str]) -> dict[str, list[Member]]: ...
    async def groups_of_many(self, app: str, member_ids: list[str]) -> dict[str, list[Member]]: ...
    async def query(self, app: str, rtype: ResourceType, query: Query) -> tuple[int, list[Row]]: ...
    async def link(
        self, app: str, rtype: str, rid: str, native_id: str, unique_key: str, data: dict[str, Any], now: str, members: list[Member] = ...
    ) -> Row: ...
