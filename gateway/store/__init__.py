"""The correlation store: SCIM ids <-> native ids, the gateway's copy of each resource, and the write journal.

One `Store` over a SQL dialect: SQLite (one file, the embedded default) or PostgreSQL (many processes).
`create_store` picks one from the gateway's settings.
"""

from .base import Busy, Gone, Member, NativeConflict, Pending, Row, StoreError, StoreUnavailable, UniqueConflict, VersionMismatch
from .correlation import Store
from .journal import PARKED, ROLLED_BACK, JournalEntry
from .postgres import PostgresStore
from .query import Query
from .reports import SavedReport
from .sqlite import SqliteStore

__all__ = [
    "Busy",
    "Gone",
    "JournalEntry",
    "Member",
    "NativeConflict",
    "PARKED",
    "Pending",
    "PostgresStore",
    "Query",
    "ROLLED_BACK",
    "Row",
    "SavedReport",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UniqueConflict",
    "VersionMismatch",
]
