"""The correlation store's vocabulary: rows, members, journal entries, and the errors it raises.

A row per resource: the gateway-issued SCIM `id`, the app's native id, a
`unique_key` (its unique name, lower-cased) enforced unique by the database,
a `version` (a counter the protocol layer shows as the ETag), and `data`, the
gateway's copy of the resource's attributes (so attributes the app does not
store still round-trip and lists can be answered without the app). Group membership lives in its own table so a
member change touches one row, not the whole list.

Every write goes: begin (journal entry, row claimed) -> app call -> settle or
abort. A claim left behind by a crash is found by `pending()` and repaired by
the provisioner's recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Busy",
    "Gone",
    "Member",
    "NativeConflict",
    "Pending",
    "Row",
    "StoreError",
    "StoreUnavailable",
    "UniqueConflict",
    "VersionMismatch",
]


class StoreError(Exception):
    """What the store refuses; the layers above decide what it means to a client."""


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
    attempts: int = 0  # how often recovery tried it and could not decide
